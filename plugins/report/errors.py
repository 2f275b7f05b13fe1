"""The report's "Error analysis" section, and the bootstrap intervals of its test table.

From the files of the run folder:

- classification: the most confident mistakes on the test split (``predictions_test.csv``:
  the rows whose predicted class is wrong, by the predicted class's probability), the most
  confused class pairs (``metrics.json`` ``test_details.confusion_matrix``) and a bar chart
  of the per-class F1 (``test_details.per_class``);
- multi-label: the most confident wrong (row, label) decisions and the per-label F1 bars
  (``test_details.per_label``);
- regression: the rows with the largest absolute residuals (several targets: the largest
  over the targets).

The rows' inputs are read again from the run's data (``config.yaml``'s ``data`` through the
run's task, as the run read it, given splits included): text escaped and cut to
:data:`TEXT_CHARS` characters, images as small thumbnails (the file name when the image cannot
be read), table rows as their first :data:`FEATURES` feature values. When the data cannot be
read any more (moved, changed), the rows are shown without inputs and a note says why.
Everything from the files is HTML-escaped. matplotlib, pandas and PIL are imported inside
the functions.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.plugins.report.plots import COLORS, _figure, read_json

#: Rows shown per table.
TOP = 10
#: Characters of a text input shown.
TEXT_CHARS = 300
#: Feature values of a table row shown.
FEATURES = 8
#: Thumbnail size (pixels, longest side).
THUMB = 72
#: Classes (or labels) drawn in the F1 bar chart: the lowest F1 first when there are more.
MAX_BARS = 40

Esc = Callable[[Any], str]


def _num(value: Any) -> float | None:
    """A finite number (numpy scalars included) as a float, else None."""
    if isinstance(value, (bool, str)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def interval_cell(metrics: dict[str, Any], name: str, fmt: Callable[..., str]) -> str:
    """The test table's cell suffix for ``name``: its bootstrap interval
    (``metrics.json`` ``test_intervals``) as `` [low, high]``, or ""."""
    intervals = metrics.get("test_intervals")
    pair = intervals.get(name) if isinstance(intervals, dict) else None
    if not isinstance(pair, list) or len(pair) != 2:
        return ""
    lo, hi = (_num(v) for v in pair)
    if lo is None or hi is None:
        return ""
    return f" <span class=ci>[{fmt(lo)}, {fmt(hi)}]</span>"


def interval_note(metrics: dict[str, Any], esc: Esc) -> str:
    """One line saying how the test table's intervals were made, or ""."""
    method = metrics.get("test_interval_method")
    if not isinstance(method, dict) or not isinstance(metrics.get("test_intervals"), dict):
        return ""
    conf = _num(method.get("confidence")) or 0.95
    text = (
        f"Brackets: {conf:.0%} {method.get('method', 'bootstrap')} interval "
        f"({method.get('resamples')} resamples of {method.get('rows')} rows, seed "
        f"{method.get('seed')}): how much the test split itself can tell."
    )
    reduced = method.get("reduced")
    if isinstance(reduced, dict) and reduced:
        text += " Fewer resamples (time budget): " + ", ".join(
            f"{k} {v}" for k, v in reduced.items()
        )
    notes = method.get("notes") if isinstance(method.get("notes"), list) else []
    extra = "".join(f"<br>{esc(n)}" for n in notes)
    return f"<p class=muted>{esc(text)}{extra}</p>"


# -- inputs ------------------------------------------------------------------------------


def _thumbnail(path: str) -> str | None:
    try:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
    except Exception:  # unreadable, missing, not an image: the file name instead
        return None
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show_value(value: Any, modality: str, column: str, esc: Esc) -> str:
    if modality == "image":
        name = Path(str(value)).name
        data = _thumbnail(str(value))
        if data is None:
            return f"<code>{esc(name)}</code>"
        return (
            f'<img class=thumb src="data:image/png;base64,{data}" alt="{esc(name)}" '
            f'title="{esc(value)}">'
        )
    text = "" if value is None else str(value)
    if modality == "tabular":
        return f"<code>{esc(column)}</code>&nbsp;{esc(text[:60])}"
    cut = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "\u2026"
    return esc(cut)


def read_inputs(
    run_dir: Path, rows: list[int]
) -> tuple[dict[int, list[tuple[str, str, Any]]], str]:
    """The inputs of ``rows`` (data row numbers, as ``predictions_test.csv`` ``row``), read
    again as the run read its data: row -> [(column, modality, value)], and a note when they
    cannot be had (empty otherwise)."""
    if not rows:
        return {}, ""
    try:
        from tuneforge.components import Task
        from tuneforge.config import build_config, read_yaml
        from tuneforge.manager import make_plugin_manager
        from tuneforge.prepare import build_component, load_given

        cfg = build_config(read_yaml(run_dir / "config.yaml"))
        pm = make_plugin_manager(cfg, run_dir)
        task = build_component(pm.registries, cfg.task, "task", Task)
        task.name = cfg.task.name
        task.reserve_columns([cfg.split.column] if cfg.split.column else [])
        data = task.load(cfg.data, run_dir)
        if cfg.data.val_path or cfg.data.test_path or cfg.split.column:
            data, _ = load_given(cfg, run_dir, task, data)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return {}, f"inputs not shown: the run's data could not be read ({first})"
    out: dict[int, list[tuple[str, str, Any]]] = {}
    index = data.frame.index
    for row in rows:
        if row not in index:
            continue
        values = []
        for role, column in data.inputs.items():
            modality = data.modalities.get(role, "text")
            values.append((column, modality, data.frame.at[row, column]))
        out[row] = values
    missing = len(set(rows) - set(out))
    note = (
        f"{missing} rows are no longer in the run's data: shown without inputs" if missing else ""
    )
    return out, note


def _inputs_cell(values: list[tuple[str, str, Any]] | None, esc: Esc) -> str:
    if not values:
        return "&ndash;"
    shown = values[:FEATURES]
    parts = [_show_value(v, m, c, esc) for c, m, v in shown]
    tabular = all(m == "tabular" for _, m, _ in shown)
    sep = "<br>" if tabular or len(shown) > 1 else ""
    more = f"<br><i>(+{len(values) - FEATURES} more)</i>" if len(values) > FEATURES else ""
    return f"<div class=inputs>{sep.join(parts)}{more}</div>"


# -- selections ----------------------------------------------------------------------------


def confident_mistakes(frame: Any, classes: list[str], top: int = TOP) -> list[dict[str, Any]]:
    """The wrong test predictions with the highest probability of the predicted class:
    ``row``, ``label``, ``prediction``, ``confidence`` and ``p_label`` (the true class's)."""
    out = []
    for rec in frame.to_dict("records"):
        label, pred = str(rec.get("y_true", "")), str(rec.get("y_pred", ""))
        if label == pred:
            continue
        conf = _num(rec.get(f"prob_{pred}"))
        out.append(
            {
                "row": int(rec["row"]),
                "label": label,
                "prediction": pred,
                "confidence": conf,
                "p_label": _num(rec.get(f"prob_{label}")),
            }
        )
    out.sort(key=lambda r: -(r["confidence"] if r["confidence"] is not None else -1.0))
    return out[:top]


def confused_pairs(matrix: dict[str, Any], top: int = TOP) -> list[dict[str, Any]]:
    """The off-diagonal cells of a confusion matrix (``{"classes", "counts"}``, rows: true)
    with the most rows: ``true``, ``predicted``, ``count``, ``share`` (of the true class)."""
    classes = [str(c) for c in matrix.get("classes") or []]
    counts = matrix.get("counts") or []
    pairs = []
    for i, row in enumerate(counts[: len(classes)]):
        if not isinstance(row, list):
            continue
        total = sum(v for v in row if isinstance(v, (int, float)))
        for j, value in enumerate(row[: len(classes)]):
            if i != j and isinstance(value, (int, float)) and value > 0:
                pairs.append(
                    {
                        "true": classes[i],
                        "predicted": classes[j],
                        "count": int(value),
                        "share": value / total if total else None,
                    }
                )
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    return pairs[:top]


def multilabel_mistakes(frame: Any, sep: str, top: int = TOP) -> list[dict[str, Any]]:
    """The wrong (row, label) decisions furthest from 0.5: ``row``, ``label``, ``truth``
    (whether the row has it), ``probability``."""
    out = []
    labels = [c[5:] for c in frame.columns if str(c).startswith("prob_")]
    for rec in frame.to_dict("records"):
        truth = {t for t in str(rec.get("y_true", "")).split(sep) if t}
        pred = {t for t in str(rec.get("y_pred", "")).split(sep) if t}
        for label in labels:
            has, said = label in truth, label in pred
            p = _num(rec.get(f"prob_{label}"))
            if has != said and p is not None:
                item = {"row": int(rec["row"]), "label": label, "truth": has, "probability": p}
                out.append(item)
    out.sort(key=lambda r: -abs(r["probability"] - 0.5))
    return out[:top]


def largest_residuals(frame: Any, top: int = TOP) -> tuple[list[str], list[dict[str, Any]]]:
    """The test rows with the largest absolute residual (over the targets): the target
    names ("" for one target) and rows ``row``, ``true``/``pred``/``residual`` per target."""
    import pandas as pd

    if "y_true" in frame.columns and "y_pred" in frame.columns:
        targets = [""]
    else:
        targets = [
            str(c)[7:]
            for c in frame.columns
            if str(c).startswith("y_true_") and f"y_pred_{str(c)[7:]}" in frame.columns
        ]
    if not targets:
        return [], []

    def col(kind: str, t: str) -> Any:
        return pd.to_numeric(frame[f"y_{kind}_{t}" if t else f"y_{kind}"], errors="coerce")

    residual = pd.concat([(col("true", t) - col("pred", t)).abs() for t in targets], axis=1)
    worst = residual.max(axis=1).dropna().sort_values(ascending=False).index[:top]
    rows = []
    for i in worst:
        rows.append(
            {
                "row": int(frame.at[i, "row"]),
                **{
                    f"{part}{t}": _num(v)
                    for t in targets
                    for part, v in (
                        ("true", col("true", t)[i]),
                        ("pred", col("pred", t)[i]),
                        ("residual", col("true", t)[i] - col("pred", t)[i]),
                    )
                },
            }
        )
    return targets, rows


# -- plot ----------------------------------------------------------------------------------


def f1_bars_png(table: list[dict[str, Any]], key: str) -> str | None:
    """Horizontal bars of each class's (``key="class"``) or label's test F1, base64 PNG."""
    items = [
        (str(r.get(key, "")), _num(r.get("f1")), r.get("support"))
        for r in table
        if isinstance(r, dict)
    ]
    items = [(n, f, s) for n, f, s in items if f is not None]
    if not items:
        return None
    if len(items) > MAX_BARS:
        items = sorted(items, key=lambda x: x[1])[:MAX_BARS]
    n = len(items)
    fig, axes = _figure(6.4, min(max(1.8, 0.28 * n + 1.0), 12))
    ax = axes[0]
    y = list(range(n))[::-1]
    bars = ax.barh(y, [f for _, f, _ in items], color=COLORS["test"], alpha=0.85)
    ax.set_yticks(y, [name for name, _, _ in items], fontsize=8 if n > 15 else 9)
    ax.bar_label(bars, labels=[f"{f:.2f}" for _, f, _ in items], fontsize=7, padding=2)
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("F1 (test)")
    what = "class" if key == "class" else "label"
    ax.set_title(f"F1 per {what} (test)" + (f", the {MAX_BARS} lowest" if n == MAX_BARS else ""))
    ax.grid(axis="x", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- the section ---------------------------------------------------------------------------


def _read_frame(run_dir: Path) -> Any:
    path = run_dir / "predictions_test.csv"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError):
        return None
    return frame if "row" in frame.columns and len(frame) else None


def error_analysis_section(
    run_dir: Path, metrics: dict[str, Any], esc: Esc, fmt: Callable[..., str], table: Any
) -> str:
    """The "Error analysis" section of ``run_dir``'s report ("" when the run has no test
    predictions)."""
    run_dir = Path(run_dir)
    frame = _read_frame(run_dir)
    if frame is None:
        return ""
    labels = read_json(run_dir / "labels.json") or {}
    labels = labels if isinstance(labels, dict) else {}
    problem = str(labels.get("problem") or ("classification" if labels.get("classes") else ""))
    details = metrics.get("test_details") if isinstance(metrics.get("test_details"), dict) else {}
    parts = [
        "<section id=errors><h2>Error analysis</h2>",
        "<p class=muted>Where the best checkpoint fails on the test split "
        "(<code>predictions_test.csv</code>; inputs read again from the run's data).</p>",
    ]
    if problem == "regression":
        targets, worst = largest_residuals(frame)
        inputs, note = read_inputs(run_dir, [r["row"] for r in worst])
        header = ["row", "inputs"]
        for t in targets:
            suffix = f" ({t})" if t else ""
            header += [f"true{suffix}", f"predicted{suffix}", f"residual{suffix}"]
        body = [
            [fmt(r["row"]), _inputs_cell(inputs.get(r["row"]), esc)]
            + [fmt(r[f"{p}{t}"]) for t in targets for p in ("true", "pred", "residual")]
            for r in worst
        ]
        parts.append("<h3>Largest residuals (true &minus; predicted)</h3>")
        parts.append(table(header, body, "num errors") if body else "<p class=muted>none</p>")
    elif problem == "multilabel":
        sep = str(labels.get("separator") or "|")
        worst = multilabel_mistakes(frame, sep)
        inputs, note = read_inputs(run_dir, [r["row"] for r in worst])
        body = [
            [
                fmt(r["row"]),
                _inputs_cell(inputs.get(r["row"]), esc),
                esc(r["label"]),
                "has it" if r["truth"] else "has not",
                fmt(r["probability"]),
            ]
            for r in worst
        ]
        parts.append("<h3>Most confident mistakes (row, label)</h3>")
        header = ["row", "inputs", "label", "truth", "probability"]
        parts.append(table(header, body, "num errors") if body else "<p class=muted>none</p>")
        parts.append(_bars(details.get("per_label"), "label", esc))
    else:
        classes = [str(c) for c in labels.get("classes") or []]
        worst = confident_mistakes(frame, classes)
        inputs, note = read_inputs(run_dir, [r["row"] for r in worst])
        body = [
            [
                fmt(r["row"]),
                _inputs_cell(inputs.get(r["row"]), esc),
                esc(r["label"]),
                esc(r["prediction"]),
                fmt(r["confidence"]),
                fmt(r["p_label"]),
            ]
            for r in worst
        ]
        parts.append("<h3>Most confident mistakes</h3>")
        header = ["row", "inputs", "label", "prediction", "confidence", "p(label)"]
        parts.append(
            table(header, body, "num errors")
            if body
            else "<p class=muted>No mistakes on the test split.</p>"
        )
        matrix = details.get("confusion_matrix")
        pairs = confused_pairs(matrix) if isinstance(matrix, dict) else []
        if pairs:
            parts.append("<h3>Most confused class pairs</h3>")
            rows = [
                [esc(p["true"]), esc(p["predicted"]), fmt(p["count"]), fmt(p["share"], 3)]
                for p in pairs
            ]
            parts.append(
                table(["true class", "predicted as", "rows", "share of the class"], rows, "num")
            )
        parts.append(_bars(details.get("per_class"), "class", esc))
    if note:
        parts.append(f"<p class=muted>{esc(note)}</p>")
    parts.append("</section>")
    return "".join(parts)


def _bars(table_rows: Any, key: str, esc: Esc) -> str:
    if not isinstance(table_rows, list):
        return ""
    data = f1_bars_png(table_rows, key)
    if data is None:
        return ""
    caption = f"F1 per {key} on the test split"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


#: Styles of the section (added to the report's CSS).
CSS = """
.ci { color: #667; font-size: 12px; white-space: nowrap; }
table.errors td:nth-child(2) { text-align: left; max-width: 520px; word-break: break-word; }
img.thumb { max-width: 72px; max-height: 72px; border: 1px solid #e3e6eb; }
"""
