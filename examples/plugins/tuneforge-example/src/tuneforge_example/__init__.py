"""An example third-party tuneforge plugin.

It registers two components:

* the validator ``max-words``: reports text inputs longer than ``max_words`` words;
* the metric ``worst_class_recall``: the recall of the class the model is worst at.

Declared in this distribution's ``pyproject.toml``::

    [project.entry-points.tuneforge]
    example = "tuneforge_example"

Only light libraries are imported at module level (pydantic, numpy): scikit-learn is
imported inside the metric, when it is computed, so ``tuneforge plugins`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

import tuneforge
from tuneforge.components import Finding, Metric, Policy, Validator, ValidatorConfig
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tuneforge.data import TaskData

__version__ = "0.1.0"


def _preview(rows: list[int], n: int = 5) -> str:
    head = ", ".join(map(str, rows[:n]))
    return f"{head}, ... ({len(rows)} in all)" if len(rows) > n else head


class MaxWords(Validator):
    """Text inputs with more than ``max_words`` whitespace-separated words."""

    class Config(ValidatorConfig):
        policy: Policy = "warn"
        max_words: int = Field(200, ge=1, description="longer texts (in words) are reported")

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out: list[Finding] = []
        limit = self.config.max_words
        for role, col in data.inputs.items():
            if data.modalities.get(role) != "text":
                continue
            values = data.frame[col].dropna().astype(str)
            counts = values.str.split().str.len()
            bad = counts.index[counts > limit]
            if not len(bad):
                continue
            rows = [int(i) for i in bad]
            out.append(
                Finding(
                    kind="too-long",
                    severity="warning",
                    message=(
                        f"{len(rows)} texts in column {col!r} have more than {limit} words "
                        f"(longest {int(counts.max())}): rows {_preview(rows)}"
                    ),
                    rows=rows,
                    details={"column": col, "max_words": limit, "longest": int(counts.max())},
                )
            )
        return out


class WorstClassRecall(Metric):
    """Lowest per-class recall over the classes present in the true labels."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)
    greater_is_better: ClassVar[bool] = True

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        from sklearn.metrics import recall_score

        classes = np.unique(y_true)
        if classes.size == 0:
            return float("nan")
        recalls = recall_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
        return float(np.min(recalls))


@tuneforge.hookimpl
def register_validators(register: Register) -> None:
    register("max-words", MaxWords)


@tuneforge.hookimpl
def register_metrics(register: Register) -> None:
    register("worst_class_recall", WorstClassRecall)
