"""The report's error analysis (plugins/report/errors.py): most confident mistakes with their
inputs, most confused class pairs, per-class F1 bars, largest residuals; escaping.

Run folders are written by hand (the files a run writes), with a real data file that the
section reads again through the run's task: no training, seconds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tuneforge.plugins.report.errors import (
    confident_mistakes,
    confused_pairs,
    largest_residuals,
    multilabel_mistakes,
)


def _write_run(
    run: Path,
    task: str,
    data: Path,
    predictions: str,
    labels: dict,
    metrics: dict,
    data_section: dict | None = None,
) -> Path:
    run.mkdir(parents=True)
    cfg = {
        "task": task,
        "data": {"path": str(data), **(data_section or {})},
        "model": {"name": "mlp"},
        "output": {"dir": str(run)},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "predictions_test.csv").write_text(predictions)
    (run / "labels.json").write_text(json.dumps(labels))
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "run.json").write_text(json.dumps({"status": "completed", "task": task}))
    return run


def _section(page: str) -> str:
    match = re.search(r"<section id=errors>.*?</section>", page, flags=re.S)
    assert match, "no error-analysis section"
    return match.group(0)


def test_classification_mistakes_pairs_bars_and_escaping(tmp_path: Path) -> None:
    from tuneforge.plugins.report.html import build_report

    data = tmp_path / "data.csv"
    texts = ["good film", "bad film", "fine", "<script>alert('x')</script> awful " + "w" * 400]
    texts += ["meh", "great"]
    labels = ["pos", "neg", "pos", "neg", "neg", "pos"]
    rows = "\n".join(f'"{t}",{lab}' for t, lab in zip(texts, labels, strict=True))
    data.write_text("text,label\n" + rows + "\n")
    predictions = (
        "row,y_true,y_pred,prob_neg,prob_pos\n"
        "2,pos,pos,0.1,0.9\n"
        "3,neg,pos,0.03,0.97\n"  # the most confident mistake
        "4,neg,pos,0.4,0.6\n"
        "5,pos,pos,0.2,0.8\n"
    )
    metrics = {
        "test": {"accuracy": 0.5},
        "test_intervals": {"accuracy": [0.25, 0.75]},
        "test_interval_method": {
            "method": "percentile bootstrap over test rows",
            "confidence": 0.95,
            "resamples": 1000,
            "rows": 4,
            "seed": 42,
        },
        "test_details": {
            "per_class": [
                {"class": "neg", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2},
                {"class": "pos", "precision": 0.5, "recall": 1.0, "f1": 0.667, "support": 2},
            ],
            "confusion_matrix": {"classes": ["neg", "pos"], "counts": [[0, 2], [0, 2]]},
        },
    }
    run = _write_run(
        tmp_path / "runs" / "cls",
        "text-classification",
        data,
        predictions,
        {"problem": "classification", "classes": ["neg", "pos"]},
        metrics,
    )
    page = build_report(run).path.read_text(encoding="utf-8")
    section = _section(page)
    assert "<h2>Error analysis</h2>" in section and "Most confident mistakes" in section
    # the first mistake row: row 3, its text escaped and cut, label, prediction, confidence
    first = re.search(r"<tbody><tr>(.*?)</tr>", section, flags=re.S).group(1)
    assert "<td>3</td>" in first and "<td>neg</td><td>pos</td><td>0.9700</td>" in first
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; awful" in first
    assert "w" * 400 not in first and "\u2026" in first
    assert "<script" not in page.lower()
    # row 4 follows (confidence 0.6); right predictions are not listed
    assert section.index("<td>0.6000</td>") > section.index("<td>0.9700</td>")
    assert "<td>2</td><td><div" not in section
    # the confused pair and the F1 bars
    assert "Most confused class pairs" in section
    assert "<td>neg</td><td>pos</td><td>2</td><td>1.000</td>" in section
    assert 'alt="F1 per class on the test split"' in section
    # the test table carries the interval
    assert "0.5000 <span class=ci>[0.2500, 0.7500]</span>" in page
    assert "95% percentile bootstrap over test rows interval (1000 resamples of 4 rows" in page


def test_regression_largest_residuals_with_inputs(tmp_path: Path) -> None:
    from tuneforge.plugins.report.html import build_report

    data = tmp_path / "table.csv"
    lines = ["x1,x2,price"] + [f"{i},{i * 2},{i * 10}" for i in range(10)]
    data.write_text("\n".join(lines) + "\n")
    predictions = "row,y_true,y_pred\n7,70,71\n8,80,40\n9,90,95\n"
    run = _write_run(
        tmp_path / "runs" / "reg",
        "tabular-regression",
        data,
        predictions,
        {"problem": "regression", "targets": ["price"]},
        {"test": {"rmse": 23.0}},
        {"target": "price"},
    )
    section = _section(build_report(run).path.read_text(encoding="utf-8"))
    assert "Largest residuals" in section
    first = re.search(r"<tbody><tr>(.*?)</tr>", section, flags=re.S).group(1)
    assert first.startswith("<td>8</td>")
    assert "<code>x1</code>&nbsp;8" in first and "<code>x2</code>&nbsp;16" in first
    assert "<td>80.0000</td><td>40.0000</td><td>40.0000</td>" in first


def test_inputs_that_cannot_be_read_are_left_out_with_a_note(tmp_path: Path) -> None:
    from tuneforge.plugins.report.html import build_report

    data = tmp_path / "gone.csv"
    data.write_text("text,label\na,x\nb,y\n")
    run = _write_run(
        tmp_path / "runs" / "cls",
        "text-classification",
        data,
        "row,y_true,y_pred,prob_x,prob_y\n0,x,y,0.2,0.8\n",
        {"problem": "classification", "classes": ["x", "y"]},
        {"test": {"accuracy": 0.0}},
    )
    data.unlink()
    section = _section(build_report(run).path.read_text(encoding="utf-8"))
    assert "<td>0</td><td>&ndash;</td><td>x</td><td>y</td>" in section
    assert "inputs not shown: the run&#x27;s data could not be read" in section


def test_selection_functions() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "row": [10, 11, 12],
            "y_true": ["a", "b", "c"],
            "y_pred": ["b", "b", "a"],
            "prob_a": [0.2, 0.1, 0.5],
            "prob_b": [0.7, 0.8, 0.1],
            "prob_c": [0.1, 0.1, 0.4],
        }
    )
    worst = confident_mistakes(frame, ["a", "b", "c"])
    assert [(r["row"], r["confidence"], r["p_label"]) for r in worst] == [
        (10, 0.7, 0.2),
        (12, 0.5, 0.4),
    ]
    pairs = confused_pairs(
        {"classes": ["a", "b", "c"], "counts": [[5, 1, 0], [3, 2, 0], [0, 3, 1]]}
    )
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("b", "a", 3),
        ("c", "b", 3),
        ("a", "b", 1),
    ]
    assert pairs[0]["share"] == 0.6
    multi = pd.DataFrame(
        {"row": [1, 2], "y_true": ["x|y", ""], "y_pred": ["x", "y"], "prob_x": [0.9, 0.3]}
        | {"prob_y": [0.3, 0.95]}
    )
    assert [(r["row"], r["label"], r["truth"]) for r in multilabel_mistakes(multi, "|")] == [
        (2, "y", False),
        (1, "y", True),
    ]
    reg = pd.DataFrame(
        {"row": [0, 1], "y_true_a": [1.0, 5.0], "y_pred_a": [1.5, 5.0]}
        | {"y_true_b": [0.0, 0.0], "y_pred_b": [0.0, -3.0]}
    )
    targets, rows = largest_residuals(reg)
    assert targets == ["a", "b"] and [r["row"] for r in rows] == [1, 0]
    assert rows[0]["residualb"] == 3.0
