"""Decision thresholds tuned on the validation split, for binary single-label and multi-label
classification.

``task.threshold`` takes a fixed number (``0.3``: the positive class, or a label, is predicted
when its probability reaches it), ``tune`` (the best F1 on val; the same as
``{metric: f1}``), or a tuning rule :class:`ThresholdRule`:

- ``{metric: f1}``: the threshold with the best validation F1, searched within
  :data:`F1_RANGE` (0.05-0.95, as the multi-label tuner always did); ties go to the one
  closest to 0.5;
- ``{metric: precision_at, target: 0.9}``: the threshold with the highest recall among those
  whose validation precision reaches ``target``. When no threshold reaches it, a warning says
  so and the threshold of the **highest precision** on val is used (ties: the one with the
  highest recall): the feasible point closest to the target;
- ``{metric: recall_at, target: 0.9}``: the threshold with the highest precision among those
  whose recall reaches ``target`` (unreachable: a warning, and the threshold of the highest
  recall).

Target rules search within :data:`TARGET_RANGE`. Candidates are 0.5 and the midpoints between
consecutive distinct validation probabilities (calibrated ones: thresholds are tuned after
temperature scaling). A label or class without validation positives keeps 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tuneforge.components import StrictConfig
from tuneforge.errors import UserError, short

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

F1_RANGE = (0.05, 0.95)
TARGET_RANGE = (0.001, 0.999)
DEFAULT = 0.5
#: Points of a stored precision-recall curve (the report draws it).
CURVE_POINTS = 200


class ThresholdRule(StrictConfig):
    """How ``task.threshold`` is tuned on the validation split."""

    metric: Literal["f1", "precision_at", "recall_at"] = Field(
        "f1",
        description="f1: best F1; precision_at / recall_at: reach target precision / recall "
        "with the best recall / precision",
    )
    target: float | None = Field(
        None,
        gt=0,
        le=1,
        description="the precision or recall to reach (precision_at, recall_at)",
    )

    @model_validator(mode="after")
    def _target_fits_metric(self) -> ThresholdRule:
        if self.metric == "f1" and self.target is not None:
            raise ValueError("target is for precision_at and recall_at, not f1")
        if self.metric != "f1" and self.target is None:
            raise ValueError(f"{self.metric} needs a target (e.g. target: 0.9)")
        return self

    def describe(self) -> str:
        if self.metric == "f1":
            return "best F1 on the val split"
        name = self.metric.removesuffix("_at")
        return f"{name} >= {self.target:g} on the val split"


def rule_of(value: Any) -> ThresholdRule | None:
    """The tuning rule of a ``task.threshold`` value: ``tune`` -> ``{metric: f1}``, a rule as
    it is, a fixed number or None -> None."""
    if isinstance(value, ThresholdRule):
        return value
    if value == "tune":
        return ThresholdRule()
    return None


def as_json(value: Any) -> Any:
    """``task.threshold`` as plain JSON (``labels.json``)."""
    return value.model_dump(exclude_none=True) if isinstance(value, ThresholdRule) else value


def check_fixed(value: Any) -> Any:
    """Field validator body: a fixed threshold lies strictly between 0 and 1."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 < value < 1:
        raise ValueError("a threshold is between 0 and 1 (exclusive), tune, or {metric: ...}")
    return value


# -- counts at every candidate ----------------------------------------------------------------


def rates(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and the predicted count of ``scores >= t`` for each ``t``
    (precision is 0 where nothing is predicted)."""
    import numpy as np

    order = np.argsort(scores, kind="stable")
    s, t = np.asarray(scores, dtype=np.float64)[order], np.asarray(truth)[order].astype(np.int64)
    positives_from = np.concatenate([np.cumsum(t[::-1])[::-1], [0]])
    start = np.searchsorted(s, thresholds, side="left")
    predicted = len(s) - start
    tp = positives_from[start]
    positives = int(t.sum())
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = tp / positives if positives else np.zeros(len(thresholds))
    denom = predicted + positives
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "predicted": predicted}


def _point(r: dict[str, np.ndarray], i: int) -> dict[str, float]:
    return {k: float(r[k][i]) for k in ("f1", "precision", "recall")}


def _best(keys: list[np.ndarray], among: np.ndarray) -> int:
    """The index in ``among`` that is lexicographically largest over ``keys``."""
    import numpy as np

    pick = np.asarray(among)
    for key in keys:
        values = key[pick]
        pick = pick[values >= values.max() - 1e-12]
    return int(pick[0])


def tune_threshold(
    truth: np.ndarray, scores: np.ndarray, rule: ThresholdRule, default: float = DEFAULT
) -> tuple[float, dict[str, Any]]:
    """The decision threshold of one binary decision (``truth`` 0/1, ``scores`` its
    probabilities) by ``rule`` (see the module docstring). Returns it and what ``metrics.json``
    records: ``threshold``, ``at_0.5`` and ``tuned`` (F1, precision, recall on val),
    ``positives``, ``reached`` (the target was reached; always true for F1) and ``warning``
    when it was not."""
    import numpy as np

    truth = (np.asarray(truth) > 0.5).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    at_default = _point(rates(scores, truth, np.array([default])), 0)
    positives = int(truth.sum())
    info: dict[str, Any] = {"positives": positives, f"at_{default:g}": at_default}
    if positives == 0:
        info.update(threshold=default, tuned=at_default, reached=False)
        info["warning"] = "no positives in the val split: the threshold stays 0.5"
        return default, info
    low, high = F1_RANGE if rule.metric == "f1" else TARGET_RANGE
    distinct = np.unique(scores)
    cands = np.concatenate([(distinct[:-1] + distinct[1:]) / 2, [default]])
    cands = np.unique(np.clip(cands, low, high))
    r = rates(scores, truth, cands)
    closeness = -np.abs(cands - default)
    everything = np.arange(len(cands))
    reached = True
    if rule.metric == "f1":
        pick = _best([r["f1"], closeness], everything)
    else:
        have, other = (
            ("precision", "recall") if rule.metric == "precision_at" else ("recall", "precision")
        )
        feasible = np.flatnonzero(r[have] >= float(rule.target) - 1e-12)
        if len(feasible):
            pick = _best([r[other], r[have], closeness], feasible)
        else:
            reached = False
            pick = _best([r[have], r[other], closeness], everything)
    threshold = float(cands[pick])
    info.update(threshold=threshold, tuned=_point(r, pick), reached=reached)
    if not reached:
        name = rule.metric.removesuffix("_at")
        info["warning"] = (
            f"task.threshold: {name} {rule.target:g} is not reached on the val split; the "
            f"closest is {name} {r[have][pick]:.4f} at threshold {threshold:.4f}, which is used"
        )
    return threshold, info


def pr_curve(truth: np.ndarray, scores: np.ndarray, points: int = CURVE_POINTS) -> dict[str, Any]:
    """The precision-recall curve of ``scores`` (at most ``points`` thresholds, evenly spread
    over the distinct scores): ``{"threshold": [...], "precision": [...], "recall": [...]}``."""
    import numpy as np

    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    if len(distinct) > points:
        distinct = distinct[np.linspace(0, len(distinct) - 1, points).round().astype(int)]
    r = rates(scores, (np.asarray(truth) > 0.5).astype(np.int64), distinct)
    return {
        "threshold": [round(float(t), 6) for t in distinct],
        "precision": [round(float(p), 6) for p in r["precision"]],
        "recall": [round(float(v), 6) for v in r["recall"]],
    }


# -- the binary checkpoint file ---------------------------------------------------------------

BINARY_FILE = "thresholds.json"


def write_binary(folder: Path, positive: str, index: int, threshold: float, how: str) -> None:
    """``thresholds.json`` of a binary single-label checkpoint: the multi-label file's shape
    (``{"thresholds": {name: t}, "how"}``) plus the positive class's output index."""
    from tuneforge.run import atomic_write_text

    record = {"thresholds": {positive: float(threshold)}, "positive_index": int(index), "how": how}
    atomic_write_text(folder / BINARY_FILE, json.dumps(record, indent=2) + "\n")


def read_binary(folder: Path) -> tuple[int, float] | None:
    """The positive class index and threshold of a binary checkpoint's ``thresholds.json``;
    None without the file. A damaged file is a one-line :class:`UserError` naming it."""
    path = Path(folder) / BINARY_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: unreadable ({reason})") from None
    table = record.get("thresholds") if isinstance(record, dict) else None
    index = record.get("positive_index") if isinstance(record, dict) else None
    if not isinstance(table, dict) or len(table) != 1 or index not in (0, 1):
        raise UserError(
            f"{path}: not a binary thresholds file (one threshold and a positive_index 0 or 1)"
        )
    ((name, value),) = table.items()
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        raise UserError(
            f"{path}: threshold of class {short(name)} is {short(value)}, not a number "
            "between 0 and 1"
        )
    return int(index), float(value)
