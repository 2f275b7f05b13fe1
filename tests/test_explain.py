"""``tuneforge explain`` and the run end's ``explanations/test.html``: Integrated Gradients token
attributions (text, tiny BERT), Grad-CAM (image, tiny timm), permutation importance (tabular),
one-line errors with nothing written, and the report's link.

Tiny random-init models on generated data; the attributions are checked in-process through the
task's declared ``explain`` method on the run's own checkpoint.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import one_line_error, run_cli

pytest.importorskip("captum")

#: Until the installed metadata lists the ``explain`` entry point, the plugin is loaded by
#: module name, as a user may load any plugin.
_INSTALLED = any(e.name == "explain" for e in entry_points(group="tuneforge"))
PLUGIN = [] if _INSTALLED else ["--plugin", "tuneforge.plugins.explain"]


def explain_cli(*args: str, cwd: Path | None = None):
    """``tuneforge explain`` as a user runs it: a subprocess (exit status, stderr)."""
    return run_cli("explain", *args, *PLUGIN, cwd=cwd)


def tf(*args: str) -> int:
    """The CLI in this process (its imports already paid for): the exit status."""
    from tuneforge.cli import main

    return main([*args, *(PLUGIN if args[0] == "explain" else [])])


def explain_in_process(run: Path, frame: pd.DataFrame, **options):
    """The run's task bound and loaded as ``tuneforge explain`` does, then ``task.explain``."""
    from tuneforge.components import ExplainOptions
    from tuneforge.predict import bound_task, read_labels

    cfg, task = bound_task(run, [], [])
    model = task.load_artifacts(run / "checkpoint")
    model.eval()
    opts = ExplainOptions(labels=read_labels(run / "labels.json"), source="test", **options)
    return task.explain(model, frame, cfg.data, opts)


# -- text ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinymodels import make_texts, tiny_checkpoint, write_csv

    root = tmp_path_factory.mktemp("text")
    bert = tiny_checkpoint(root / "bert", "bert")  # only the family this file needs
    write_csv(root / "data.csv", make_texts(120, seed=1))
    write_csv(root / "new.csv", make_texts(5, seed=7))
    cfg = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(bert)},
        "trainer": {"epochs": 3, "batch_size": 16, "lr": 1e-2, "early_stopping_patience": None},
        "evaluation": {"bootstrap": 0, "explain_rows": 3},
        "output": {"dir": str(root / "runs" / "run")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert tf("run", str(root / "config.yaml")) == 0
    return root / "runs" / "run"


def test_text_run_end_writes_test_explanations_and_the_report_shows_them(text_run: Path) -> None:
    page = text_run / "explanations" / "test.html"
    text = page.read_text(encoding="utf-8")
    assert "integrated-gradients" in text and text.count("<h3>row ") == 3
    assert "[CLS]" in text and "convergence delta" in text
    report = (text_run / "report.html").read_text(encoding="utf-8")
    # the report names the page and shows its rows, staying self-contained (no file links)
    assert "<code>explanations/test.html</code>" in report and "id=explanations" in report
    assert report.count("convergence delta ") == 3 and 'href="explanations' not in report


def test_text_integrated_gradients_are_complete_and_merge_word_pieces(text_run: Path) -> None:
    frame = pd.DataFrame({"text": ["refund my unbelievably late invoice", "login fails again"]})
    result = explain_in_process(text_run, frame, rows=2, steps=64)
    assert result.method == "integrated-gradients" and len(result.records) == 2
    for rec in result.records:
        scores = rec["attributions"]
        assert np.isfinite(scores).all() and np.abs(scores).sum() > 0
        expected = rec["output"] - rec["baseline_output"]  # completeness
        assert rec["attribution_sum"] == pytest.approx(expected, abs=1e-3 + 1e-2 * abs(expected))
        assert rec["delta"] < 1e-3 + 1e-2 * abs(expected)
        assert rec["tokens"][0] == "[CLS]" and rec["tokens"][-1] == "[SEP]"
        assert rec["attributions"][1:-1].any()  # [UNK] is a word too: only [CLS]/[SEP] kept
        words = [w for w, _ in rec["words"]]
        assert not any(w.startswith("##") for w in words)  # pieces joined to their word
        assert len(words) <= len(rec["tokens"])
        total = sum(s for _, s in rec["words"])  # merged scores keep the (normalised) total
        assert total == pytest.approx(float(scores.sum() / np.linalg.norm(scores)), abs=1e-5)
    # the trained model's output moves away from the baseline's: completeness is not 0 == 0
    assert max(abs(r["output"] - r["baseline_output"]) for r in result.records) > 0.05
    # the explained class is each row's predicted one, named as labels.json names it
    from tuneforge.explain import model_outputs
    from tuneforge.predict import bound_task

    cfg, task = bound_task(text_run, [], [])
    model = task.load_artifacts(text_run / "checkpoint")
    logits = model_outputs(model, task.predict_dataset(frame, cfg.data), task.collate_fn(False))
    classes = json.loads((text_run / "labels.json").read_text())["classes"]
    assert [r["target"] for r in result.records] == logits.argmax(dim=1).tolist()
    assert [r["target_name"] for r in result.records] == [
        classes[r["target"]] for r in result.records
    ]


def test_text_explain_command_writes_one_page_and_prints_its_path(
    text_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = text_run.parent.parent / "new.csv"
    assert tf("explain", str(text_run), "--input", str(new), "--rows", "2", "--steps", "16") == 0
    page = text_run / "explanations" / "new.html"
    assert str(page) in capsys.readouterr().out and page.is_file()
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.count("<h3>row ") == 2


def test_explain_errors_are_one_line_and_write_nothing(
    text_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = text_run.parent.parent / "new.csv"
    line = one_line_error(explain_cli(str(tmp_path / "nope"), "--input", str(new)))
    assert "run folder not found" in line and "nope" in line

    def error(*args: str) -> str:
        capsys.readouterr()
        assert tf("explain", str(text_run), *args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tuneforge: error: "), lines
        return lines[0]

    line = error("--input", str(tmp_path / "missing.csv"))
    assert "--input" in line and "missing.csv" in line
    line = error("-i", str(new), "-o", str(tmp_path / "page.txt"))
    assert "--output" in line and ".html" in line
    bad = tmp_path / "bad.csv"
    bad.write_text("words\nhello\n")
    line = error("-i", str(bad), "-o", str(tmp_path / "x.html"))
    assert "'text'" in line and "bad.csv" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # nothing written


def test_word_pieces_merge_for_wordpiece_and_byte_level_tokens() -> None:
    from tuneforge.plugins.text.explain import merge_pieces

    tokens = ["[CLS]", "un", "##believ", "##able", "refund", "[SEP]"]
    words = merge_pieces(tokens, np.array([0.0, 0.1, 0.2, 0.3, -0.5, 0.0]), [1, 0, 0, 0, 0, 1])
    assert [w for w, _, _ in words] == ["[CLS]", "unbelievable", "refund", "[SEP]"]
    assert words[1][1] == pytest.approx(0.6) and words[2][1] == pytest.approx(-0.5)
    tokens = ["<s>", "Ġun", "believ", "able", "Ġrefund", "</s>"]
    words = merge_pieces(tokens, np.array([0.0, 0.1, 0.2, 0.3, -0.5, 0.0]), [1, 0, 0, 0, 0, 1])
    assert [w for w, _, _ in words] == ["<s>", "unbelievable", "refund", "</s>"]


# -- image --------------------------------------------------------------------------------------


def test_image_grad_cam_maps_match_the_input_and_the_page_embeds_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_image import make_images, write_config

    make_images(tmp_path / "images", per_class=6)
    cfg = write_config(tmp_path / "config.yaml", trainer={"epochs": 1}, evaluation={"bootstrap": 0})
    assert tf("run", str(cfg)) == 0
    run = tmp_path / "runs" / "run"
    assert "grad-cam" in (run / "explanations" / "test.html").read_text(encoding="utf-8")
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "explanations/test.html" in report and "Grad-CAM of row" in report
    paths = sorted(str(p) for p in (tmp_path / "images" / "red").glob("*.png"))[:2]
    result = explain_in_process(run, pd.DataFrame({"image": paths}), rows=2)
    assert result.method == "grad-cam" and len(result.records) == 2
    for rec in result.records:
        cam = rec["map"]
        assert cam.shape == (32, 32)  # tokenizer.input_size: the image the model sees
        assert np.isfinite(cam).all() and cam.max() > cam.min()
    capsys.readouterr()
    assert tf("explain", str(run), "-i", str(tmp_path / "images" / "red"), "--rows", "1") == 0
    page = run / "explanations" / "red.html"
    assert str(page) in capsys.readouterr().out and "data:image/png;base64," in page.read_text(
        encoding="utf-8"
    )


# -- tabular ------------------------------------------------------------------------------------


def planted_table(n: int, problem: str, seed: int = 0) -> pd.DataFrame:
    """``signal`` decides the label (or the target); ``noise`` is independent of it."""
    rng = np.random.default_rng(seed)
    signal, noise = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"signal": signal, "noise": noise})
    if problem == "classification":
        frame["label"] = np.where(signal > 0, "yes", "no")
    else:
        frame["y"] = 3 * signal + rng.normal(scale=0.05, size=n)
    return frame


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_tabular_permutation_importance_ranks_the_planted_feature_first(
    tmp_path: Path, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_tabular import write_config

    planted_table(240, problem).to_csv(tmp_path / "data.csv", index=False)
    new = planted_table(120, problem, seed=5)
    new.to_csv(tmp_path / "new.csv", index=False)
    data = {"target": "y", "columns": {}}
    extra: dict = {"evaluation": {"bootstrap": 0}}
    if problem == "classification":
        data = {"label": "label", "target": None, "columns": {}}
        extra = {
            "task": "tabular-classification",
            "evaluation": {"bootstrap": 0, "explain_rows": 0},
        }
    cfg = write_config(tmp_path, data=data, trainer={"epochs": 8}, **extra)
    assert tf("run", str(cfg)) == 0
    run = tmp_path / "runs" / "run"
    # explain_rows 0 (classification) writes no test page; the default (regression) does
    assert (run / "explanations" / "test.html").is_file() == (problem == "regression")
    result = explain_in_process(run, new, seed=0)
    assert result.method == "permutation-importance"
    ranked = {r["feature"]: r for r in result.records}
    assert [r["feature"] for r in result.records][0] == "signal"
    assert ranked["signal"]["mean"] > ranked["noise"]["mean"] + 3 * ranked["noise"]["std"]
    assert ranked["signal"]["importances"].shape == (5,)  # n_repeats
    again = explain_in_process(run, new, seed=0)  # seeded: the same shuffles
    assert [r["mean"] for r in again.records] == [r["mean"] for r in result.records]
    capsys.readouterr()
    assert tf("explain", str(run), "-i", str(tmp_path / "new.csv")) == 0
    page = (run / "explanations" / "new.html").read_text(encoding="utf-8")
    assert (
        str(run / "explanations" / "new.html") in capsys.readouterr().out
        and "<svg" in page
        and "signal" in page
    )
    unlabelled = tmp_path / "unlabelled.csv"
    new.drop(columns=["label" if problem == "classification" else "y"]).to_csv(
        unlabelled, index=False
    )
    capsys.readouterr()
    assert tf("explain", str(run), "-i", str(unlabelled)) == 2
    line = capsys.readouterr().err.strip()
    assert "unlabelled.csv" in line and "label column" in line and "\n" not in line
    assert not (run / "explanations" / "unlabelled.html").exists()
    if problem == "regression":
        metrics = json.loads((run / "metrics.json").read_text())
        assert "test" in metrics  # the run itself completed with its test page
