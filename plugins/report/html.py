"""``report.html``: one self-contained page per run (inline CSS, images as data URIs, no script).

Everything shown comes from the files of the run folder; every value taken from them is
HTML-escaped, and passwords in URI-looking config values are masked.
"""

from __future__ import annotations

import base64
import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.plugins.peft_support import resource_facts
from tuneforge.plugins.report.calibration import calibration_section
from tuneforge.plugins.report.errors import CSS as ERRORS_CSS
from tuneforge.plugins.report.errors import error_analysis_section, interval_cell, interval_note
from tuneforge.plugins.report.explanations import explanations_section
from tuneforge.plugins.report.plots import PLOTS_DIR, PlotResult, read_json, write_plots
from tuneforge.run import atomic_write_text
from tuneforge.secrets import mask_secrets

REPORT_NAME = "report.html"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats with ``digits`` decimals, None as a dash, everything escaped."""
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value != 0 and (abs(value) < 10**-digits or abs(value) >= 1e6):
            return esc(f"{value:.3g}")
        return esc(f"{value:.{digits}f}")
    return esc(value)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "&ndash;"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)):
        return "&ndash;"
    return esc(time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(timestamp)).strip())


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; ``header`` is escaped, ``rows`` cells are HTML already."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pre(value: Any) -> str:
    """A structured value (dict, list) as YAML in a ``<pre>``; strings as they are."""
    if isinstance(value, str):
        return f"<pre>{esc(mask_secrets(value))}</pre>"
    import yaml

    text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"<pre>{esc(mask_secrets(text.strip()))}</pre>"


@dataclass
class Report:
    """The written ``report.html`` and the warnings met while building it."""

    path: Path
    plots: PlotResult
    warnings: list[str] = field(default_factory=list)


# -- sections ----------------------------------------------------------------------------


def _header(name: str, run: dict[str, Any], metrics: dict[str, Any], config: str) -> str:
    task = run.get("task")
    if not task:
        match = re.search(r"^task:\s*(\S+)", config, flags=re.M)
        task = match.group(1) if match else None
    facts = [
        ("task", esc(task) if task else "&ndash;"),
        ("status", f'<span class="status">{esc(run.get("status", "unknown"))}</span>'),
        ("started", when(run.get("started"))),
        ("duration", duration(run.get("seconds"))),
        ("device", esc(run.get("device", "&ndash;"))),
        *resource_facts(run),
        (
            "versions",
            esc(", ".join(f"{k} {run[k]}" for k in ("tuneforge", "python", "torch") if run.get(k)))
            or "&ndash;",
        ),
    ]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in facts)
    summary = ""
    monitor = metrics.get("monitor")
    if monitor:
        epochs = metrics.get("epochs_run")
        summary = (
            f"<p>Best epoch <b>{fmt(metrics.get('best_epoch'))}</b> of {fmt(epochs)} by "
            f"<code>{esc(monitor)}</code> ({esc(metrics.get('monitor_mode', ''))}) = "
            f"<b>{fmt(metrics.get('best_value'))}</b>"
        )
        if metrics.get("stopped_early"):
            reason = metrics.get("stop_reason") or "early stopping"
            summary += f"; training stopped early: {esc(reason)}"
        summary += ".</p>"
    return (
        f"<header><h1>{esc(name)}</h1><p class=sub>tuneforge run report</p>"
        f"<dl class=facts>{items}</dl>{summary}</header>"
    )


def _metrics_section(run_dir: Path, metrics: dict[str, Any], problem: str) -> str:
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    val = metrics.get("val") if isinstance(metrics.get("val"), dict) else {}
    if not test and not val:
        return "<section id=metrics><h2>Test metrics</h2><p class=muted>No metrics.</p></section>"
    baseline = {k: v for k, v in test.items() if k.startswith("majority_baseline")}
    names = [k for k in test if k not in baseline] + [
        k for k in val if k not in test and k not in baseline
    ]
    rows = [
        [
            f"<code>{esc(n)}</code>",
            fmt(test.get(n)) + interval_cell(metrics, n, fmt),
            fmt(val.get(n)),
        ]
        for n in names
    ]
    for key, value in baseline.items():
        label = key.replace("majority_baseline_", "majority baseline ").replace("_", " ")
        rows.append([f"<i>{esc(label.strip())}</i>", fmt(value), "&ndash;"])
    parts = [
        "<section id=metrics><h2>Test metrics</h2>",
        "<p class=muted>The best checkpoint evaluated once on the test split; "
        "validation values are those of the best epoch.</p>",
        table(["metric", "test", "validation (best epoch)"], rows, "num"),
        interval_note(metrics, esc),
    ]
    advice = metrics.get("recommendations")
    if isinstance(advice, list) and advice:
        items = "".join(f"<li>{esc(str(a))}</li>" for a in advice)
        parts.append(f"<div class=recommend><h3>Recommendation</h3><ul>{items}</ul></div>")
    if problem != "regression":
        parts.append(_per_class(run_dir))
    parts.append(_repeats_table(metrics))
    study = metrics.get("study")
    if isinstance(study, dict):
        parts.append("<h3>Hyperparameter study</h3>")
        parts.append(
            table(
                ["tuner", "trials", "best trial", "best parameters"],
                [
                    [
                        fmt(study.get("tuner")),
                        fmt(study.get("trials")),
                        fmt(study.get("best_trial")),
                        _pre(study.get("best_params", {})),
                    ]
                ],
            )
        )
    parts.append("</section>")
    return "".join(parts)


def _repeats_table(metrics: dict[str, Any]) -> str:
    """A repeated run's members (``metrics.json`` ``repeats``: folds or seeds): one row per
    member with its best validation value and test metrics, then mean, std and 95% interval."""
    repeats = metrics.get("repeats")
    if not isinstance(repeats, dict) or not isinstance(repeats.get("values"), dict):
        return ""
    values, summary = repeats["values"], repeats.get("summary") or {}
    members = [str(m) for m in repeats.get("members") or []]
    monitor = metrics.get("monitor")
    keys = [monitor] if monitor in values else []
    keys += [k for k in values if str(k).startswith("test.") and "baseline" not in str(k)]
    header = ["member"] + [f"<code>{esc(k)}</code>" for k in keys]
    rows = [
        [esc(name)] + [fmt((values.get(k) or [None] * len(members))[i]) for k in keys]
        for i, name in enumerate(members)
    ]

    def stat(k: str, what: str) -> str:
        s = summary.get(k) if isinstance(summary.get(k), dict) else {}
        if what == "ci95":
            ci = s.get("ci95")
            if not isinstance(ci, list) or len(ci) != 2:
                return "&ndash;"
            return f"[{fmt(ci[0])}, {fmt(ci[1])}]"
        return fmt(s.get(what))

    for what, label in (("mean", "mean"), ("std", "std"), ("ci95", "95% interval")):
        rows.append([f"<b>{label}</b>"] + [stat(k, what) for k in keys])
    kind = "Cross-validation folds" if repeats.get("kind") == "folds" else "Repeated seeds"
    note = (
        f"{fmt(repeats.get('n'))} member runs (<code>members/</code>); std with ddof 1, 95% "
        "t-interval (approximate for folds, which share training rows). The run's model is the "
        f"ensemble of the members; its test metrics above are {esc(metrics.get('test_is', ''))}."
    )
    return f"<h3>{kind}</h3><p class=muted>{note}</p>" + table(header, rows, "num")


def _per_label(run_dir: Path) -> str:
    """A multi-label run's per-label test table (``metrics.json`` ``test_details.per_label``)
    with each label's decision threshold (``checkpoint/thresholds.json``)."""
    metrics = read_json(run_dir / "metrics.json") or {}
    details = metrics.get("test_details") if isinstance(metrics, dict) else None
    table_rows = details.get("per_label") if isinstance(details, dict) else None
    if not isinstance(table_rows, list) or not table_rows:
        return ""
    saved = read_json(run_dir / "checkpoint" / "thresholds.json") or {}
    thresholds = saved.get("thresholds") if isinstance(saved, dict) else None
    thresholds = thresholds if isinstance(thresholds, dict) else {}
    keys = ("precision", "recall", "f1", "support", "predicted")
    rows = [
        [esc(r.get("label", ""))]
        + [fmt(r.get(k)) for k in keys]
        + [fmt(thresholds.get(str(r.get("label"))))]
        for r in table_rows
        if isinstance(r, dict)
    ]
    header = ["label", "precision", "recall", "F1", "support", "predicted", "threshold"]
    return "<h3>Per label (test)</h3>" + table(header, rows, "num")


def _per_class(run_dir: Path) -> str:
    from tuneforge.plugins.report.plots import read_predictions

    labels = read_json(run_dir / "labels.json") or {}
    if isinstance(labels, dict) and labels.get("problem") == "multilabel":
        return _per_label(run_dir)
    classes = [str(c) for c in (labels.get("classes") or [])] if isinstance(labels, dict) else []
    frame = read_predictions(run_dir)
    if not classes or frame is None or not len(frame):
        return ""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        frame["y_true"].astype(str),
        frame["y_pred"].astype(str),
        labels=classes,
        zero_division=0,
    )
    rows = [
        [esc(c), fmt(float(p[i])), fmt(float(r[i])), fmt(float(f[i])), fmt(int(s[i]))]
        for i, c in enumerate(classes)
    ]
    return "<h3>Per class (test)</h3>" + table(
        ["class", "precision", "recall", "F1", "support"], rows, "num"
    )


def _evaluations_section(run_dir: Path) -> str:
    """Each saved ``tuneforge evaluate`` of the run (``evaluations/NAME/metrics.json``): its
    input, rows, metrics and baselines, per-class (or per-label) table and confusion matrix."""
    from tuneforge.evaluate import INFO_KEYS, read_evaluations

    evaluations = read_evaluations(run_dir)
    if not evaluations:
        return ""
    parts = [
        "<section id=evaluations><h2>Evaluations</h2>",
        "<p class=muted>The best checkpoint scored on other labelled files "
        "(<code>tuneforge evaluate RUN --input FILE</code>); results in "
        "<code>evaluations/NAME/</code>.</p>",
    ]
    for ev in evaluations:
        parts.append(
            f"<h3>{esc(ev.get('name', ''))}</h3><p>{fmt(ev.get('rows'))} rows of "
            f"<code>{esc(ev.get('input', ''))}</code></p>"
        )
        rows = [
            [f"<code>{esc(k)}</code>" if "baseline" not in k else f"<i>{esc(k)}</i>", fmt(v)]
            for k, v in ev.items()
            if k not in INFO_KEYS
        ]
        parts.append(table(["metric", "value"], rows, "num"))
        details = ev.get("details") if isinstance(ev.get("details"), dict) else {}
        for key, label in (("per_class", "class"), ("per_label", "label")):
            per = details.get(key)
            if isinstance(per, list) and per:
                keys = ("precision", "recall", "f1", "support", "predicted")
                cols = [c for c in keys if isinstance(per[0], dict) and c in per[0]]
                body = [
                    [esc(r.get(label, ""))] + [fmt(r.get(c)) for c in cols]
                    for r in per
                    if isinstance(r, dict)
                ]
                parts.append(table([label, *cols], body, "num"))
        matrix = details.get("confusion_matrix")
        if isinstance(matrix, dict) and isinstance(matrix.get("counts"), list):
            classes = [str(c) for c in matrix.get("classes") or []]
            counts = matrix["counts"]
            if len(classes) == len(counts):
                parts.append(
                    "<p class=muted>Confusion matrix: true class (rows) by predicted "
                    "class (columns).</p>"
                )
                body = [
                    [f"<b>{esc(c)}</b>"] + [fmt(v) for v in (r if isinstance(r, list) else [])]
                    for c, r in zip(classes, counts, strict=True)
                ]
                parts.append(table(["true \\ predicted", *classes], body, "num"))
        notes = ev.get("notes") if isinstance(ev.get("notes"), list) else []
        if notes:
            parts.append(
                "<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"
            )
    parts.append("</section>")
    return "".join(parts)


def _findings_section(findings: Any) -> str:
    data = findings if isinstance(findings, dict) else {}
    items = data.get("findings") or []
    loaded, kept = data.get("rows_loaded"), data.get("rows_kept")
    parts = ["<section id=data><h2>Data quality</h2>"]
    if loaded is not None:
        dropped = loaded - kept if isinstance(loaded, int) and isinstance(kept, int) else None
        parts.append(
            f"<p>{fmt(loaded)} rows loaded, {fmt(kept)} kept"
            + (f" ({fmt(dropped)} dropped)" if dropped else "")
            + ".</p>"
        )
    if not findings:
        parts.append("<p class=muted>No findings.json in the run folder.</p>")
    elif not items:
        parts.append("<p class=muted>No findings: every validator passed.</p>")
    else:
        rows = [
            [
                esc(f.get("validator", "")),
                esc(f.get("kind", "")),
                f'<span class="sev {esc(f.get("severity", ""))}">{esc(f.get("severity", ""))}</span>',
                fmt(f.get("count", len(f.get("rows") or []))),
                esc(f.get("action", "")),
                esc(f.get("message", "")),
            ]
            for f in items
            if isinstance(f, dict)
        ]
        parts.append(
            table(["validator", "kind", "severity", "count", "action", "message"], rows, "findings")
        )
    parts.append("</section>")
    return "".join(parts)


def _split_section(split: Any, config_text: str) -> str:
    data = split if isinstance(split, dict) else {}
    parts = ["<section id=split><h2>Split and balance</h2>"]
    if not data:
        parts.append("<p class=muted>No split.json in the run folder.</p></section>")
        return "".join(parts)
    sizes = {k: len(data[k]) for k in ("train", "val", "test") if isinstance(data.get(k), list)}
    if isinstance(data.get("balanced_train"), list):
        sizes["train_balanced"] = len(data["balanced_train"])
    balancer = re.search(r"^balancer:\s*(.+)$", config_text, flags=re.M)
    given = data.get("given")
    if isinstance(given, dict) and given:  # split.json's given: where each split came from
        where = "; ".join(
            f"<b>{esc(name)}</b> "
            + (esc(src) if str(src).startswith("carved") else f"from <code>{esc(src)}</code>")
            for name, src in given.items()
        )
        parts.append(f"<p class=given>The split was given: {where}.</p>")
    if balancer and balancer.group(1).strip() not in ("", "null"):
        parts.append(f"<p>Balancer: <code>{esc(balancer.group(1).strip())}</code></p>")
    columns = [
        ("train", "train"),
        ("train_balanced", "train (balanced)"),
        ("val", "val"),
        ("test", "test"),
    ]
    counts = data.get("class_counts") if isinstance(data.get("class_counts"), dict) else {}
    present = [(k, label) for k, label in columns if k in sizes or counts.get(k)]
    classes: list[str] = []
    for key, _ in present:
        classes += [c for c in (counts.get(key) or {}) if c not in classes]
    rows = []
    for c in classes:
        rows.append([esc(c)] + [fmt((counts.get(k) or {}).get(c, 0)) for k, _ in present])
    total = [
        sizes.get(k, sum((counts.get(k) or {}).values()) if counts.get(k) else None)
        for k, _ in present
    ]
    rows.append(["<b>total</b>"] + [f"<b>{fmt(t)}</b>" for t in total])
    parts.append(table(["class" if classes else ""] + [h for _, h in present], rows, "num"))
    notes = data.get("notes") or []
    if notes:
        parts.append("<ul class=notes>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts.append("</section>")
    return "".join(parts)


def _plots_section(run_dir: Path, plots: PlotResult) -> str:
    parts = ["<section id=plots><h2>Curves and plots</h2>"]
    if not plots.written:
        parts.append("<p class=muted>No plots could be drawn for this run.</p>")
    for name, caption in plots.written.items():
        path = run_dir / PLOTS_DIR / name
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)} <code>{esc(PLOTS_DIR + '/' + name)}</code></figcaption>"
            "</figure>"
        )
    parts.append("</section>")
    return "".join(parts)


def _advice_section(advice: Any) -> str:
    if isinstance(advice, dict):
        advice = advice.get("advice", [advice])
    if not isinstance(advice, list) or not advice:
        return ""
    parts = [
        "<section id=advice><h2>Refinement advice</h2>",
        "<p class=muted>What the advisors diagnosed from the learning curves, and the config "
        "change they suggest.</p>",
    ]
    for item in advice:
        if not isinstance(item, dict):
            item = {"diagnosis": item}
        parts.append("<div class=advice>")
        parts.append(f"<h3>{esc(item.get('diagnosis', 'advice'))}</h3>")
        evidence = item.get("evidence")
        if evidence not in (None, "", [], {}):
            if isinstance(evidence, str):
                parts.append(f"<p><b>Evidence:</b> {esc(evidence)}</p>")
            else:
                parts.append("<p><b>Evidence:</b></p>" + _pre(evidence))
        patch = item.get("patch")
        if patch not in (None, "", [], {}):
            parts.append("<p><b>Suggested config patch:</b></p>" + _pre(patch))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _config_section(config_text: str) -> str:
    if not config_text:
        return "<section id=config><h2>Config</h2><p class=muted>No config.yaml.</p></section>"
    return (
        "<section id=config><h2>Config</h2><p class=muted>The resolved config "
        "(<code>config.yaml</code>: task defaults filled in, overrides applied).</p>"
        f"<pre class=config>{esc(mask_secrets(config_text.rstrip()))}</pre></section>"
    )


CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
  margin: 0; background: #f5f6f8; }
main { max-width: 1100px; margin: 0 auto; padding: 20px 28px 40px; background: #fff; }
header h1 { margin: 0; font-size: 26px; }
.sub { margin: 0 0 12px; color: #667; }
h2 { font-size: 19px; border-bottom: 2px solid #e3e6eb; padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
nav { margin: 12px 0; font-size: 13px; }
nav a { margin-right: 14px; color: #2557a7; text-decoration: none; }
dl.facts { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0 0 8px; }
dl.facts dt { font-size: 11px; text-transform: uppercase; color: #778; }
dl.facts dd { margin: 0; font-weight: 600; }
.status { color: #1a7f37; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #dde1e6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
table.num td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.findings td:nth-child(4) { text-align: right; }
.sev { padding: 0 6px; border-radius: 3px; }
.sev.error { background: #ffd7d5; } .sev.warning { background: #fff1c2; }
.sev.info { background: #e2ecff; }
.muted { color: #667; }
code { background: #f0f2f5; padding: 0 3px; border-radius: 3px; }
pre { background: #f6f8fa; border: 1px solid #e3e6eb; padding: 8px 10px; overflow-x: auto;
  font-size: 12px; margin: 4px 0; }
pre.config { max-height: 520px; overflow-y: auto; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { color: #556; font-size: 12px; }
.advice { border-left: 4px solid #f0a020; padding: 2px 12px; margin: 10px 0; background: #fffaf0; }
footer { margin-top: 30px; color: #889; font-size: 12px; }
"""


def render(run_dir: Path, plots: PlotResult, name: str | None = None) -> str:
    """The report page of ``run_dir`` as a string (plots must be drawn already)."""
    run_dir = Path(run_dir)
    run = read_json(run_dir / "run.json") or {}
    metrics = read_json(run_dir / "metrics.json") or {}
    labels = read_json(run_dir / "labels.json") or {}
    run = run if isinstance(run, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    problem = str(labels.get("problem", "")) if isinstance(labels, dict) else ""
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else ""
    advice_path = run_dir / "advice.json"
    advice = read_json(advice_path) if advice_path.is_file() else None
    name = name or run_dir.name
    advice_html = _advice_section(advice)
    evaluations_html = _evaluations_section(run_dir)
    nav = [("metrics", "Test metrics")]
    if evaluations_html:
        nav.append(("evaluations", "Evaluations"))
    if advice_html:
        nav.append(("advice", "Advice"))
    nav += [("data", "Data quality"), ("split", "Split and balance")]
    nav += [("plots", "Plots"), ("config", "Config")]
    body = [
        _header(name, run, metrics, config_text),
        "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav) + "</nav>",
        _metrics_section(run_dir, metrics, problem),
        calibration_section(metrics, esc, fmt, table),
        error_analysis_section(run_dir, metrics, esc, fmt, table),
        explanations_section(run_dir, esc),
        evaluations_html,
        advice_html,
        _findings_section(read_json(run_dir / "findings.json")),
        _split_section(read_json(run_dir / "split.json"), config_text),
        _plots_section(run_dir, plots),
        _config_section(config_text),
        f"<footer>Generated by tuneforge on {when(time.time())} from the files of the run "
        "folder; <code>tuneforge report RUN</code> rebuilds it.</footer>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        '<link rel=icon href="data:,">'
        f"<title>{esc(name)} - tuneforge report</title><style>{CSS}{ERRORS_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def build_report(run_dir: Path, name: str | None = None) -> Report:
    """Draw the plots and write ``<run_dir>/report.html``; returns what was written."""
    run_dir = Path(run_dir)
    plots = write_plots(run_dir)
    path = run_dir / REPORT_NAME
    atomic_write_text(path, render(run_dir, plots, name))
    return Report(path=path, plots=plots, warnings=list(plots.warnings))
