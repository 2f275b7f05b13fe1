"""Built-in regression plugin: the reusable building blocks of every regression task.

Public API (used by ``tabular-regression``, ``text-regression`` and ``image-regression``):

- :func:`target_columns`, :func:`parse_targets`: the target column(s) of ``data.target`` as
  floats; text in a target column is a one-line :class:`~tuneforge.errors.DataError` naming
  the row and the column; all-equal targets are refused.
- :class:`TargetScaler`: standardisation fitted on the train split only, inverted at
  prediction time, saved with the checkpoint as JSON (``target_scaler.json``).
- :func:`regression_loss`: ``mse``, ``l1`` or ``huber`` by name; it standardises the raw
  targets itself, so datasets carry targets in their own units.
- :func:`target_bins`: quantile bins of the (first) target, for the stratified split
  (a task's ``stratify_labels``) and the regression balancers.
- :class:`RegressionTaskMixin`: ``fit`` / ``predictions`` / ``loss_fn`` / ``stratify_labels``
  / artifact helpers a task class mixes in.

Registered components: metrics ``mse rmse mae r2 mape pearson spearman`` (problem
``regression``); validators ``target-values``, ``target-outliers``, ``capped-target``,
``constant-columns``; balancers ``target-bins`` (inverse-frequency weights, optionally
label-distribution smoothed) and ``resample-bins``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import (
    BalancePlan,
    Balancer,
    Finding,
    FindingKind,
    Metric,
    StrictConfig,
    Task,
    Validator,
    ValidatorConfig,
)
from tuneforge.errors import ConfigError, DataError, UserError
from tuneforge.hookspecs import Register
from tuneforge.plugins.validators import preview

if TYPE_CHECKING:  # pragma: no cover - numpy/pandas are imported where used (fast start-up)
    import numpy as np
    import pandas as pd

    from tuneforge.data import TaskData

SCALER_FILE = "target_scaler.json"
LOSSES = ("mse", "l1", "huber")
#: The largest target magnitude training takes: targets reach the model as float32, and past
#: this they become infinite (and their standardisation NaN).
FLOAT32_MAX = 3.4028234663852886e38  # float(np.finfo(np.float32).max), without numpy

# -- targets ---------------------------------------------------------------------------------


def target_columns(target: str | list[str] | None) -> list[str]:
    """``data.target`` as a list of column names (one or several outputs)."""
    if target is None:
        return []
    return [target] if isinstance(target, str) else list(target)


def parse_targets(frame: pd.DataFrame, target: str | list[str], source: str = "") -> pd.DataFrame:
    """The target column(s) as float64, in place of the raw values.

    Empty cells become NaN (the ``target-values`` validator reports them); text that is not a
    number raises a one-line :class:`DataError` naming the first such row and the column.
    Booleans count as text: a yes/no column is a classification label.
    """
    import numpy as np
    import pandas as pd

    where = f"{source}: " if source else ""
    cols = target_columns(target)
    if not cols:
        raise ConfigError("data.target", "missing: name the numeric target column(s)")
    if len(set(cols)) != len(cols):
        raise ConfigError("data.target", f"a column is named twice: {cols}")
    for col in cols:
        if col not in frame.columns:
            avail = ", ".join(map(str, frame.columns))
            raise DataError(
                f"{where}column {col!r} (from data.target) not found; columns are: {avail}"
            )
        raw = frame[col]
        if raw.dtype == bool:
            raise DataError(
                f"{where}target column {col!r} holds true/false values; use a classification "
                "task (data.label) for it"
            )
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.index[values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")]
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{where}row {row}: target column {col!r} holds {raw.loc[row]!r}, not a number "
                f"({len(bad)} such rows); regression needs numeric targets"
            )
        frame[col] = values.astype(np.float64)
    finite = frame[cols].replace([np.inf, -np.inf], np.nan).dropna()
    if len(finite) == 0:
        raise DataError(f"{where}target column(s) {cols} have no numeric value")
    constant = [c for c in cols if finite[c].nunique() < 2]
    if constant:
        raise DataError(
            f"{where}target column {constant[0]!r} has the same value "
            f"({finite[constant[0]].iloc[0]:g}) in every row: there is nothing to learn"
        )
    return frame


def check_target_range(data: TaskData, rows: Any = None) -> None:
    """Refuse targets training cannot use, naming the column and the rows: missing, infinite,
    or beyond float32's range (``FLOAT32_MAX``), where standardising overflows.

    The ``target-values`` validator reports (and by default drops) such rows first; this is
    the check for the rows it kept.
    """
    import numpy as np
    import pandas as pd

    frame = data.frame if rows is None else data.frame.loc[rows]
    where = f"{data.source}: " if data.source else ""
    for col in target_columns(data.target):
        v = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
        finite = np.isfinite(v)
        for mask, what in (
            (v.isna(), "no target (an empty or non-numeric cell)"),
            (np.isinf(v), "an infinite target"),
            (
                finite & (v.abs() > FLOAT32_MAX),
                f"a target beyond float32's range (|y| > {FLOAT32_MAX:.4g})",
            ),
        ):
            bad = [int(r) for r in frame.index[mask.to_numpy()]]
            if bad:
                raise DataError(
                    f"{where}target column {col!r}: {len(bad)} rows have {what}: rows "
                    f"{preview(bad)}; fix them, or let the target-values validator (policy drop) "
                    "remove them"
                )


def target_values(data: TaskData, rows: Any = None) -> np.ndarray:
    """Targets of ``rows`` (default all) as float64, shape ``(n,)`` or ``(n, k)``."""
    import numpy as np

    cols = target_columns(data.target)
    frame = data.frame if rows is None else data.frame.loc[rows]
    values = frame[cols].to_numpy(dtype=np.float64)
    return values[:, 0] if len(cols) == 1 else values


def target_bins(values: np.ndarray, n_bins: int = 10, min_per_bin: int = 20) -> np.ndarray:
    """Quantile-bin ids of a target (the first column of a multi-output one).

    Fewer bins are used when the data is small (``min_per_bin`` rows each, so a stratified
    70/15/15 split can place every bin); equal quantile edges (a spiky target) merge.
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2:
        v = v[:, 0]
    n = max(1, min(n_bins, len(v) // max(1, min_per_bin)))
    if n < 2:
        return np.zeros(len(v), dtype=np.int64)
    finite = v[np.isfinite(v)]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, n + 1)[1:-1]))
    return np.searchsorted(edges, np.nan_to_num(v, nan=np.nanmedian(finite)), side="right")


class TargetScaler:
    """Per-column standardisation ``(y - mean) / std`` fitted on the train split.

    :param mean: per-column mean (train split).
    :param std: per-column standard deviation (1.0 where a column is constant).
    :param columns: the target column names.
    """

    def __init__(self, mean: Any, std: Any, columns: list[str]) -> None:
        import numpy as np

        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        self.columns = list(columns)

    @classmethod
    def fit(cls, values: np.ndarray, columns: list[str], standardize: bool = True) -> TargetScaler:
        import numpy as np

        v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if not standardize:
            return cls(np.zeros(v.shape[1]), np.ones(v.shape[1]), columns)
        std = v.std(axis=0)
        return cls(v.mean(axis=0), np.where(std > 0, std, 1.0), columns)

    def transform(self, values: np.ndarray) -> np.ndarray:
        import numpy as np

        v = np.asarray(values, dtype=np.float64)
        out = (v.reshape(len(v), -1) - self.mean) / self.std
        return out.reshape(v.shape)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Standardised model outputs -> target units; ``(n,)`` for one output."""
        import numpy as np

        v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        out = v * self.std + self.mean
        return out[:, 0] if out.shape[1] == 1 else out

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def save(self, folder: Path) -> None:
        (Path(folder) / SCALER_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> TargetScaler:
        path = Path(folder) / SCALER_FILE
        try:
            raw = json.loads(path.read_text())
            return cls(raw["mean"], raw["std"], raw["columns"])
        except FileNotFoundError:
            raise UserError(
                f"checkpoint {folder}: no {SCALER_FILE} (not a regression run?)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: unreadable target scaler: {exc}") from None


def regression_loss(scaler: TargetScaler, name: str = "mse", delta: float = 1.0) -> Any:
    """A torch loss on standardised outputs: raw targets are standardised with ``scaler``.

    ``reduction = "none"`` gives one loss per row (mean over outputs), for row weights.
    """
    import torch
    import torch.nn.functional as F

    if name not in LOSSES:
        raise ConfigError("model.loss", f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")

    class RegressionLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.reduction = "mean"
            self.register_buffer("mean", torch.tensor(scaler.mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(scaler.std, dtype=torch.float32))

        def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            out = outputs.float().reshape(len(outputs), -1)
            y = target.float().reshape(len(target), -1).to(out.device)
            y = (y - self.mean.to(out.device)) / self.std.to(out.device)
            if name == "mse":
                per = F.mse_loss(out, y, reduction="none")
            elif name == "l1":
                per = F.l1_loss(out, y, reduction="none")
            else:
                per = F.huber_loss(out, y, reduction="none", delta=delta)
            per_row = per.mean(dim=1)
            return per_row if self.reduction == "none" else per_row.mean()

    return RegressionLoss()


def _scores(metrics: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    out = {}
    for name, metric in metrics.items():
        try:
            out[name] = float(metric(y_true, y_pred, None))
        except (UserError, ValueError):
            out[name] = float("nan")
    return out


class RegressionTaskMixin(Task):
    """Regression as a problem kind that modality tasks compose (listed before the modality
    base): numeric target(s) in ``data.target`` (a column or a list of columns).

    Datasets carry targets in their own units; :meth:`loss_fn` standardises them with the
    train-split :class:`TargetScaler` (``target_scaler.json`` in the checkpoint) and
    :meth:`predictions` inverts the model outputs. The loss comes from the model's ``loss``
    parameter when it has one (default mse).
    """

    problem: ClassVar[str] = "regression"
    scaler: TargetScaler | None = None
    loss_name: str = "mse"

    def check_target_config(self, data_config: Any) -> None:
        """A regression task reads ``data.target`` (one or more columns), never ``data.label``."""
        name = self.name or "a regression task"
        if data_config.label is not None:
            raise ConfigError("data.label", f"{name} takes its target from data.target")
        if data_config.target is None:
            raise ConfigError("data.target", "missing: name the numeric target column(s)")

    def fit(self, data: TaskData, train_rows: np.ndarray) -> None:
        """The modality's train-split state (``super().fit``), then the target scaler."""
        super().fit(data, train_rows)
        self.fit_targets(data, train_rows)

    def fit_targets(self, data: TaskData, train_rows: np.ndarray, standardize: bool = True) -> None:
        """Fit the target scaler on the train split (refusing all-equal training targets) and
        take the loss from the model's ``loss`` parameter when it has one."""
        import numpy as np

        params = dict(self.model_builder.config) if self.model_builder is not None else {}
        self.loss_name = params.get("loss") or "mse"
        check_target_range(data)  # every split: val and test targets reach the metrics
        cols = target_columns(data.target)
        values = target_values(data, train_rows).reshape(len(train_rows), -1)
        for j, col in enumerate(cols):
            if np.unique(values[:, j]).size < 2:
                raise DataError(
                    f"{data.source}: target column {col!r} has the same value in every "
                    "training row: there is nothing to learn"
                )
        self.scaler = TargetScaler.fit(values, cols, standardize)

    def n_outputs(self, data: TaskData) -> int:
        return len(target_columns(data.target))

    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels``: the target values of ``rows`` in their units (float32)."""
        import numpy as np

        return target_values(data, rows).astype(np.float32)

    def output_names(self, data: TaskData) -> list[str]:
        """One output per target column."""
        return [str(c) for c in target_columns(data.target)]

    def stratify_labels(self, data: TaskData) -> np.ndarray:
        """Quantile bins of the target: the split keeps the target distribution in each part."""
        return target_bins(target_values(data))

    def labels_record(self, data: TaskData) -> dict[str, Any]:
        return {"classes": None}

    def loss_fn(self, class_weights: Any = None, focal_gamma: float | None = None) -> Any:
        if focal_gamma is not None:
            raise ConfigError("balancer", "focal-loss is a classification loss")
        assert self.scaler is not None, "fit() first"
        return regression_loss(self.scaler, self.loss_name)

    def predictions(self, logits: Any) -> tuple[np.ndarray, None]:
        """Model outputs -> (predicted targets in their units, None)."""
        assert self.scaler is not None, "fit() or load_artifacts() first"
        return self.scaler.inverse(logits.float().numpy()), None

    def prediction_frame(
        self, data: TaskData, rows: np.ndarray, logits: Any, labels: Any
    ) -> pd.DataFrame:
        """``row``, then ``y_true``/``y_pred``, or ``y_true_<col>``/``y_pred_<col>`` per target."""
        import numpy as np
        import pandas as pd

        y_pred, _ = self.predictions(logits)
        frame = pd.DataFrame({"row": np.asarray(rows)})
        y_true = labels.numpy() if labels is not None else None
        if np.ndim(y_pred) == 2:  # several targets: one true/predicted column pair each
            for j, name in enumerate(target_columns(data.target)):
                if y_true is not None:
                    frame[f"y_true_{name}"] = y_true[:, j]
                frame[f"y_pred_{name}"] = y_pred[:, j]
        else:
            if y_true is not None:
                frame["y_true"] = list(y_true)
            frame["y_pred"] = list(y_pred)
        return frame

    def prediction_columns(
        self, logits: Any, labels_record: dict[str, Any], source: Path
    ) -> pd.DataFrame:
        """``prediction``, or ``prediction_<column>`` per target."""
        import numpy as np
        import pandas as pd

        y_pred, _ = self.predictions(logits)
        if np.ndim(y_pred) != 2:
            return pd.DataFrame({"prediction": y_pred})
        names = labels_record.get("label_column")
        names = names if isinstance(names, list) else []
        names = names if len(names) == y_pred.shape[1] else range(y_pred.shape[1])
        return pd.DataFrame({f"prediction_{n}": y_pred[:, j] for j, n in enumerate(names)})

    def save_artifacts(self, model: Any, folder: Path) -> None:
        """The task's checkpoint files plus ``target_scaler.json``."""
        super().save_artifacts(model, folder)
        assert self.scaler is not None
        self.scaler.save(folder)

    def load_artifacts(self, folder: Path) -> Any:
        self.scaler = TargetScaler.load(folder)
        return super().load_artifacts(folder)

    def ensemble_outputs(self, outputs: list[Any], folders: list[Path]) -> Any:
        """The members' predictions in target units (each with its own checkpoint's target
        scaler) averaged, then standardised with the current scaler (the last folder's)."""
        import numpy as np
        import torch

        assert self.scaler is not None, "load_artifacts() first"
        pairs = zip(outputs, folders, strict=True)
        values = [TargetScaler.load(f).inverse(o.float().numpy()) for o, f in pairs]
        mean = self.scaler.transform(np.mean(values, axis=0))
        return torch.as_tensor(mean.reshape(outputs[-1].shape), dtype=torch.float32)


# -- metrics ---------------------------------------------------------------------------------


class _RegressionMetric(Metric):
    """A regression metric; multi-output targets are averaged uniformly over outputs."""

    problems: ClassVar[tuple[str, ...]] = ("regression",)
    greater_is_better: ClassVar[bool] = False

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        import numpy as np

        y_true = np.asarray(y_true, dtype=np.float64)
        y_pred = np.asarray(y_pred, dtype=np.float64).reshape(y_true.shape)
        return float(self.compute(y_true, y_pred))

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        raise NotImplementedError


class MSE(_RegressionMetric):
    """Mean squared error."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import mean_squared_error

        return mean_squared_error(y_true, y_pred)


class RMSE(_RegressionMetric):
    """Root mean squared error (in the target's units)."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import root_mean_squared_error

        return root_mean_squared_error(y_true, y_pred)


class MAE(_RegressionMetric):
    """Mean absolute error (in the target's units)."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import mean_absolute_error

        return mean_absolute_error(y_true, y_pred)


class MedianAE(_RegressionMetric):
    """Median absolute error (in the target's units; robust to a few large misses)."""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import median_absolute_error

        return median_absolute_error(y_true, y_pred)


class R2(_RegressionMetric):
    """Coefficient of determination (1 = perfect, 0 = predicting the mean)."""

    greater_is_better: ClassVar[bool] = True

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        from sklearn.metrics import r2_score

        return r2_score(y_true, y_pred)


class MAPE(_RegressionMetric):
    """Mean absolute percentage error, as a fraction (0.1 = 10%); needs positive targets.

    With a zero or negative target ``|y - y_hat| / |y|`` divides by zero or stops meaning a
    percentage, so the run is refused before training (:meth:`check_data`) with the reason.
    """

    def check_data(self, data: TaskData) -> None:
        """Raise :class:`UserError` (the pipeline names ``metrics[i]``) when MAPE is undefined."""
        import pandas as pd

        for col in target_columns(data.target):
            values = pd.to_numeric(data.frame[col], errors="coerce")
            bad = values.index[values <= 0]
            if len(bad):
                row = int(bad[0])
                raise UserError(
                    f"mape is undefined for target {col!r}: {len(bad)} rows are zero or "
                    f"negative (row {row}: {values.loc[row]:g}); the percentage error divides by "
                    "|y| (zero -> infinite, negative -> no percentage meaning); use mae or rmse"
                )

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        if (y_true <= 0).any():
            raise UserError(
                f"mape is undefined: {int((y_true <= 0).sum())} targets are zero or negative"
            )
        from sklearn.metrics import mean_absolute_percentage_error

        return mean_absolute_percentage_error(y_true, y_pred)


class _Correlation(_RegressionMetric):
    greater_is_better: ClassVar[bool] = True
    func: ClassVar[str] = ""

    def compute(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        import numpy as np
        import scipy.stats

        t = y_true.reshape(len(y_true), -1)
        p = y_pred.reshape(len(y_pred), -1)
        values = []
        for j in range(t.shape[1]):
            if np.ptp(t[:, j]) == 0 or np.ptp(p[:, j]) == 0:
                values.append(float("nan"))  # undefined for a constant column
                continue
            values.append(float(getattr(scipy.stats, self.func)(t[:, j], p[:, j])[0]))
        return float(np.mean(values))


class Pearson(_Correlation):
    """Pearson correlation of predictions with targets (NaN when either is constant)."""

    func = "pearsonr"


class Spearman(_Correlation):
    """Spearman rank correlation of predictions with targets (NaN when either is constant)."""

    func = "spearmanr"


METRICS: dict[str, type[Metric]] = {
    "mse": MSE,
    "rmse": RMSE,
    "mae": MAE,
    "median_ae": MedianAE,
    "r2": R2,
    "mape": MAPE,
    "pearson": Pearson,
    "spearman": Spearman,
}

#: What regression tasks compute by default.
DEFAULT_METRICS = ["mse", "rmse", "mae", "r2", "pearson", "spearman"]
DEFAULT_VALIDATORS = ["target-values", "target-outliers", "capped-target"]


def baseline_scores(
    metrics: dict[str, Any],
    models: dict[str, Any],
    x_train: Any,
    y_train: np.ndarray,
    x_test: Any,
    y_test: np.ndarray,
) -> dict[str, float]:
    """Fit each scikit-learn model on train, score it on test: ``{"baseline_<m>_<metric>": v}``.

    Multi-output targets are fitted through ``MultiOutputRegressor`` (one model per output).
    """
    import numpy as np
    from sklearn.multioutput import MultiOutputRegressor

    out: dict[str, float] = {}
    for name, model in models.items():
        if np.ndim(y_train) == 2:  # gradient boosting predicts one output
            model = MultiOutputRegressor(model)
        model.fit(x_train, y_train)
        pred = model.predict(x_test)
        for metric, value in _scores(metrics, y_test, pred).items():
            out[f"baseline_{name}_{metric}"] = value
    return out


# -- validators ------------------------------------------------------------------------------


def _regression_target(data: TaskData, name: str) -> list[str]:
    if data.problem != "regression" or data.target is None:
        raise UserError(f"{name} checks regression targets; this task is {data.problem}")
    return target_columns(data.target)


class TargetValues(Validator):
    """Targets that are missing, not a number, infinite or beyond float32's range; all-equal
    targets are an error."""

    problems: ClassVar[tuple[str, ...]] = ("regression",)

    class Config(ValidatorConfig):
        policy: Literal["warn", "drop", "fail"] = "drop"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        import numpy as np
        import pandas as pd

        out = []
        for col in _regression_target(data, "target-values"):
            raw = data.frame[col]
            values = pd.to_numeric(raw, errors="coerce")
            for kind, mask, what in (
                (
                    FindingKind.NON_NUMERIC_TARGET,
                    values.isna() & raw.notna(),
                    "hold text, not a number",
                ),
                (FindingKind.MISSING_TARGET, raw.isna(), "have no target"),
                (
                    FindingKind.INFINITE_TARGET,
                    np.isinf(values.fillna(0)),
                    "have an infinite target",
                ),
                (
                    FindingKind.OVERFLOWING_TARGET,
                    np.isfinite(values.fillna(0)) & (values.abs() > FLOAT32_MAX),
                    f"have a target beyond float32's range (|y| > {FLOAT32_MAX:.4g}: it "
                    "overflows in training)",
                ),
            ):
                rows = [int(r) for r in raw.index[mask]]
                if rows:
                    out.append(
                        Finding(
                            kind,
                            "warning",
                            f"{len(rows)} rows {what} in column {col!r}: rows {preview(rows)}",
                            rows,
                            details={"column": col},
                        )
                    )
            finite = values[np.isfinite(values.fillna(np.inf))]
            if len(finite) and finite.nunique() < 2:
                raise UserError(
                    f"target column {col!r} has the same value ({finite.iloc[0]:g}) in every "
                    "row: there is nothing to learn"
                )
        return out


class TargetOutliers(Validator):
    """Targets far from the bulk: Tukey's IQR fences or the robust (median/MAD) z-score.

    Policy ``warn`` reports, ``drop`` removes the rows, ``clip`` moves them to the fence.
    """

    problems: ClassVar[tuple[str, ...]] = ("regression",)

    class Config(ValidatorConfig):
        policy: Literal["warn", "drop", "clip", "fail"] = "warn"
        method: Literal["iqr", "zscore"] = "iqr"
        threshold: float | None = Field(
            None, gt=0, description="IQR multiplier (default 3.0) or robust z limit (default 3.5)"
        )

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        import numpy as np
        import pandas as pd

        cfg = self.config
        cols = _regression_target(data, "target-outliers")
        frame = data.frame[cols].apply(pd.to_numeric, errors="coerce")
        frame = frame[np.isfinite(frame).all(axis=1)]
        relabel: dict[int, Any] = {}
        flagged: set[int] = set()
        parts = []
        for col in cols:
            v = frame[col]
            if cfg.method == "iqr":
                k = cfg.threshold or 3.0
                q1, q3 = v.quantile(0.25), v.quantile(0.75)
                low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
                rule = f"outside Q1 - {k:g} IQR .. Q3 + {k:g} IQR = [{low:.4g}, {high:.4g}]"
            else:
                z = cfg.threshold or 3.5
                med = v.median()
                mad = (v - med).abs().median()
                if mad == 0:
                    continue
                # |0.6745 (x - median) / MAD| > z  (Iglewicz & Hoaglin)
                low, high = med - z * mad / 0.6745, med + z * mad / 0.6745
                rule = f"robust z-score > {z:g} (outside [{low:.4g}, {high:.4g}])"
            bad = v.index[(v < low) | (v > high)]
            if len(bad) == 0 or high <= low:
                continue
            parts.append(f"{len(bad)} in {col!r} {rule}")
            flagged |= {int(r) for r in bad}
            for r in bad:
                row = relabel.setdefault(int(r), [float(x) for x in frame.loc[r, cols]])
                row[cols.index(col)] = float(np.clip(v.loc[r], low, high))
        if not flagged:
            return []
        rows = sorted(flagged)
        finding = Finding(
            FindingKind.TARGET_OUTLIER,
            "warning",
            f"{len(rows)} rows have outlying targets ({'; '.join(parts)}): rows {preview(rows)}",
            rows,
            details={"method": cfg.method},
        )
        if cfg.policy == "clip":
            finding.relabel = {r: (v[0] if len(cols) == 1 else v) for r, v in relabel.items()}
        return [finding]


class CappedTarget(Validator):
    """A spike of identical values at the target's maximum (or minimum): a censored target.

    California housing caps house values at 500,001: those rows are "at least this much",
    not the value. Reported (policy warn) or dropped (policy drop).
    """

    problems: ClassVar[tuple[str, ...]] = ("regression",)

    class Config(ValidatorConfig):
        policy: Literal["warn", "drop", "fail"] = "warn"
        min_fraction: float = Field(
            0.005, gt=0, lt=1, description="share of rows at the extreme that counts as a cap"
        )
        min_ratio: float = Field(
            5.0, gt=1, description="how many times more rows than the next most common value"
        )

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        import numpy as np
        import pandas as pd

        cfg = self.config
        out = []
        for col in _regression_target(data, "capped-target"):
            v = pd.to_numeric(data.frame[col], errors="coerce")
            v = v[np.isfinite(v)]
            if len(v) < 20:
                continue
            counts = v.value_counts()
            for side, value in (("maximum", v.max()), ("minimum", v.min())):
                n = int(counts.get(value, 0))
                others = counts.drop(value)
                typical = max(1, int(others.iloc[0]) if len(others) else 1)
                if n >= cfg.min_fraction * len(v) and n >= cfg.min_ratio * typical and n >= 5:
                    rows = [int(r) for r in v.index[v == value]]
                    out.append(
                        Finding(
                            FindingKind.CAPPED_TARGET,
                            "warning",
                            f"{n} rows ({n / len(v):.1%}) of {col!r} sit exactly at its {side} "
                            f"{value:g}: a capped (censored) target? rows {preview(rows)}",
                            rows,
                            details={"column": col, "value": float(value), "side": side},
                        )
                    )
        return out


class ConstantColumns(Validator):
    """Input columns with a single value (after dropping missing ones): nothing to learn from."""

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out = []
        for col in dict.fromkeys(data.inputs.values()):
            n = data.frame[col].nunique(dropna=True)
            if n <= 1:
                out.append(
                    Finding(
                        FindingKind.CONSTANT_COLUMN,
                        "warning",
                        f"input column {col!r} has {'one value' if n else 'no value'} in every "
                        "row; it carries no information",
                        [],
                        details={"column": col},
                    )
                )
        return out


# -- balancers -------------------------------------------------------------------------------


def _train_bins(data: TaskData, train_rows: np.ndarray, n_bins: int, name: str) -> np.ndarray:
    if data.problem != "regression":
        raise UserError(
            f"balancer {name!r} balances regression targets; for classes use oversample, "
            "class-weights or weighted-sampler"
        )
    values = target_values(data, train_rows)
    return target_bins(values, n_bins, min_per_bin=1)


def lds_weights(bins: np.ndarray, n_bins: int, sigma: float, power: float) -> np.ndarray:
    """Per-bin weights ``1 / density**power``; with ``sigma > 0`` the bin counts are first
    convolved with a Gaussian kernel (label distribution smoothing, Yang et al., ICML 2021).
    Weights are scaled so that the training rows' mean weight is 1."""
    import numpy as np

    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    density = counts
    if sigma > 0:
        from scipy.ndimage import gaussian_filter1d

        density = gaussian_filter1d(counts, sigma=sigma, mode="nearest")
    w = np.where(density > 0, 1.0 / np.maximum(density, 1e-12), 0.0) ** power
    row_w = w[bins]
    return w / row_w.mean()


class TargetBins(Balancer):
    """Inverse-frequency weights over target bins, optionally smoothed (LDS).

    ``mode: loss`` weights each training row's loss; ``mode: sampler`` draws rows with those
    weights instead.
    """

    problems: ClassVar[tuple[str, ...]] = ("regression",)

    class Config(StrictConfig):
        bins: int = Field(10, ge=2, le=1000, description="equal-frequency bins of the target")
        uniform_bins: bool = Field(
            True, description="equal-width bins (rarity shows); false = quantile bins"
        )
        smoothing: float = Field(
            2.0, ge=0, description="Gaussian kernel sigma in bins (0 = plain inverse frequency)"
        )
        power: float = Field(0.5, ge=0, le=1, description="1 = inverse, 0.5 = inverse sqrt")
        mode: Literal["loss", "sampler"] = "loss"

    def bins_of(self, data: TaskData, train_rows: np.ndarray) -> tuple[np.ndarray, int]:
        import numpy as np

        cfg = self.config
        if not cfg.uniform_bins:
            bins = _train_bins(data, train_rows, cfg.bins, "target-bins")
            return bins, int(bins.max()) + 1
        _train_bins(data, train_rows, cfg.bins, "target-bins")  # checks the problem
        v = target_values(data, train_rows)
        v = v[:, 0] if v.ndim == 2 else v
        edges = np.linspace(v.min(), v.max(), cfg.bins + 1)[1:-1]
        return np.searchsorted(edges, v, side="right"), cfg.bins

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        cfg = self.config
        bins, n = self.bins_of(data, train_rows)
        w = lds_weights(bins, n, cfg.smoothing, cfg.power)
        row_w = w[bins]
        how = f"{n} target bins, smoothing {cfg.smoothing:g}, power {cfg.power:g}"
        if cfg.mode == "sampler":
            return BalancePlan(sample_weights=row_w, note=f"weighted sampler over {how}")
        plan = BalancePlan(note=f"loss weights over {how} ({row_w.min():.2f}..{row_w.max():.2f})")
        plan.row_weights = {int(r): float(x) for r, x in zip(train_rows, row_w, strict=True)}
        return plan


class OversampleBins(Balancer):
    """Repeat rows of rare target bins up to ``ratio`` x the largest bin."""

    problems: ClassVar[tuple[str, ...]] = ("regression",)

    class Config(StrictConfig):
        bins: int = Field(10, ge=2, le=1000, description="equal-width bins of the target")
        ratio: float = Field(0.5, gt=0, le=1, description="target size relative to the largest bin")

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np

        cfg = self.config
        bins, n = TargetBins(TargetBins.Config(bins=cfg.bins)).bins_of(data, train_rows)
        counts = np.bincount(bins, minlength=n)
        target = int(np.ceil(counts.max() * cfg.ratio))
        picks = [np.arange(len(bins))]
        for b, k in enumerate(counts):
            if 0 < k < target:
                picks.append(rng.choice(np.flatnonzero(bins == b), size=target - k, replace=True))
        idx = np.sort(np.concatenate(picks))
        return BalancePlan(
            indices=idx, note=f"oversampled rare target bins to {target} rows ({len(idx)} in all)"
        )


@hookimpl
def register_metrics(register: Register) -> None:
    for name, cls in METRICS.items():
        register(name, cls)


@hookimpl
def register_validators(register: Register) -> None:
    register("target-values", TargetValues)
    register("target-outliers", TargetOutliers)
    register("capped-target", CappedTarget)
    register("constant-columns", ConstantColumns)


@hookimpl
def register_balancers(register: Register) -> None:
    register("target-bins", TargetBins)
    register("resample-bins", OversampleBins)
