"""Honest comparisons of two runs (``tuneforge refine``'s rounds) on their validation split.

Every run writes ``val_outputs.npz`` (:func:`write_val_outputs`): the best checkpoint's model
outputs on the validation split, with the row ids and labels. :func:`compare_rounds` compares
two runs on the validation rows they share, with a paired bootstrap of the monitored metric
(the same resampled rows for both rounds), or, for runs repeated over seeds or folds
(``metrics.json`` ``repeats``), with a Welch interval of the difference of their means. The
verdict is ``"better"`` only when the whole 95% interval of the difference is on the better
side, ``"worse"`` when it is wholly on the worse side, ``"no measurable change"`` otherwise.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneforge.errors import UserError, short

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.advice import RunRecord

#: The file of a run folder holding the best checkpoint's validation outputs.
VAL_OUTPUTS = "val_outputs.npz"
#: Fewer common validation rows than this: no interval is worth computing.
MIN_COMMON_ROWS = 20

BETTER, SAME, WORSE = "better", "no measurable change", "worse"
#: The verdict when the rounds could not be compared on their outputs (older run folders).
NOT_MEASURED = "not measured"


@dataclass
class Comparison:
    """Round ``new`` against round ``old`` on the monitored validation metric.

    :param metric: the monitored key, e.g. ``"val.accuracy"``.
    :param old: the old round's value (on the common rows; the mean over repeats).
    :param new: the new round's value, likewise.
    :param diff: ``new - old``.
    :param ci95: the 95% interval of ``diff`` (None when not measured).
    :param method: how the interval was made, e.g. "paired bootstrap over 300 common
        validation rows" or "Welch interval over 3 seeds".
    :param n: common validation rows (bootstrap) or the smaller number of repeats (Welch).
    :param verdict: ``"better"``, ``"no measurable change"`` or ``"worse"``; ``"not
        measured"`` when the rounds' outputs are missing (see ``reason``).
    :param reason: why there is no interval (empty when there is one).
    """

    metric: str
    old: float | None
    new: float | None
    diff: float | None
    ci95: tuple[float, float] | None
    method: str
    n: int
    verdict: str
    reason: str = ""

    @property
    def measured(self) -> bool:
        """Whether the verdict rests on an interval."""
        return self.ci95 is not None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = None if self.ci95 is None else [float(v) for v in self.ci95]
        return out

    def line(self, new_round: int, old_round: int) -> str:
        """``round 2 vs round 1: val.accuracy 0.8120 -> 0.8250 (+0.0130, 95% interval
        -0.0040..+0.0310, paired bootstrap over 300 common validation rows): no measurable
        change``."""
        head = f"round {new_round} vs round {old_round}: {self.metric} "
        head += f"{_num(self.old)} -> {_num(self.new)}"
        if self.ci95 is not None:
            lo, hi = self.ci95
            inner = (
                f"{_signed(self.diff)}, 95% interval {_signed(lo)}..{_signed(hi)}, {self.method}"
            )
            return f"{head} ({inner}): {self.verdict}"
        shown = f" ({_signed(self.diff)})" if self.diff is not None else ""
        if self.verdict == NOT_MEASURED:
            return f"{head}{shown}: not measured: {self.reason}"
        return f"{head}{shown}: {self.verdict} ({self.reason})"


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def write_val_outputs(run_dir: Path, rows: Any, logits: Any, labels: Any) -> None:
    """``RUN/val_outputs.npz``: ``rows`` (int64 row ids of the validation split), ``logits``
    (float32, as the model returns them) and ``labels`` (as the dataset gives them),
    compressed and written atomically (a killed run never leaves half a file)."""
    from tuneforge.run import atomic_write_bytes, storage_error

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        rows=np.asarray(rows, dtype=np.int64),
        logits=_numpy(logits).astype(np.float32),
        labels=_numpy(labels),
    )
    try:
        atomic_write_bytes(Path(run_dir) / VAL_OUTPUTS, buf.getvalue())
    except OSError as exc:
        raise storage_error(exc, Path(run_dir), ours=True) or exc from None


def _numpy(value: Any) -> np.ndarray:
    """A CPU tensor or an array as a numpy array."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
    return np.asarray(value)


def read_val_outputs(run_dir: Path) -> dict[str, np.ndarray]:
    """``rows``, ``logits`` and ``labels`` of ``RUN/val_outputs.npz``; a missing, damaged or
    inconsistent file is a :class:`UserError` naming it."""
    path = Path(run_dir) / VAL_OUTPUTS
    if not path.is_file():
        raise UserError(f"{path.parent} has no {VAL_OUTPUTS} (a run folder from before it existed)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {key: npz[key] for key in ("rows", "logits", "labels")}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {short(str(exc))})") from None
    n = len(out["rows"])
    if len(out["logits"]) != n or len(out["labels"]) != n or out["rows"].ndim != 1:
        raise UserError(f"{path}: rows, logits and labels do not have the same length")
    return out


def _verdict(lo: float, hi: float, mode: str) -> str:
    """``better`` / ``worse`` when the whole interval of ``new - old`` is on that side."""
    if mode == "min":
        lo, hi = -hi, -lo
    if lo > 0:
        return BETTER
    if hi < 0:
        return WORSE
    return SAME


def _repeat_values(record: RunRecord, key: str) -> list[float] | None:
    repeats = record.metrics.get("repeats")
    if not isinstance(repeats, dict):
        return None
    values = (repeats.get("values") or {}).get(key)
    if not isinstance(values, list):
        return None
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return finite if len(finite) >= 2 else None


def _repeat_kind(record: RunRecord) -> str:
    kind = (record.metrics.get("repeats") or {}).get("kind")
    return str(kind) if kind in ("folds", "seeds") else "repeats"


def welch(old: list[float], new: list[float], mode: str, metric: str, kind: str) -> Comparison:
    """The difference of the means of two rounds' repeated values, with Welch's 95% interval
    (unequal variances; scipy.stats.ttest_ind). Identical values on both sides give a
    zero-width interval."""
    from scipy import stats

    a, b = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    diff = float(b.mean() - a.mean())
    if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        lo = hi = diff
    else:
        ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        lo, hi = float(ci.low), float(ci.high)
    n = min(len(a), len(b))
    counts = f"{len(a)}" if len(a) == len(b) else f"{len(a)} and {len(b)}"
    return Comparison(
        metric=metric,
        old=float(a.mean()),
        new=float(b.mean()),
        diff=diff,
        ci95=(lo, hi),
        method=f"Welch interval over {counts} {kind}",
        n=n,
        verdict=_verdict(lo, hi, mode),
    )


def _round_scorer(
    run_dir: Path, name: str, disable: list[str], local: list[str]
) -> tuple[Any, Any]:
    """The run's task (bound and with its checkpoint's state restored: a regression task's
    target scaler, a multi-label task's thresholds) and the monitored metric, ``None`` for the
    loss (the task's evaluation loss ``task.loss_fn(None)`` is used then)."""
    from tuneforge.components import Metric
    from tuneforge.manager import make_plugin_manager
    from tuneforge.predict import best_checkpoint, bound_task
    from tuneforge.prepare import build_component

    cfg, task = bound_task(run_dir, disable, local)
    task.load_artifacts(best_checkpoint(run_dir))  # the model is not needed: only the state
    if name == "loss":
        return task, None
    refs = [(i, r) for i, r in enumerate(cfg.metrics or []) if r.name == name]
    if not refs:
        raise UserError(f"{run_dir / 'config.yaml'}: metric {name!r} is not among its metrics")
    regs = make_plugin_manager(cfg, run_dir, disable, local).registries
    i, ref = refs[0]
    return task, build_component(regs, ref, f"metrics[{i}]", Metric)


def paired_bootstrap(
    old: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    old_task: Any,
    new_task: Any,
    metric: Any,
    mode: str,
    key: str,
    seed: int = 0,
    n_boot: int = 2000,
) -> Comparison:
    """Both rounds' validation outputs on their common rows (same label required), the
    monitored metric on ``n_boot`` resamples of those rows (the same resample for both
    rounds), and the percentile 95% interval of the difference ``new - old``.

    ``metric`` is a :class:`~tuneforge.components.Metric` applied to each round's
    ``task.predictions(logits)`` (computed once per round and indexed per resample:
    predictions are per row), or ``None`` for the loss: then each round's evaluation loss
    ``task.loss_fn(None)`` is computed on each resample's logits, which is correct for any
    loss (no per-row reduction is assumed), if slower.
    """
    import torch

    _, ia, ib = np.intersect1d(old["rows"], new["rows"], assume_unique=False, return_indices=True)
    if len(ia) == 0:
        return _not_enough(key, 0, f"no common validation rows, at least {MIN_COMMON_ROWS} needed")
    lab_a, lab_b = old["labels"][ia], new["labels"][ib]
    if lab_a.shape[1:] != lab_b.shape[1:]:
        return _not_enough(key, 0, "the rounds' validation labels have different shapes")
    same = np.all(lab_a.reshape(len(ia), -1) == lab_b.reshape(len(ib), -1), axis=1)
    ia, ib = ia[same], ib[same]
    dropped = int((~same).sum())
    n = len(ia)
    note = f" ({dropped} common rows with different labels left out)" if dropped else ""
    if n < MIN_COMMON_ROWS:
        why = "no common validation rows" if n == 0 else f"only {n} common validation rows"
        return _not_enough(key, n, f"{why}{note}, at least {MIN_COMMON_ROWS} needed")
    labels = old["labels"][ia]
    logits_a = torch.from_numpy(np.ascontiguousarray(old["logits"][ia]))
    logits_b = torch.from_numpy(np.ascontiguousarray(new["logits"][ib]))
    if metric is None:
        y = torch.from_numpy(np.ascontiguousarray(labels))
        loss_a, loss_b = old_task.loss_fn(None), new_task.loss_fn(None)

        def score_a(idx: np.ndarray) -> float:
            return float(loss_a(logits_a[idx], y[idx]).item())

        def score_b(idx: np.ndarray) -> float:
            return float(loss_b(logits_b[idx], y[idx]).item())
    else:
        pred_a, prob_a = old_task.predictions(logits_a)
        pred_b, prob_b = new_task.predictions(logits_b)

        def score(pred: np.ndarray, prob: np.ndarray | None, idx: np.ndarray) -> float:
            try:
                return float(metric(labels[idx], pred[idx], None if prob is None else prob[idx]))
            except ValueError:  # undefined on this resample (one class only...)
                return math.nan

        def score_a(idx: np.ndarray) -> float:
            return score(pred_a, prob_a, idx)

        def score_b(idx: np.ndarray) -> float:
            return score(pred_b, prob_b, idx)

    every = np.arange(n)
    value_a, value_b = score_a(every), score_b(every)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot, dtype=np.float64)
    if metric is not None and _same(pred_a, pred_b) and _same(prob_a, prob_b):
        diffs[:] = 0.0  # the same predictions: the metric is the same on every resample
    else:
        with torch.no_grad():
            for k in range(n_boot):
                idx = rng.integers(0, n, size=n)
                diffs[k] = score_b(idx) - score_a(idx)
    finite = diffs[np.isfinite(diffs)]
    if len(finite) < n_boot / 2:
        return _not_enough(key, n, f"{key} is undefined on most resamples of {n} rows")
    lo, hi = (float(v) for v in np.percentile(finite, [2.5, 97.5]))
    return Comparison(
        metric=key,
        old=value_a,
        new=value_b,
        diff=value_b - value_a,
        ci95=(lo, hi),
        method=f"paired bootstrap over {n} common validation rows{note}",
        n=n,
        verdict=_verdict(lo, hi, mode),
    )


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (
        a is not None and b is not None and np.array_equal(np.asarray(a), np.asarray(b))
    )


def _not_enough(key: str, n: int, reason: str) -> Comparison:
    return Comparison(key, None, None, None, None, "none", n, SAME, reason)


def compare_rounds(
    old: RunRecord,
    new: RunRecord,
    metric: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    disable: list[str] = (),
    local: list[str] = (),
) -> Comparison:
    """Round ``new`` against round ``old`` on the monitored validation metric.

    Both rounds repeated (``metrics.json`` ``repeats`` with the metric's values): Welch's
    interval of the difference of the means. Otherwise a paired bootstrap over their common
    validation rows (``val_outputs.npz``), the metric computed from each round's own task
    (its checkpoint's state restored) and the metric component of ``old``'s config. Without
    outputs to compare (an older run folder, a failed round) the verdict is ``"not
    measured"`` and ``reason`` says why; ``old``/``new`` are then the runs' ``best_value``.

    :param metric: the monitored key (``"val.accuracy"``, ``"val.loss"``); by default
        ``old``'s monitor.
    :param mode: ``"max"`` or ``"min"``; by default ``old``'s monitor mode.
    :param seed: the bootstrap's random seed.
    :param n_boot: bootstrap resamples.
    """
    key = metric or old.monitor
    mode = mode or old.mode
    name = key.removeprefix("val.")
    vals_a, vals_b = _repeat_values(old, key), _repeat_values(new, key)
    if vals_a is not None and vals_b is not None:
        kind = _repeat_kind(new) if _repeat_kind(new) == _repeat_kind(old) else "repeats"
        return welch(vals_a, vals_b, mode, key, kind)
    try:
        for rec in (old, new):
            if rec.status != "completed":
                raise UserError(f"{rec.path} did not complete (status {rec.status})")
        if (vals_a is None) != (vals_b is None):  # a repeated run has no outputs of its own
            rep, single = (old, new) if vals_a is not None else (new, old)
            raise UserError(
                f"{rep.path} is repeated over {_repeat_kind(rep)} and {single.path} is a "
                "single run: no common outputs to compare"
            )
        outputs_a, outputs_b = read_val_outputs(old.path), read_val_outputs(new.path)
        task_a, metric_obj = _round_scorer(old.path, name, disable, local)
        task_b, _ = _round_scorer(new.path, name, disable, local)
    except UserError as exc:
        diff = None
        a, b = old.best_val(), new.best_val()
        if a is not None and b is not None:
            diff = b - a
        return Comparison(key, a, b, diff, None, "none", 0, NOT_MEASURED, str(exc))
    result = paired_bootstrap(
        outputs_a, outputs_b, task_a, task_b, metric_obj, mode, key, seed=seed, n_boot=n_boot
    )
    if result.old is None and result.new is None:  # too few common rows: the runs' values
        result.old, result.new = old.best_val(), new.best_val()
    return result
