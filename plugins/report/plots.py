"""Plots of a run folder, written as PNG files into ``<run>/plots/``.

Every plot reads only the files of the run folder (``history.jsonl``, ``metrics.json``,
``split.json``, ``labels.json``, ``predictions_test.csv``), so ``tuneforge report RUN`` can
redraw them at any time. A plot whose data is absent is skipped, never an error.

matplotlib is used through its object-oriented API with the Agg canvas (no pyplot, no global
backend switch); it and pandas are imported inside the functions.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.run import atomic_write_bytes, read_history

PLOTS_DIR = "plots"

#: Colours per split, used by every plot.
COLORS = {
    "train": "#1f77b4",
    "val": "#ff7f0e",
    "test": "#2ca02c",
    "train_balanced": "#9467bd",
}


@dataclass
class PlotResult:
    """What :func:`write_plots` produced: file name -> caption, and warnings to show the user."""

    written: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- data --------------------------------------------------------------------------------


def epoch_series(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """Per-epoch values keyed ``"split.name"`` (``"val.accuracy"``) -> {epoch: value}."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        epoch = r.get("epoch")
        if isinstance(epoch, int) and _finite(r.get("value")):
            out.setdefault(f"{r.get('split')}.{r['name']}", {})[epoch] = float(r["value"])
    return out


def step_series(records: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """Values logged every few steps under ``name`` (``"lr"``), ordered by step."""
    points = sorted(
        (int(r["step"]), float(r["value"]))
        for r in records
        if r.get("name") == name and isinstance(r.get("step"), int) and _finite(r.get("value"))
    )
    return [s for s, _ in points], [v for _, v in points]


def load_history(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's history; a study folder falls back to its best trial's training history."""
    records, warnings = read_history(run_dir)
    if not any(isinstance(r.get("epoch"), int) for r in records):
        metrics = read_json(run_dir / "metrics.json") or {}
        trial = metrics.get("trial") if isinstance(metrics, dict) else None
        trial_dir = run_dir / "trials" / f"trial_{trial:03d}" if isinstance(trial, int) else None
        if trial_dir is not None and (trial_dir / "history.jsonl").is_file():
            trial_records, trial_warnings = read_history(trial_dir)
            return trial_records + records, warnings + trial_warnings
    return records, warnings


def read_predictions(run_dir: Path) -> Any:
    """``predictions_test.csv`` as a DataFrame, or None."""
    path = run_dir / "predictions_test.csv"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError):
        return None
    if not {"y_true", "y_pred"} <= set(frame.columns):
        return None
    return frame


def problem_of(run_dir: Path) -> str:
    labels = read_json(run_dir / "labels.json") or {}
    problem = labels.get("problem") if isinstance(labels, dict) else None
    if problem:
        return str(problem)
    return "classification" if isinstance(labels, dict) and labels.get("classes") else "unknown"


# -- plots -------------------------------------------------------------------------------


def plot_learning_curves(run_dir: Path, records: list[dict[str, Any]], out: Path) -> str | None:
    """Train and val loss per epoch, and the monitored validation metric with the best epoch."""
    series = epoch_series(records)
    if not series:
        return "no per-epoch history"
    metrics = read_json(run_dir / "metrics.json") or {}
    monitor = str(metrics.get("monitor") or "")
    if monitor == "val.loss" or monitor not in series:
        others = [k for k in series if k.startswith("val.") and k != "val.loss"]
        monitor = monitor if monitor in series else (others[0] if others else "")
    has_metric = bool(monitor) and monitor != "val.loss"
    fig, axes = _figure(10 if has_metric else 5.5, 3.6, 2 if has_metric else 1)
    ax = axes[0]
    for key, label in (("train.loss", "train loss"), ("val.loss", "val loss")):
        if key in series:
            epochs = sorted(series[key])
            split = key.split(".")[0]
            ax.plot(
                epochs,
                [series[key][e] for e in epochs],
                marker="o",
                color=COLORS[split],
                label=label,
            )
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    best = metrics.get("best_epoch")
    if has_metric:
        ax = axes[1]
        epochs = sorted(series[monitor])
        ax.plot(epochs, [series[monitor][e] for e in epochs], marker="o", color=COLORS["val"])
        train_key = "train." + monitor.split(".", 1)[1]
        if train_key in series:
            t_epochs = sorted(series[train_key])
            ax.plot(
                t_epochs,
                [series[train_key][e] for e in t_epochs],
                marker="o",
                color=COLORS["train"],
                label=train_key,
            )
        ax.lines[0].set_label(monitor)
        ax.set_title(f"{monitor} (monitored)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if isinstance(best, int) and best in series[monitor]:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                f"best epoch {best}",
                (best, series[monitor][best]),
                textcoords="offset points",
                xytext=(4, -14),
                fontsize=8,
                color="grey",
            )
        ax.legend()
    for a in axes:
        a.xaxis.get_major_locator().set_params(integer=True)
    _save(fig, out)
    return None


def plot_lr_schedule(run_dir: Path, records: list[dict[str, Any]], out: Path) -> str | None:
    """The learning rate by optimizer step."""
    steps, values = step_series(records, "lr")
    if not steps:
        return "no learning-rate records in the history"
    fig, axes = _figure(5.5, 3.2)
    ax = axes[0]
    ax.plot(steps, values, color=COLORS["train"], marker="." if len(steps) < 60 else None)
    ax.set_title("learning rate")
    ax.set_xlabel("optimizer step")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    _save(fig, out)
    return None


def plot_confusion_matrix(run_dir: Path, out: Path) -> str | None:
    """Test-set confusion matrix over the classes of ``labels.json``, counts annotated."""
    labels = read_json(run_dir / "labels.json") or {}
    classes = [str(c) for c in (labels.get("classes") or [])] if isinstance(labels, dict) else []
    if problem_of(run_dir) == "multilabel":  # label sets: the report's per-label table instead
        return "a multi-label run has no confusion matrix (see the per-label table)"
    frame = read_predictions(run_dir)
    if not classes or frame is None or not len(frame):
        return "no test predictions of a classification run"
    from sklearn.metrics import confusion_matrix

    y_true = frame["y_true"].astype(str).to_numpy()
    y_pred = frame["y_pred"].astype(str).to_numpy()
    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    n = len(classes)
    side = min(max(3.8, 0.55 * n + 2.4), 14)
    fig, axes = _figure(side + 0.8, side)
    ax = axes[0]
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), classes, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (test, {int(matrix.sum())} rows)")
    if n <= 30:
        high = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(int(matrix[i, j])),
                    ha="center",
                    va="center",
                    fontsize=9 if n <= 12 else 6,
                    color="white" if matrix[i, j] > high else "black",
                )
    _save(fig, out)
    return None


def plot_class_counts(run_dir: Path, out: Path) -> str | None:
    """Class counts per split, and in the training split after balancing."""
    split = read_json(run_dir / "split.json") or {}
    counts = split.get("class_counts") if isinstance(split, dict) else None
    if not isinstance(counts, dict) or not any(counts.values()):
        return "no class counts in split.json"
    parts = [
        (key, label)
        for key, label in (
            ("train", "train"),
            ("train_balanced", "train (balanced)"),
            ("val", "val"),
            ("test", "test"),
        )
        if counts.get(key)
    ]
    classes: list[str] = []
    for key, _ in parts:
        classes += [c for c in counts[key] if c not in classes]
    import numpy as np

    n = len(classes)
    x = np.arange(n)
    width = 0.8 / len(parts)
    fig, axes = _figure(min(max(5.5, 0.9 * n + 2), 16), 3.6)
    ax = axes[0]
    for k, (key, label) in enumerate(parts):
        values = [counts[key].get(c, 0) for c in classes]
        offset = (k - (len(parts) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, label=label, color=COLORS[key])
        if n <= 12:
            ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_ylabel("rows")
    ax.set_title("class counts per split")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out)
    return None


def _regression_frame(run_dir: Path) -> Any:
    if problem_of(run_dir) != "regression":
        return None
    import pandas as pd

    try:  # not read_predictions(): a multi-output run has y_true_<col> columns instead
        frame = pd.read_csv(run_dir / "predictions_test.csv")
    except (OSError, ValueError):
        return None

    true, pred = "y_true", "y_pred"
    if true not in frame.columns:  # several targets: y_true_<name>; plot the first one
        multi = [c for c in frame.columns if str(c).startswith("y_true_")]
        if not multi or f"y_pred_{multi[0][7:]}" not in frame.columns:
            return None
        true, pred = multi[0], f"y_pred_{multi[0][7:]}"
    y = pd.DataFrame(
        {
            "y_true": pd.to_numeric(frame[true], errors="coerce"),
            "y_pred": pd.to_numeric(frame[pred], errors="coerce"),
        }
    ).dropna()
    return y if len(y) else None


def plot_pred_vs_true(run_dir: Path, out: Path) -> str | None:
    """Regression: predicted against true target on the test split, with the identity line."""
    frame = _regression_frame(run_dir)
    if frame is None:
        return "no numeric test predictions of a regression run"
    fig, axes = _figure(4.8, 4.4)
    ax = axes[0]
    ax.scatter(frame["y_true"], frame["y_pred"], s=14, alpha=0.7, color=COLORS["test"])
    low = float(min(frame["y_true"].min(), frame["y_pred"].min()))
    high = float(max(frame["y_true"].max(), frame["y_pred"].max()))
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"predicted vs true (test, {len(frame)} rows)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out)
    return None


def plot_residuals(run_dir: Path, out: Path) -> str | None:
    """Regression: residuals (true - predicted) against the prediction, and their histogram."""
    frame = _regression_frame(run_dir)
    if frame is None:
        return "no numeric test predictions of a regression run"
    residual = frame["y_true"] - frame["y_pred"]
    fig, axes = _figure(9, 3.6, 2)
    ax = axes[0]
    ax.scatter(frame["y_pred"], residual, s=14, alpha=0.7, color=COLORS["test"])
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true - predicted")
    ax.set_title("residuals (test)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.hist(residual, bins=min(30, max(5, len(residual) // 4)), color=COLORS["test"], alpha=0.8)
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("true - predicted")
    ax.set_ylabel("rows")
    ax.set_title("residual distribution")
    _save(fig, out)
    return None


#: File name -> caption, in the order the report shows them.
CAPTIONS = {
    "learning_curves.png": "Learning curves: loss per epoch and the monitored validation metric",
    "lr_schedule.png": "Learning-rate schedule",
    "confusion_matrix.png": "Confusion matrix on the test split (best checkpoint)",
    "pred_vs_true.png": "Predicted vs true target on the test split",
    "residuals.png": "Residuals on the test split",
    "class_counts.png": "Class counts per split, before and after balancing",
}


def write_plots(run_dir: Path) -> PlotResult:
    """Draw every plot whose data the run folder has into ``<run_dir>/plots/``.

    Plots that cannot be drawn are recorded in ``skipped`` (with the reason) and an older
    file of that name is removed, so ``plots/`` always matches the run folder.
    """
    run_dir = Path(run_dir)
    result = PlotResult()
    records, result.warnings = load_history(run_dir)
    result.warnings = [w for w in result.warnings if not w.endswith(": no history")]
    out_dir = run_dir / PLOTS_DIR
    makers = {
        "learning_curves.png": lambda p: plot_learning_curves(run_dir, records, p),
        "lr_schedule.png": lambda p: plot_lr_schedule(run_dir, records, p),
        "confusion_matrix.png": lambda p: plot_confusion_matrix(run_dir, p),
        "pred_vs_true.png": lambda p: plot_pred_vs_true(run_dir, p),
        "residuals.png": lambda p: plot_residuals(run_dir, p),
        "class_counts.png": lambda p: plot_class_counts(run_dir, p),
    }
    for name, make in makers.items():
        path = out_dir / name
        reason = make(path)
        if reason is None:
            result.written[name] = CAPTIONS[name]
        else:
            result.skipped[name] = reason
            path.unlink(missing_ok=True)
    return result
