"""The report's "Calibration and thresholds" section: the temperature, ECE and NLL before and
after temperature scaling (validation and test), a reliability diagram, and the validation
precision-recall curve with the chosen decision threshold (binary and multi-label runs).

Everything comes from ``metrics.json`` (``tuning.calibration``, ``tuning.threshold``,
``test_details.calibration``), written by :mod:`tuneforge.plugins.calibration`; a run without
them gets no section. The figures are drawn with the report's plot style
(:mod:`tuneforge.plugins.report.plots`) and embedded as data URIs.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from tuneforge.plugins.report.plots import COLORS, _figure

#: Precision-recall curves drawn for a multi-label run (the first labels).
MAX_CURVES = 6


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bins(table: Any) -> list[tuple[int, float, float]] | None:
    if not isinstance(table, list) or not table:
        return None
    out = []
    for row in table:
        if not isinstance(row, list) or len(row) != 3:
            return None
        n, conf, acc = (_num(v) for v in row)
        if n is None or conf is None or acc is None:
            return None
        out.append((int(n), conf, acc))
    return out


def reliability_png(
    figures: dict[str, Any], split: str, kind: str, temperature: float | None
) -> str | None:
    """A reliability diagram (accuracy per confidence bin, before: T = 1, and after: with
    ``temperature``), base64 PNG."""
    table = figures.get("reliability") if isinstance(figures, dict) else None
    if not isinstance(table, dict):
        return None
    before, after = _bins(table.get("before")), _bins(table.get("after"))
    if before is None or after is None:
        return None
    fig, axes = _figure(9, 3.8, 2)
    what = "label probability" if kind == "sigmoid" else "top-class confidence"
    for ax, name, bins, colour in (
        (axes[0], "before", before, COLORS["train"]),
        (axes[1], "after", after, COLORS[split] if split in COLORS else COLORS["val"]),
    ):
        width = 1.0 / len(bins)
        lefts = [i * width for i in range(len(bins))]
        ax.bar(
            lefts,
            [acc if n else 0 for n, _, acc in bins],
            width=width,
            align="edge",
            color=colour,
            alpha=0.75,
            edgecolor="white",
            label="observed frequency" if kind == "sigmoid" else "accuracy",
        )
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.plot(
            [conf for n, conf, _ in bins if n],
            [acc for n, _, acc in bins if n],
            marker="o",
            markersize=3,
            color="black",
            linewidth=1,
        )
        ece = _num(figures.get(f"ece_{name}"))
        t = temperature if name == "after" else 1.0
        title = f"{split}, T = {t:.3g}" if t is not None else f"{split} {name}"
        ax.set_title(title + (f" (ECE {ece:.4f})" if ece is not None else ""))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(what)
        ax.set_ylabel("fraction right")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


def _curve(curve: Any) -> tuple[list[float], list[float]] | None:
    if not isinstance(curve, dict):
        return None
    p, r = curve.get("precision"), curve.get("recall")
    if not isinstance(p, list) or not isinstance(r, list) or len(p) != len(r) or not p:
        return None
    pairs = [(_num(a), _num(b)) for a, b in zip(r, p, strict=True)]
    if any(a is None or b is None for a, b in pairs):
        return None
    return [a for a, _ in pairs], [b for _, b in pairs]  # type: ignore[misc]


def pr_png(threshold: dict[str, Any]) -> str | None:
    """Validation precision-recall curve(s) with the chosen threshold's point, base64 PNG."""
    curves: list[tuple[str, Any, dict[str, Any]]] = []
    if isinstance(threshold.get("curve"), dict):  # binary
        curves.append(
            (str(threshold.get("positive_class", "positive")), threshold["curve"], threshold)
        )
    labels = threshold.get("labels") if isinstance(threshold.get("labels"), dict) else {}
    for name, curve in (threshold.get("curves") or {}).items():
        if len(curves) < MAX_CURVES and isinstance(labels.get(name), dict):
            curves.append((str(name), curve, labels[name]))
    drawn = [(n, _curve(c), info) for n, c, info in curves]
    drawn = [(n, c, info) for n, c, info in drawn if c is not None]
    if not drawn:
        return None
    fig, axes = _figure(5.8, 4.2)
    ax = axes[0]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for k, (name, (recall, precision), info) in enumerate(drawn):
        colour = palette[k % len(palette)]
        ax.plot(recall, precision, color=colour, linewidth=1.4, label=name)
        tuned = info.get("tuned") if isinstance(info.get("tuned"), dict) else {}
        t, r, p = (
            _num(info.get("threshold")),
            _num(tuned.get("recall")),
            _num(tuned.get("precision")),
        )
        if t is not None and r is not None and p is not None:
            ax.scatter([r], [p], color=colour, s=40, zorder=3, edgecolor="black")
            ax.annotate(
                f"t = {t:.3f}", (r, p), textcoords="offset points", xytext=(6, -12), fontsize=8
            )
    target = _num(threshold.get("target"))
    if target is not None and threshold.get("metric") == "precision_at":
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"precision {target:g}")
    if target is not None and threshold.get("metric") == "recall_at":
        ax.axvline(target, color="grey", linestyle=":", linewidth=1, label=f"recall {target:g}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall on val, chosen threshold marked")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def _figure_html(data: str, caption: str, esc: Any) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def calibration_section(metrics: dict[str, Any], esc: Any, fmt: Any, table: Any) -> str:
    """The section's HTML, or "" when the run recorded no calibration and no threshold.

    :param esc: the report's HTML escaper; ``fmt`` its cell formatter; ``table`` its table
        maker (``table(header, rows, cls)``), so the section looks like the others.
    """
    tuning = metrics.get("tuning") if isinstance(metrics.get("tuning"), dict) else {}
    details = metrics.get("test_details") if isinstance(metrics.get("test_details"), dict) else {}
    cal = tuning.get("calibration") if isinstance(tuning.get("calibration"), dict) else None
    threshold = tuning.get("threshold") if isinstance(tuning.get("threshold"), dict) else None
    test = details.get("calibration") if isinstance(details.get("calibration"), dict) else None
    if cal is None and threshold is None:
        return ""
    parts = ["<section id=calibration><h2>Calibration and thresholds</h2>"]
    if cal is not None:
        kind = str(cal.get("kind", "softmax"))
        applied = bool(cal.get("applied"))
        temp, fitted = _num(cal.get("temperature")), _num(cal.get("fitted_temperature"))
        how = "kept" if applied else "not kept (T = 1)"
        text = f"Temperature scaling ({esc(cal.get('mode', ''))}): fitted T = {fmt(fitted)}, {how}."
        if cal.get("skipped"):
            text = f"Temperature scaling skipped: {esc(cal['skipped'])}."
        parts.append(f"<p>{text} <span class=muted>{esc(cal.get('rule', ''))}</span></p>")
        rows = []
        in_use = fitted if applied else 1.0
        for split, fig, t in (("val", cal.get("val"), fitted), ("test", test, in_use)):
            if isinstance(fig, dict):
                rows.append(
                    [
                        esc(split),
                        fmt(t),
                        fmt(fig.get("ece_before")),
                        fmt(fig.get("ece_after")),
                        fmt(fig.get("nll_before")),
                        fmt(fig.get("nll_after")),
                    ]
                )
        if rows:
            what = "per-label probability" if kind == "sigmoid" else "top-class confidence"
            parts.append(
                f"<p class=muted>ECE: 15 equal-width bins of the {what}; before: T = 1, "
                "after: val with the fitted T, test with the T in use "
                f"(T = {fmt(temp)}).</p>"
            )
            header = ["split", "T after", "ECE before", "ECE after", "NLL before", "NLL after"]
            parts.append(table(header, rows, "num"))
        shown, split, t = (
            (test, "test", in_use) if isinstance(test, dict) else (cal.get("val"), "val", fitted)
        )
        image = reliability_png(shown, split, kind, t) if isinstance(shown, dict) else None
        if image:
            parts.append(_figure_html(image, f"Reliability diagram ({split} split)", esc))
    if threshold is not None:
        parts.append(_threshold_html(threshold, esc, fmt, table))
    parts.append("</section>")
    return "".join(parts)


def _threshold_html(threshold: dict[str, Any], esc: Any, fmt: Any, table: Any) -> str:
    metric, target = threshold.get("metric"), threshold.get("target")
    rule = "fixed (task.threshold)" if metric == "fixed" else str(metric)
    if target is not None:
        rule += f" {target}"
    parts = [f"<h3>Decision threshold: {esc(rule)}</h3>"]
    if isinstance(threshold.get("curve"), dict):  # binary
        at, tuned = threshold.get("at_0.5") or {}, threshold.get("tuned") or {}
        parts.append(
            f"<p>Positive class <code>{esc(threshold.get('positive_class', ''))}</code>: "
            f"threshold {fmt(threshold.get('threshold'))} (calibrated probability).</p>"
        )
        rows = [
            ["0.5", fmt(at.get("f1")), fmt(at.get("precision")), fmt(at.get("recall"))],
            [
                fmt(threshold.get("threshold")),
                fmt(tuned.get("f1")),
                fmt(tuned.get("precision")),
                fmt(tuned.get("recall")),
            ],
        ]
        parts.append(table(["threshold (val)", "F1", "precision", "recall"], rows, "num"))
    labels = threshold.get("labels")
    if isinstance(labels, dict) and labels:
        rows = []
        for name, info in labels.items():
            if not isinstance(info, dict):
                continue
            at, tuned = info.get("at_0.5") or {}, info.get("tuned") or {}
            rows.append(
                [
                    esc(name),
                    fmt(info.get("threshold")),
                    fmt(at.get("f1")),
                    fmt(tuned.get("f1")),
                    fmt(tuned.get("precision")),
                    fmt(tuned.get("recall")),
                ]
            )
        header = ["label", "threshold", "val F1 at 0.5", "val F1 tuned", "precision", "recall"]
        parts.append(table(header, rows, "num"))
    if threshold.get("warning"):
        parts.append(f"<p class=muted>{esc(threshold['warning'])}</p>")
    image = pr_png(threshold)
    if image:
        parts.append(
            _figure_html(image, "Precision-recall curve on val with the chosen threshold", esc)
        )
    return "".join(parts)
