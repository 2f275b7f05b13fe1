"""The small-data advisor (issue 17.3): few examples per class -> setfit, the embedding model
or LoRA, with the evidence; quiet on large classes and without a measured sentence encoder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_embeddings import as_sentence_encoder

from tuneforge.advice import RunRecord
from tuneforge.plugins.advisors import SmallData

from conftest import ok, run_cli


def record(counts: dict[str, int], baseline_val: float | None, model_val: float, **kw) -> RunRecord:
    details = {}
    if baseline_val is not None:
        details = {
            "embedding_baseline": {
                "val": {"accuracy": baseline_val, "f1_macro": baseline_val - 0.05},
                "test": {"accuracy": 0.99},  # never read: advisors judge on validation
            }
        }
    base = {
        "path": Path("runs/x"),
        "config": {"model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"}},
        "status": "completed",
        "error": "",
        "metrics": {
            "monitor": "val.accuracy",
            "val": {"accuracy": model_val, "f1_macro": model_val},
            "test_details": details,
        },
        "findings": [],
        "split": {"class_counts": {"train": counts, "val": {}, "test": {}}},
        "labels": {"inputs": {"text": "text"}},
        "fields": {"model": {"name", "checkpoint", "dropout", "peft"}},
        "modalities": {"text"},
    }
    base.update(kw)
    return RunRecord(**base)


def test_fires_on_small_classes_with_the_evidence() -> None:
    (d,) = SmallData().diagnose(record({"a": 12, "b": 30, "c": 200}, 0.71, 0.80))
    assert d.kind == "small-data" and d.severity == "warning"
    assert "the smallest, 'a', has 12 (threshold 50), the median 30 (threshold 100)" in d.evidence
    assert "scored val accuracy 0.7100 against the fine-tuned model's 0.8000" in d.evidence
    assert "0.99" not in d.evidence  # the test split is not evidence
    assert d.patch == {"model": {"name": "setfit", "checkpoint": "minilm-l6"}}
    assert "lora" in d.reasons["model"] and "freeze_body" in d.reasons["model"]


def test_proposes_the_embedding_model_when_the_baseline_beat_fine_tuning() -> None:
    (d,) = SmallData().diagnose(record({"a": 120, "b": 60, "c": 90}, 0.85, 0.80))
    assert "the median 90 (threshold 100)" in d.evidence
    assert d.patch == {"model": {"name": "setfit", "checkpoint": "minilm-l6", "freeze_body": True}}
    run = record({"a": 20, "b": 20}, 0.9, 0.8, config={"model": {"name": "setfit"}})
    (d,) = SmallData().diagnose(run)
    assert d.patch == {"model.freeze_body": True}


def test_quiet_on_large_classes_and_without_a_sentence_encoder() -> None:
    assert SmallData().diagnose(record({"a": 500, "b": 120, "c": 300}, 0.9, 0.8)) == []
    assert SmallData().diagnose(record({"a": 10, "b": 10}, None, 0.8)) == []  # no baseline
    assert SmallData().diagnose(record({"a": 10}, 0.9, 0.8)) == []  # one class
    custom = SmallData(SmallData.Config(min_class=5, median_class=8))
    assert custom.diagnose(record({"a": 10, "b": 12}, 0.9, 0.8)) == []


def test_lora_for_a_pretrained_image_model() -> None:
    image = {
        "config": {"model": {"name": "timm", "weights": "efficientnet-lite0"}},
        "modalities": {"image"},
        "fields": {"model": {"name", "weights", "peft"}},
    }
    (d,) = SmallData().diagnose(record({"a": 20, "b": 25}, None, 0.7, **image))
    assert d.patch == {"model.peft": {"method": "lora", "r": 8}}
    scratch = {**image, "config": {"model": {"name": "timm"}}}
    assert SmallData().diagnose(record({"a": 20, "b": 25}, None, 0.7, **scratch)) == []


def test_refine_prints_the_small_data_advice(project, tiny_models: dict[str, Path]) -> None:
    encoder = as_sentence_encoder(tiny_models["bert"], project.root / "tiny-st")
    cfg = project.config(model={"checkpoint": str(encoder)}, trainer={"epochs": 1})
    ok(run_cli("run", str(cfg), "-q"))
    run = project.root / "runs" / "run"
    counts = json.loads((run / "split.json").read_text())["class_counts"]["train"]
    assert min(counts.values()) < 50  # 240 generated rows: small classes
    out = ok(run_cli("refine", str(run)))
    assert "small-data (small-data): few training examples per class" in out
    assert "the embedding baseline (frozen embeddings + logistic regression) scored val" in out
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["name"] == "hf-sequence-classification"  # nothing applied
