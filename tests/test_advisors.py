"""Advisors and `tuneforge refine`: diagnoses from run histories, patches, rounds."""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path

import pytest
import yaml

from tuneforge.advice import RunRecord, merge_patches, next_round_dir
from tuneforge.components import FindingKind
from tuneforge.plugins.advisors import (
    DataProblems,
    Divergence,
    ImbalanceHarm,
    Overfitting,
    Underfitting,
)

from conftest import one_line_error, run_cli
from tinymodels import make_texts, write_csv


def record(epochs: list[dict[str, float]], **kw) -> RunRecord:
    base = {
        "path": Path("runs/x"),
        "config": {"model": {"name": "hf-sequence-classification"}, "trainer": {"lr": 1e-3}},
        "status": "completed",
        "error": "",
        "metrics": {"monitor": "val.accuracy", "monitor_mode": "max", "best_epoch": 1},
        "findings": [],
        "split": {},
        "labels": {"inputs": {"text": "text"}},
        "epochs": epochs,
        "fields": {"model": {"name", "checkpoint", "dropout"}, "trainer": {"lr", "l1"}},
        "modalities": {"text"},
        "augmenters": ["token-noise", "typo"],
    }
    base.update(kw)
    return RunRecord(**base)


def curve(train: list[float], val: list[float], acc: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1.0, "train.loss": t, "val.loss": v, "val.accuracy": a}
        for i, (t, v, a) in enumerate(zip(train, val, acc, strict=True))
    ]


def test_overfitting_is_found_with_evidence_and_a_regularising_patch() -> None:
    rec = record(
        curve([0.9, 0.5, 0.2, 0.05, 0.01], [0.7, 0.45, 0.5, 0.7, 0.9], [0.6, 0.8, 0.8, 0.78, 0.77])
    )
    (d,) = Overfitting().diagnose(rec)
    assert d.kind == "overfitting"
    assert "val.loss rose from 0.4500 (epoch 2) to 0.9000 (epoch 5)" in d.evidence
    assert "gap grew" in d.evidence
    assert d.patch["model.dropout"] == 0.2 and d.patch["trainer.weight_decay"] == 0.05
    assert d.patch["trainer.l1"] == 1e-5 and d.patch["trainer.early_stopping_patience"] == 3
    assert d.patch["augmenters"] == [{"name": "token-noise", "p": 0.3}]
    assert set(d.reasons) == set(d.patch)
    # Pretrained weights get no L1 penalty (it would pull them to zero); a long run gets a
    # patience in proportion to its epochs.
    tuned = {
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "trainer": {"lr": 1e-3, "epochs": 30},
    }
    (d,) = Overfitting().diagnose(record(rec.epochs, config=tuned))
    assert "trainer.l1" not in d.patch and d.patch["trainer.early_stopping_patience"] == 10
    # Fine-tuning a pretrained text model: a quarter of the learning rate, decaying if it was
    # constant, and no word-noise augmentation (it hurts pretrained transformers).
    assert d.patch["trainer.lr"] == 2.5e-4 and "augmenters" not in d.patch
    assert "trainer.schedule" not in d.patch  # linear by default already
    tuned["trainer"].update(lr=2e-4, schedule="constant")
    (d,) = Overfitting().diagnose(record(rec.epochs, config=tuned))
    assert d.patch["trainer.lr"] == 5e-5 and d.patch["trainer.schedule"] == "linear"
    assert set(d.reasons) == set(d.patch)
    tuned["trainer"]["lr"] = 1e-5  # already small: left alone
    (d,) = Overfitting().diagnose(record(rec.epochs, config=tuned))
    assert "trainer.lr" not in d.patch
    # A healthy curve (both losses fall) fires nothing.
    assert (
        Overfitting().diagnose(
            rec.__class__(
                **{
                    **rec.__dict__,
                    "epochs": curve([0.9, 0.5, 0.3], [0.8, 0.5, 0.4], [0.6, 0.7, 0.8]),
                }
            )
        )
        == []
    )


def test_a_tabular_run_gets_the_tabular_augmenter_and_an_l1_penalty() -> None:
    from tuneforge.advice import describe_components
    from tuneforge.pipeline import make_plugin_manager

    rec = record(
        curve([0.9, 0.5, 0.2, 0.05, 0.01], [0.7, 0.45, 0.5, 0.7, 0.9], [0.6, 0.8, 0.8, 0.78, 0.77]),
        config={"task": "tabular-regression", "model": {"name": "mlp", "dropout": 0.0}},
        labels={
            "inputs": {"rooms": "rooms", "income": "income"},
            "modalities": {"rooms": "tabular", "income": "tabular"},
        },
        fields={},
        modalities=set(),
        augmenters=[],
    )
    describe_components(rec, make_plugin_manager(None, None))
    assert rec.modalities == {"tabular"}
    assert "gaussian-noise" in rec.augmenters and "token-noise" not in rec.augmenters
    (d,) = Overfitting().diagnose(rec)
    assert d.patch["augmenters"] == [{"name": "gaussian-noise"}]
    assert d.patch["model.dropout"] == 0.2 and d.patch["trainer.l1"] == 1e-5  # from scratch


def test_overfitting_strengthens_existing_augmentation_and_uses_the_models_dropout_key() -> None:
    rec = record(
        curve([0.9, 0.4, 0.1, 0.02], [0.6, 0.4, 0.6, 0.9], [0.7, 0.8, 0.8, 0.75]),
        config={
            "model": {"name": "timm", "drop_rate": 0.3},
            "augmenters": [{"name": "typo", "p": 0.2}],
        },
        fields={"model": {"name", "drop_rate"}, "trainer": {"lr"}},
    )
    (d,) = Overfitting().diagnose(rec)
    assert d.patch["model.drop_rate"] == 0.4 and "trainer.l1" not in d.patch
    assert d.patch["augmenters"] == [{"name": "typo", "p": 0.3}]


def test_underfitting_divergence_imbalance_and_data_advisors() -> None:
    flat = record(curve([1.10, 1.08, 1.07], [1.1, 1.1, 1.09], [0.34, 0.35, 0.35]))
    (d,) = Underfitting().diagnose(flat)
    assert d.kind == "underfitting" and d.patch == {"trainer.lr": 0.003, "trainer.epochs": 6}
    climbing = record(
        curve([0.9, 0.5, 0.3, 0.2], [0.8, 0.6, 0.5, 0.4], [0.6, 0.7, 0.75, 0.8]),
        metrics={"monitor": "val.accuracy", "monitor_mode": "max", "best_epoch": 4},
        config={"trainer": {"epochs": 4}},
    )
    (d,) = Underfitting().diagnose(climbing)
    assert d.patch == {"trainer.epochs": 8} and "still improving" in d.evidence

    nan = record(curve([0.9, math.nan], [0.8, math.nan], [0.5, 0.5]))
    (d,) = Divergence().diagnose(nan)
    assert d.severity == "error" and d.patch["trainer.lr"] == 1e-4
    steps = [{"step": float(s), "train.loss": 0.5} for s in range(1, 20)]
    steps[15]["train.loss"] = 4.0
    (d,) = Divergence().diagnose(record([], steps=steps))
    assert "spiked to 4.0000 at step 16" in d.evidence and d.patch["trainer.lr"] == 0.000333

    skewed = record(
        [],
        metrics={"val": {"accuracy": 0.9, "balanced_accuracy": 0.7}},
        split={"class_counts": {"train": {"ham": 900, "spam": 100}}},
    )
    (d,) = ImbalanceHarm().diagnose(skewed)
    assert d.patch == {"balancer": "class-weights"} and "'spam': 100 rows" in d.evidence

    noisy = record(
        [],
        config={"validators": ["schema", {"name": "label-noise", "folds": 3}]},
        findings=[
            {"kind": "label-issue", "count": 7, "action": "reported", "validator": "label-noise"},
            {"kind": "leakage", "severity": "error", "message": "examples shared"},
        ],
    )
    found = DataProblems().diagnose(noisy)
    assert found[0].patch == {
        "validators[1]": {"name": "label-noise", "folds": 3, "policy": "down-weight"}
    }
    assert found[1].patch == {"split.group_duplicates": True}
    patch, reasons = merge_patches(found + [found[1]])
    assert list(patch) == ["validators[1]", "split.group_duplicates"]


def test_data_problems_fires_on_the_label_noise_validators_real_findings(project) -> None:
    # Generated texts with 10% of the labels flipped: the real label-noise validator flags
    # rows, the run records its finding, and refine's data-problems advisor reads that finding.
    rng = random.Random(3)
    rows = make_texts(240, seed=1)
    classes = sorted({y for _, y in rows})
    for i in rng.sample(range(len(rows)), 24):
        text, label = rows[i]
        rows[i] = (text, rng.choice([c for c in classes if c != label]))
    write_csv(project.root / "data.csv", rows)
    noise = {"name": "label-noise", "folds": 3, "backend": "tuneforge"}
    cfg = project.config(validators=["schema", noise], trainer={"epochs": 1})
    assert run_cli("run", str(cfg), "-q").returncode == 0
    run = project.root / "runs" / "run"
    findings = json.loads((run / "findings.json").read_text())["findings"]
    [found] = [f for f in findings if f["count"]]
    assert found["kind"] == FindingKind.LABEL_ISSUE == "label-issue"
    assert found["validator"] == "label-noise" and found["action"] == "reported"
    proc = run_cli("refine", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "label-noise" in proc.stdout and "rows look mislabelled" in proc.stdout
    assert "down-weight" in proc.stdout

    # The same records, read back, give the patch that switches the validator to down-weight.
    (d,) = DataProblems().diagnose(
        record([], config={"validators": ["schema", noise]}, findings=[found])
    )
    assert d.patch == {"validators[1]": {**noise, "policy": "down-weight"}}


def test_next_round_folder_names(tmp_path: Path) -> None:
    assert next_round_dir(tmp_path / "run", 2).name == "run-r2"
    assert next_round_dir(tmp_path / "run-r2", 3).name == "run-r3"
    (tmp_path / "run-r2").mkdir()
    assert next_round_dir(tmp_path / "run", 2).name == "run-r2.2"


def test_refine_diagnoses_and_applies_rounds_end_to_end(project) -> None:
    # A learning rate far too small: the loss barely moves, so the underfitting advisor fires.
    cfg = project.config(trainer={"epochs": 2, "lr": 1e-7, "warmup_ratio": 0.0})
    assert run_cli("run", str(cfg), "-q").returncode == 0
    run = project.root / "runs" / "run"
    proc = run_cli("refine", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "[warning] underfitting (underfitting): train.loss went only from" in proc.stdout
    assert "trainer.lr: 1e-07 -> 3e-07" in proc.stdout and "--apply" in proc.stdout
    assert not (project.root / "runs" / "run-r2").exists()  # nothing runs without --apply

    proc = run_cli("refine", str(run), "--apply", "--rounds", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    r2 = project.root / "runs" / "run-r2"
    resolved = yaml.safe_load((r2 / "config.yaml").read_text())
    assert resolved["trainer"]["lr"] == 3e-7 and resolved["trainer"]["epochs"] == 4
    refine = json.loads((r2 / "refine.json").read_text())
    assert refine["previous"] == str(run) and refine["diagnoses"][0]["kind"] == "underfitting"
    table = (r2 / "refine.csv").read_text().splitlines()
    assert table[0].startswith("round,run,val.accuracy,test.accuracy,changes") and len(table) == 3
    assert "rounds:" in proc.stdout


def test_refine_bad_input(project, tmp_path: Path) -> None:
    line = one_line_error(run_cli("refine", str(tmp_path / "nope")))
    assert "run folder not found" in line
    partial = tmp_path / ".run.partial-123"
    partial.mkdir()
    line = one_line_error(run_cli("refine", str(partial)))
    assert "never finished" in line
    line = one_line_error(run_cli("refine", str(tmp_path / "run")))
    assert "only its partial folder .run.partial-123 exists" in line
    done = tmp_path / "half"
    done.mkdir()
    (done / "run.json").write_text('{"status": "completed"}')
    line = one_line_error(run_cli("refine", str(done)))
    assert "config.yaml is missing" in line
    line = one_line_error(run_cli("refine", str(done), "--rounds", "0"))
    assert "--rounds must be at least 1" in line


def test_a_third_party_advisor_joins_refine(project, tmp_path: Path) -> None:
    plugin = tmp_path / "my_advisor.py"
    plugin.write_text(
        textwrap.dedent("""
        from tuneforge import hookimpl
        from tuneforge.components import Advisor, Diagnosis

        class SmallBatch(Advisor):
            def diagnose(self, run):
                bs = run.config["trainer"]["batch_size"]
                return [Diagnosis("batch", f"batch size {bs} is small", {"trainer.batch_size": bs * 2},
                                  {"trainer.batch_size": "steadier gradients"})]

        @hookimpl
        def register_advisors(register):
            register("small-batch", SmallBatch)
        """)
    )
    assert run_cli("run", str(project.config(trainer={"epochs": 1})), "-q").returncode == 0
    proc = run_cli("refine", str(project.root / "runs" / "run"), "--plugin", str(plugin))
    assert proc.returncode == 0, proc.stderr
    assert "batch (small-batch): batch size 16 is small" in proc.stdout
    assert "trainer.batch_size: 16 -> 32  (batch: steadier gradients)" in proc.stdout
    proc = run_cli("components", "advisors")
    assert proc.returncode == 0 and "overfitting" in proc.stdout


@pytest.mark.parametrize("status", ["trained", "running"])
def test_refine_refuses_a_run_that_is_not_finished(tmp_path: Path, status: str) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": status}))
    line = one_line_error(run_cli("refine", str(folder)))
    assert f"run status is {status!r}" in line
