"""Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") and the
expected calibration error, for the classification problem kinds.

After training, the problem kind's :meth:`~tuneforge.components.Task.after_training` fits one
temperature ``T > 0`` on the validation split's logits: the ``T`` that minimises the negative
log-likelihood of ``softmax(logits / T)`` (single-label) or of ``sigmoid(logits / T)`` over
every (row, label) pair (multi-label: one temperature shared by all labels, so that a rare
label's few validation positives cannot pull its own temperature anywhere). It is found by a
bounded scalar minimisation over ``log T`` (:func:`scipy.optimize.minimize_scalar`, Brent's
method within ``T`` in [0.05, 20]).

``task.calibration`` chooses what happens:

- ``auto`` (the default): the temperature is kept when it lowers the validation NLL by at least
  :data:`AUTO_MARGIN` (1 %) of its value at ``T = 1``; otherwise ``T = 1`` (no change);
- ``temperature``: the fitted temperature is always kept;
- ``none``: nothing is fitted and no ``calibration.json`` is written.

The temperature in use lives in the checkpoint folder as ``calibration.json``; the task reads it
in ``load_artifacts``, so the test metrics, ``tuneforge predict``, ``tuneforge evaluate`` and an
exported model's engine (which feeds raw logits to the same task methods) all see calibrated
probabilities. Dividing logits by a positive ``T`` never changes their arg-max, nor which
side of 0 a logit is on (a multi-label prediction at threshold 0.5).

The expected calibration error uses :data:`ECE_BINS` (15) equal-width confidence bins:
``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``; single-label on the top-class
confidence, multi-label on every (row, label) probability against that label's 0/1 truth.

Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tuneforge.errors import UserError, short

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

CALIBRATION_FILE = "calibration.json"
#: Equal-width bins of the expected calibration error and of the reliability diagram.
ECE_BINS = 15
#: ``auto`` keeps the fitted temperature when it lowers the validation NLL by this fraction.
AUTO_MARGIN = 0.01
#: The temperature search range.
T_RANGE = (0.05, 20.0)
Mode = Literal["auto", "temperature", "none"]
Kind = Literal["softmax", "sigmoid"]
RULE = (
    "auto: the temperature fitted on val (minimum NLL) is kept when it lowers the val NLL by "
    f"at least {AUTO_MARGIN:.0%}; otherwise T = 1"
)


# -- likelihood and fit -------------------------------------------------------------------


def _as_f64(values: Any) -> np.ndarray:
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def nll(logits: Any, labels: Any, temperature: float, kind: Kind) -> float:
    """The mean negative log-likelihood of ``labels`` under ``logits / temperature``.

    :param logits: rows x outputs.
    :param labels: class ids (``softmax``) or a rows x labels 0/1 matrix (``sigmoid``: the
        mean over every (row, label) pair of the binary cross-entropy).
    """
    import numpy as np
    from scipy.special import log_expit, log_softmax

    z = _as_f64(logits) / float(temperature)
    if kind == "softmax":
        ids = np.asarray(_as_f64(labels), dtype=np.int64)
        return float(-log_softmax(z, axis=-1)[np.arange(len(ids)), ids].mean())
    y = _as_f64(labels)
    return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).mean())


def fit_temperature(logits: Any, labels: Any, kind: Kind) -> float:
    """The temperature that minimises :func:`nll` on ``(logits, labels)``, within
    :data:`T_RANGE`: Brent's bounded minimisation over ``log T``."""
    from scipy.optimize import minimize_scalar

    z, y = _as_f64(logits), _as_f64(labels)
    low, high = (math.log(t) for t in T_RANGE)
    found = minimize_scalar(
        lambda log_t: nll(z, y, math.exp(log_t), kind),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(found.x))


def probabilities(logits: Any, temperature: float, kind: Kind) -> np.ndarray:
    """``softmax(logits / T)`` or ``sigmoid(logits / T)`` (float64)."""
    from scipy.special import expit, softmax

    z = _as_f64(logits) / float(temperature)
    return softmax(z, axis=-1) if kind == "softmax" else expit(z)


# -- calibration error ----------------------------------------------------------------------


def _confidence_and_hit(probs: Any, labels: Any, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    p = _as_f64(probs)
    if kind == "softmax":
        ids = np.asarray(_as_f64(labels), dtype=np.int64)
        return p.max(axis=-1), (p.argmax(axis=-1) == ids).astype(np.float64)
    return p.ravel(), (_as_f64(labels).ravel() > 0.5).astype(np.float64)


def reliability(probs: Any, labels: Any, kind: Kind, bins: int = ECE_BINS) -> list[list[float]]:
    """The reliability diagram's bins: ``[count, mean confidence, accuracy]`` per equal-width
    bin of [0, 1] (a bin without rows: ``[0, midpoint, 0]``). ``softmax``: the top-class
    confidence and whether the top class is right; ``sigmoid``: each (row, label)
    probability and whether the row has the label."""
    import numpy as np

    conf, hit = _confidence_and_hit(probs, labels, kind)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            out.append([n, float(conf[inside].mean()), float(hit[inside].mean())])
        else:
            out.append([0, (b + 0.5) / bins, 0.0])
    return out


def ece_of_bins(table: list[list[float]]) -> float:
    """The expected calibration error of :func:`reliability`'s bins."""
    total = sum(row[0] for row in table)
    if not total:
        return 0.0
    return float(sum(n / total * abs(acc - conf) for n, conf, acc in table))


def expected_calibration_error(probs: Any, labels: Any, kind: Kind, bins: int = ECE_BINS) -> float:
    """The expected calibration error (equal-width bins): top-class confidence for ``softmax``
    probabilities (rows x classes) against class ids, every (row, label) probability for
    ``sigmoid`` ones against a 0/1 matrix."""
    return ece_of_bins(reliability(probs, labels, kind, bins))


def figures(logits: Any, labels: Any, temperature: float, kind: Kind) -> dict[str, Any]:
    """NLL and ECE before (``T = 1``) and after (``temperature``), with both reliability
    tables: what ``metrics.json`` records for a split."""
    before = reliability(probabilities(logits, 1.0, kind), labels, kind)
    after = reliability(probabilities(logits, temperature, kind), labels, kind)
    return {
        "nll_before": nll(logits, labels, 1.0, kind),
        "nll_after": nll(logits, labels, temperature, kind),
        "ece_before": ece_of_bins(before),
        "ece_after": ece_of_bins(after),
        "rows": int(len(_as_f64(logits))),
        "reliability": {"bins": ECE_BINS, "before": before, "after": after},
    }


# -- the checkpoint file --------------------------------------------------------------------


def write_calibration(folder: Path, record: dict[str, Any]) -> None:
    """``calibration.json`` in a checkpoint folder (``{"method", "temperature", ...}``)."""
    from tuneforge.run import atomic_write_text

    atomic_write_text(folder / CALIBRATION_FILE, json.dumps(record, indent=2) + "\n")


def read_temperature(folder: Path) -> float:
    """The temperature of a checkpoint's ``calibration.json``; 1.0 when there is none (an
    uncalibrated checkpoint, or one made before calibration existed). A damaged file is a
    one-line :class:`UserError` naming it."""
    path = Path(folder) / CALIBRATION_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 1.0
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: unreadable ({reason})") from None
    value = record.get("temperature") if isinstance(record, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise UserError(
            f"{path}: temperature is {short(value)}, not a positive number: not a calibration "
            "file tuneforge wrote"
        )
    return float(value)


def calibrate(
    logits: Any, labels: Any, mode: Mode, kind: Kind, folder: Path
) -> tuple[float, dict[str, Any] | None]:
    """Fit and store the temperature of a checkpoint (``mode`` is ``task.calibration``).

    Returns the temperature to use and what ``metrics.json`` records under
    ``tuning.calibration`` (None for ``none``). ``none`` removes an older ``calibration.json``
    (a study's copied checkpoint) and returns 1.0. Fewer than two validation rows: nothing
    is fitted (T = 1, recorded as skipped).
    """
    path = Path(folder) / CALIBRATION_FILE
    if mode == "none":
        path.unlink(missing_ok=True)
        return 1.0, None
    n = len(_as_f64(logits))
    if n < 2:
        path.unlink(missing_ok=True)
        return 1.0, {"method": "temperature", "mode": mode, "applied": False,
                     "temperature": 1.0, "skipped": f"{n} validation rows"}  # fmt: skip
    fitted = fit_temperature(logits, labels, kind)
    val = figures(logits, labels, fitted, kind)
    improved = val["nll_after"] <= val["nll_before"] * (1 - AUTO_MARGIN)
    applied = mode == "temperature" or improved
    temperature = fitted if applied else 1.0
    record = {
        "method": "temperature",
        "mode": mode,
        "kind": kind,
        "temperature": temperature,
        "fitted_temperature": fitted,
        "applied": applied,
        "rule": RULE if mode == "auto" else "temperature: the fitted temperature is kept",
        "val": val,
    }
    write_calibration(
        folder,
        {
            "method": "temperature",
            "temperature": temperature,
            "fitted_temperature": fitted,
            "applied": applied,
            "mode": mode,
            "kind": kind,
            "fitted_on": "val",
            "val_nll_before": val["nll_before"],
            "val_nll_after": val["nll_after"],
        },
    )
    return temperature, record


def ensemble_calibrated(outputs: list[Any], folders: list[Path], current: float) -> Any:
    """The mean of the members' calibrated logits (each member's logits over its own
    ``calibration.json`` temperature), multiplied by ``current`` (the last-loaded member's
    temperature, which the task's output methods divide by again)."""
    import torch

    scaled = [o.float() / read_temperature(f) for o, f in zip(outputs, folders, strict=True)]
    return torch.stack(scaled).mean(dim=0) * float(current)


# -- the problem kinds' after_training ------------------------------------------------------


def warn(text: str) -> None:
    """A warning line on the console, as the trainer prints its own."""
    print(f"warning: {text}", flush=True)


def single_label_after_training(task: Any, predict_val: Any, folder: Path) -> dict[str, Any]:
    """:meth:`SingleLabelClassification.after_training`: the temperature (``task.calibration``)
    and, for a binary task with ``task.threshold``, the decision threshold on the calibrated
    probability of the positive class. Writes ``calibration.json`` / ``thresholds.json`` into
    ``folder`` (removing stale ones the config no longer asks for) and sets the task's state.
    Returns what ``metrics.json`` records under ``tuning``."""
    import numpy as np

    from tuneforge.plugins import thresholds as th

    cfg = task.config
    folder = Path(folder)
    task.temperature, task.decision = 1.0, None
    if cfg.calibration == "none" and cfg.threshold is None:
        (folder / CALIBRATION_FILE).unlink(missing_ok=True)
        (folder / th.BINARY_FILE).unlink(missing_ok=True)
        return {}
    logits, labels = predict_val()
    y = np.asarray(labels.numpy(), dtype=np.int64)
    out: dict[str, Any] = {}
    task.temperature, record = calibrate(logits, y, cfg.calibration, "softmax", folder)
    if record is not None:
        out["calibration"] = record
    if cfg.threshold is None:
        (folder / th.BINARY_FILE).unlink(missing_ok=True)
        return out
    names = task.class_names or []
    positive = task.positive_index()
    scores = probabilities(logits, task.temperature, "softmax")[:, positive]
    truth = (y == positive).astype(np.int64)
    rule = th.rule_of(cfg.threshold)
    if rule is not None:
        threshold, info = th.tune_threshold(truth, scores, rule)
        how = f"tuned: {rule.describe()}"
        entry: dict[str, Any] = {"metric": rule.metric, "target": rule.target}
    else:
        threshold = float(cfg.threshold)
        r = th.rates(scores, truth, np.array([th.DEFAULT, threshold]))
        info = {"threshold": threshold, "positives": int(truth.sum())}
        info.update({"at_0.5": th._point(r, 0), "tuned": th._point(r, 1)})
        how, entry = "task.threshold", {"metric": "fixed", "target": None}
    th.write_binary(folder, names[positive], positive, threshold, how)
    task.decision = (positive, threshold)
    entry.update(positive_class=names[positive], **info, curve=th.pr_curve(truth, scores))
    if info.get("warning"):
        warn(info["warning"])
    out["threshold"] = entry
    return out


#: Per-label precision-recall curves kept in ``metrics.json`` (the report draws them).
CURVE_LABELS = 20


def multilabel_after_training(task: Any, predict_val: Any, folder: Path) -> dict[str, Any]:
    """:meth:`MultiLabelClassification.after_training`: one temperature for every label's
    sigmoid (``task.calibration``), then, with a tuned ``task.threshold``, each label's
    threshold on the calibrated probabilities. Writes ``calibration.json`` and
    ``thresholds.json`` and sets the task's state; returns what ``metrics.json`` records
    under ``tuning``: ``calibration``, and for tuned thresholds ``thresholds`` (label ->
    threshold), ``val_f1`` (label -> F1 at 0.5 and tuned, positives) and ``threshold``
    (the rule, each label's figures and precision-recall curves)."""
    import numpy as np

    from tuneforge.plugins import multilabel as ml
    from tuneforge.plugins import thresholds as th

    cfg = task.config
    folder = Path(folder)
    task.temperature = 1.0
    rule = th.rule_of(cfg.threshold)
    if cfg.calibration == "none" and rule is None:
        (folder / CALIBRATION_FILE).unlink(missing_ok=True)
        return {}
    names, _ = ml.read_thresholds(folder)
    logits, labels = predict_val()
    y = (np.asarray(labels.numpy()) > 0.5).astype(np.int64)
    out: dict[str, Any] = {}
    task.temperature, record = calibrate(logits, y, cfg.calibration, "sigmoid", folder)
    if record is not None:
        out["calibration"] = record
    if rule is None:
        return out
    probs = probabilities(logits, task.temperature, "sigmoid")
    values, per_label, unreached = [], {}, []
    for j, name in enumerate(names):
        threshold, info = th.tune_threshold(y[:, j], probs[:, j], rule)
        values.append(threshold)
        per_label[name] = info
        if rule.metric != "f1" and not info["reached"]:
            unreached.append(name)
    thresholds = np.asarray(values)
    ml.write_thresholds(folder, names, thresholds, f"tuned: {rule.describe()} per label")
    task.thresholds = thresholds
    if unreached:
        name = rule.metric.removesuffix("_at")
        warn(
            f"task.threshold: {name} {rule.target:g} is not reached on the val split for "
            f"{len(unreached)} label(s) ({short(unreached)}); each uses the threshold of its "
            f"highest {name}"
        )
    out["thresholds"] = {n: float(t) for n, t in zip(names, thresholds, strict=True)}
    out["val_f1"] = {
        n: {"at_0.5": i["at_0.5"]["f1"], "tuned": i["tuned"]["f1"], "positives": i["positives"]}
        for n, i in per_label.items()
    }
    out["threshold"] = {
        "metric": rule.metric,
        "target": rule.target,
        "labels": per_label,
        "curves": {
            n: th.pr_curve(y[:, j], probs[:, j]) for j, n in enumerate(names[:CURVE_LABELS])
        },
    }
    return out
