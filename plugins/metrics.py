"""Built-in classification metrics, computed by scikit-learn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tuneforge import hookimpl
from tuneforge.components import Metric
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - numpy stays out of start-up (`tuneforge plugins`)
    import numpy as np


class _SklearnMetric(Metric):
    problems: ClassVar[tuple[str, ...]] = ("classification",)
    func: ClassVar[str] = ""
    kwargs: ClassVar[dict[str, Any]] = {}

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        import sklearn.metrics as skm

        kwargs = dict(self.kwargs)
        if "average" in kwargs:
            kwargs["zero_division"] = 0
        return float(getattr(skm, self.func)(y_true, y_pred, **kwargs))


def _metric(name: str, func: str, doc: str, **kwargs: Any) -> type[Metric]:
    cls = type(name, (_SklearnMetric,), {"func": func, "kwargs": kwargs, "__doc__": doc})
    return cls


METRICS: dict[str, type[Metric]] = {
    "accuracy": _metric("Accuracy", "accuracy_score", "Fraction of correct predictions"),
    "balanced_accuracy": _metric(
        "BalancedAccuracy", "balanced_accuracy_score", "Mean per-class recall (robust to imbalance)"
    ),
}
for _avg in ("macro", "weighted"):
    for _name, _func in (
        ("precision", "precision_score"),
        ("recall", "recall_score"),
        ("f1", "f1_score"),
    ):
        METRICS[f"{_name}_{_avg}"] = _metric(
            f"{_name.title()}{_avg.title()}",
            _func,
            f"{_name.title()}, {_avg}-averaged over classes",
            average=_avg,
        )


@hookimpl
def register_metrics(register: Register) -> None:
    for name, cls in METRICS.items():
        register(name, cls)
