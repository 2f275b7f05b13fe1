"""End-to-end fine-tunes of tiny random-init models on generated data (seconds each)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ok, run_cli
from tinymodels import make_texts, write_csv


def test_run_writes_a_complete_run_folder_and_predicts(project) -> None:
    out = ok(
        run_cli(
            "run",
            str(
                project.config(
                    augmenters=[{"name": "token-noise", "p": 0.3}],
                    preprocessors=["text-normalize"],
                    balancer="class-weights",
                )
            ),
        )
    )
    run = project.root / "runs" / "run"
    assert f"run folder: {run}" in out and "test: loss" in out
    assert {p.name for p in run.iterdir()} >= {
        "checkpoint",
        "config.yaml",
        "findings.json",
        "history.jsonl",
        "labels.json",
        "metrics.json",
        "predictions_test.csv",
        "run.json",
        "split.json",
    }
    preds = pd.read_csv(run / "predictions_test.csv")
    assert sorted(preds["row"]) == sorted(json.loads((run / "split.json").read_text())["test"])
    acc = (preds["y_true"] == preds["y_pred"]).mean()
    assert acc == pytest.approx(json.loads((run / "metrics.json").read_text())["test"]["accuracy"])
    assert [p.name for p in (project.root / "runs").iterdir()] == ["run"]  # no partial folder left
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["accuracy"] >= test["majority_baseline_accuracy"] + 0.3, test
    assert metrics["monitor"] == "val.accuracy" and 1 <= metrics["best_epoch"] <= 8
    split = json.loads((run / "split.json").read_text())
    parts = [set(split[s]) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 240
    assert sum(split["class_counts"]["test"].values()) == len(split["test"])
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    val_acc = [h for h in history if h["split"] == "val" and h["name"] == "accuracy"]
    assert [h["epoch"] for h in val_acc] == list(range(1, 9))
    assert any(h["split"] == "train" and h["name"] == "loss" and h["step"] for h in history)
    assert {h["name"] for h in history if h["split"] == "test"} >= {"accuracy", "f1_macro"}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        cfg["model"]["name"] == "hf-sequence-classification"
        and Path(cfg["data"]["path"]).is_absolute()
    )
    assert cfg["validators"][0] == "schema"  # task defaults are written out
    assert json.loads((run / "labels.json").read_text())["classes"] == [
        "billing",
        "shipping",
        "technical",
    ]
    # The checkpoint is a plain Hugging Face folder.
    ckpt = run / "checkpoint"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(ckpt)
    assert model.config.id2label == {0: "billing", 1: "shipping", 2: "technical"}
    AutoTokenizer.from_pretrained(ckpt)
    # Predict on new rows (no label column).
    new = project.root / "new.csv"
    rows = make_texts(40, seed=99)
    pd.DataFrame({"text": [t for t, _ in rows]}).to_csv(new, index=False)
    out = ok(
        run_cli(
            "predict", str(run), "--input", str(new), "--output", str(project.root / "pred.csv")
        )
    )
    pred = pd.read_csv(project.root / "pred.csv")
    assert list(pred.columns) == [
        "text",
        "prediction",
        "prob_billing",
        "prob_shipping",
        "prob_technical",
    ]
    assert (pred["prediction"] == [lab for _, lab in rows]).mean() >= 0.8
    assert pred.filter(like="prob_").sum(axis=1).round(4).eq(1).all()
    # Default output location.
    ok(run_cli("predict", str(run), "--input", str(new)))
    assert (run / "predictions" / "new.csv").is_file()


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_other_model_families(project, tiny_models, family: str) -> None:
    cfg = project.config(
        model={"name": "hf-sequence-classification", "checkpoint": str(tiny_models[family])}
    )
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["accuracy"] > test["majority_baseline_accuracy"] + 0.2
    saved = json.loads((run / "checkpoint" / "config.json").read_text())
    assert saved["pad_token_id"] is not None  # GPT-2 has no pad token of its own


def test_existing_run_folder_is_refused_unless_overwrite(project) -> None:
    cfg = project.config(trainer={"epochs": 1})
    ok(run_cli("run", str(cfg)))
    run = project.root / "runs" / "run"
    before = (run / "run.json").read_text()
    proc = run_cli("run", str(cfg))
    assert (
        proc.returncode == 2
        and "run folder already exists" in proc.stderr
        and "--overwrite" in proc.stderr
    )
    assert (run / "run.json").read_text() == before
    ok(run_cli("run", str(cfg), "--overwrite"))
    assert (run / "run.json").read_text() != before


def test_a_run_that_crashes_in_training_keeps_its_log_beside_the_final_name(project) -> None:
    (project.root / "explode.py").write_text(
        textwrap.dedent("""
        from tuneforge import hookimpl

        @hookimpl
        def on_epoch_end(run, epoch, metrics):
            if epoch == 2:
                raise RuntimeError("disk full")
    """)
    )
    cfg = project.config(plugins={"local": ["explode.py"]}, trainer={"epochs": 3})
    proc = run_cli("run", str(cfg))
    # A plugin's exception is the plugin's error (exit 2, named), not tuneforge's.
    assert proc.returncode == 2, proc.stderr
    assert "plugin 'explode' failed in on_epoch_end: RuntimeError: disk full" in proc.stderr
    runs = project.root / "runs"
    [kept] = list(runs.iterdir())
    assert kept.name.startswith("run.failed-") and not (runs / "run").exists()
    assert f"what it logged is kept in {kept}" in proc.stdout
    status = json.loads((kept / "run.json").read_text())
    assert status["status"] == "failed"
    assert status["error"].endswith("failed in on_epoch_end: RuntimeError: disk full"), status
    history = [json.loads(line) for line in (kept / "history.jsonl").read_text().splitlines()]
    assert {h["epoch"] for h in history if h["split"] == "val"} == {1, 2}
    # `tuneforge runs` shows it as failed; `tuneforge report` refuses it.
    assert "failed" in run_cli("runs", str(runs)).stdout
    assert run_cli("report", str(kept)).returncode == 2


def test_a_data_error_leaves_nothing(project) -> None:
    write_csv(project.root / "blank.csv", [("   ", "a"), ("  ", "b")])
    proc = run_cli("run", str(project.config(data={"path": "blank.csv"})))
    assert proc.returncode == 2
    assert not (project.root / "runs").exists() or list((project.root / "runs").iterdir()) == []


def test_lifecycle_hooks_see_the_run(project) -> None:
    (project.root / "watch.py").write_text(
        textwrap.dedent("""
        import json, os
        from tuneforge import hookimpl
        LOG = os.path.join(os.path.dirname(__file__), "events.jsonl")

        def emit(**kw):
            with open(LOG, "a") as fh:
                fh.write(json.dumps(kw) + "\\n")

        @hookimpl
        def on_run_start(run):
            emit(event="start", sizes=run.split_sizes, classes=run.classes)

        @hookimpl
        def on_epoch_end(run, epoch, metrics):
            emit(event="epoch", epoch=epoch, acc=metrics["val.accuracy"])

        @hookimpl
        def on_evaluate(run, split, metrics):
            emit(event="evaluate", split=split)

        @hookimpl
        def on_run_end(run, metrics, status):
            emit(event="end", status=status, acc=metrics.get("accuracy"))
    """)
    )
    ok(
        run_cli(
            "run",
            str(
                project.config(
                    plugins={"local": ["watch.py"]}, trainer={"epochs": 3, "schedule": "cosine"}
                )
            ),
        )
    )
    events = [json.loads(x) for x in (project.root / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and sum(events[0]["sizes"].values()) == 240
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
    assert [e["split"] for e in events if e["event"] == "evaluate"] == ["val", "val", "val", "test"]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "completed"


def test_early_stopping_and_best_checkpoint(project) -> None:
    cfg = project.config(
        trainer={
            "epochs": 10,
            "lr": 1e-9,
            "monitor": "accuracy",
            "early_stopping_patience": 2,
            "warmup_ratio": 0.0,
        }
    )
    out = ok(run_cli("run", str(cfg)))
    metrics = json.loads((project.root / "runs" / "run" / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["epochs_run"] == 3 and metrics["best_epoch"] == 1
    assert "early stopping: val.accuracy did not improve for 2 epochs" in out


def test_grid_search_study(project) -> None:
    cfg = project.config(tuner={"name": "grid", "space": {"trainer.lr": {"choice": [1e-6, 3e-3]}}})
    out = ok(run_cli("run", str(cfg)))
    study = project.root / "runs" / "run"
    trials = pd.read_csv(study / "trials.csv")
    assert trials["params.trainer.lr"].tolist() == [1e-6, 3e-3]
    assert trials["state"].tolist() == ["complete", "complete"]
    assert trials["val.accuracy"].iloc[1] > trials["val.accuracy"].iloc[0]
    best = yaml.safe_load((study / "best_config.yaml").read_text())
    assert best["trainer"]["lr"] == 3e-3 and "tuner" not in best
    assert best["output"]["dir"] == str(project.root / "runs" / "run-best")
    proc = run_cli("validate", str(study / "best_config.yaml"), cwd=study)  # runnable as it is
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["study"]["best_trial"] == 1 and "accuracy" in metrics["test"]
    assert "best trial 1" in out
    for n in (0, 1):
        trial = study / "trials" / f"trial_{n:03d}"
        assert (trial / "checkpoint" / "model.safetensors").is_file()
        assert "test" not in json.loads((trial / "metrics.json").read_text())  # test is used once
    # The study folder predicts like a run folder.
    ok(
        run_cli(
            "predict",
            str(study),
            "--input",
            str(project.data),
            "--output",
            str(project.root / "p.jsonl"),
        )
    )
    assert len(pd.read_json(project.root / "p.jsonl", lines=True)) == 240


def test_random_search_needs_a_space_and_grid_needs_choices(project) -> None:
    proc = run_cli("run", str(project.config(tuner={"name": "random", "trials": 2})))
    assert proc.returncode == 2 and "tuner.space: empty" in proc.stderr
    proc = run_cli(
        "run",
        str(
            project.config(tuner={"name": "grid", "space": {"trainer.lr": {"uniform": [0.1, 0.2]}}})
        ),
    )
    assert proc.returncode == 2 and "grid search needs choice or int entries" in proc.stderr
    assert not (project.root / "runs").exists() or list((project.root / "runs").iterdir()) == []


def test_predict_bad_inputs(project, tmp_path: Path) -> None:
    proc = run_cli("predict", str(tmp_path), "--input", str(project.data))
    assert proc.returncode == 2 and "is not a tuneforge run folder (no config.yaml)" in proc.stderr
    ok(run_cli("run", str(project.config(trainer={"epochs": 1}))))
    run = project.root / "runs" / "run"
    write_csv(tmp_path / "wrong.csv", [("a", "b")], header=("body", "x"))
    proc = run_cli("predict", str(run), "--input", str(tmp_path / "wrong.csv"))
    assert (
        proc.returncode == 2 and "column 'text' (from data.columns.text) not found" in proc.stderr
    )
    proc = run_cli("predict", str(run), "--input", str(tmp_path / "absent.csv"))
    assert proc.returncode == 2 and "input file not found" in proc.stderr
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated checkpoint
    proc = run_cli(
        "predict", str(run), "--input", str(project.data), "--output", str(tmp_path / "o.csv")
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.startswith("tuneforge: error: checkpoint ")
        and len(proc.stderr.strip().splitlines()) == 1
    )
    assert not (tmp_path / "o.csv").exists()


def test_search_space_keys_are_checked_before_anything_runs(project) -> None:
    proc = run_cli(
        "run",
        str(project.config(tuner={"name": "random", "space": {"trainer.lrr": {"choice": [1, 2]}}})),
    )
    assert (
        proc.returncode == 2
        and "tuner.space.trainer.lrr" in proc.stderr
        and "no such key" in proc.stderr
    )
    proc = run_cli(
        "run",
        str(
            project.config(
                tuner={"name": "random", "space": {"trainer.epochs": {"choice": [0, 2]}}}
            )
        ),
    )
    assert (
        proc.returncode == 2 and "tuner.space.trainer.epochs: value 0 is not valid" in proc.stderr
    )
    assert not (project.root / "runs").exists() or list((project.root / "runs").iterdir()) == []


def test_predict_from_elsewhere_reloads_relative_local_plugins(project, tmp_path: Path) -> None:
    (project.root / "hooks").mkdir()
    (project.root / "hooks" / "extra.py").write_text(
        textwrap.dedent("""
        from tuneforge import hookimpl
        from tuneforge.components import Metric

        class Half(Metric):
            def __call__(self, y_true, y_pred, y_score):
                return 0.5

        @hookimpl
        def register_metrics(register):
            register("half", Half)
    """)
    )
    cfg = project.config(
        plugins={"local": ["hooks/extra.py"]}, metrics=["accuracy", "half"], trainer={"epochs": 1}
    )
    ok(run_cli("run", str(cfg)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = project.root / "runs" / "run"
    ok(
        run_cli(
            "predict", str(run), "--input", str(project.data), "--output", "p.csv", cwd=elsewhere
        )
    )
    assert (elsewhere / "p.csv").is_file()


def test_same_seed_same_result(project) -> None:
    cfg = project.config(
        trainer={"epochs": 3}, augmenters=[{"name": "token-noise", "p": 0.5}], balancer="oversample"
    )
    results = []
    for name in ("a", "b"):
        ok(run_cli("run", str(cfg), "--set", f"output.dir={project.root / name}"))
        results.append(json.loads((project.root / name / "metrics.json").read_text()))
    assert results[0]["test"] == results[1]["test"] and results[0]["val"] == results[1]["val"]
