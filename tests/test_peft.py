"""model.peft (LoRA through peft), model.reinit_layers, and the trainable-parameter and
peak-memory figures of every run, on the tiny local checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}


def _run(project, name: str, model: dict, family_path: Path, **sections) -> Path:
    out = project.root / "runs" / name
    cfg = project.config(
        f"{name}.yaml",
        model={"checkpoint": str(family_path), **model},
        trainer={"epochs": 2, "lr": 5e-3, **sections.pop("trainer", {})},
        output={"dir": str(out)},
        **sections,
    )
    ok(run_cli("run", str(cfg)))
    return out


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _logits(model, folder: Path, texts: list[str]) -> torch.Tensor:
    """``model``'s logits of ``texts``, tokenized by the tokenizer in ``folder``."""
    enc = _tokenizer(folder)(texts, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.parametrize(
    ("family", "targets"),
    [("bert", {"query", "key", "value"}), ("gpt2", {"c_attn"}), ("roberta", {"query", "value"})],
)
def test_lora_adapts_the_attention_and_merges_into_a_plain_checkpoint(
    tmp_path: Path, tiny_models, family, targets
) -> None:
    from transformers import AutoModelForSequenceClassification

    from tuneforge.components import ModelSpec
    from tuneforge.plugins.text.hf import HFSequenceClassification

    builder = HFSequenceClassification(
        HFSequenceClassification.Config(checkpoint=str(tiny_models[family]), peft=LORA)
    )
    tok = _tokenizer(tiny_models[family])  # GPT-2 pads with its eos token
    model = builder.build(ModelSpec("classification", 3, ["a", "b", "c"], {"tokenizer": tok}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n < sum(p.numel() for p in model.parameters()) / 3
    adapted = {
        name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in trainable if "lora_A" in name
    }
    assert targets <= adapted
    assert any("modules_to_save" in name for name in trainable)  # the head trains fully
    with torch.no_grad():  # a trained adapter is not zero
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(0.05 * torch.randn_like(p))
    texts = [t for t, _ in make_texts(6, seed=4)]
    expected = _logits(model, tiny_models[family], texts)
    builder.save(model, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora_" in k or "modules_to_save" in k or "base_model" in k]
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
    torch.testing.assert_close(
        _logits(plain, tiny_models[family], texts), expected, rtol=1e-4, atol=1e-5
    )


def test_merged_and_adapter_checkpoints_load_and_predict_alike(project, tiny_models) -> None:
    from transformers import AutoModelForSequenceClassification

    from tuneforge.plugins.text.hf import HFSequenceClassification

    merged = _run(project, "merged", {"peft": LORA}, tiny_models["bert"])
    adapter = _run(
        project, "adapter", {"peft": {**LORA, "save_adapter": True}}, tiny_models["bert"]
    )
    info = json.loads((merged / "run.json").read_text())
    assert 0 < info["trainable_parameters"] < info["parameters"]
    assert info["trainable_share"] == pytest.approx(
        info["trainable_parameters"] / info["parameters"]
    )
    assert info["peak_rss_mb"] > 50
    report = (merged / "report.html").read_text()
    assert "trainable parameters" in report and "peak memory" in report

    a_ckpt, m_ckpt = adapter / "checkpoint", merged / "checkpoint"
    assert not (m_ckpt / "adapter_config.json").exists()
    assert not (a_ckpt / "model.safetensors").exists()
    a_size = (a_ckpt / "adapter_model.safetensors").stat().st_size
    assert a_size < 0.3 * (m_ckpt / "model.safetensors").stat().st_size
    ref = json.loads((a_ckpt / "tuneforge_adapter.json").read_text())
    assert ref["checkpoint"] == str(tiny_models["bert"])

    # The same seed trains the same weights: the adapter merged at load equals the merged save.
    texts = [t for t, _ in make_texts(12, seed=3)]
    builder = HFSequenceClassification(HFSequenceClassification.Config(checkpoint="minilm-l6"))
    m_logits = _logits(builder.load(m_ckpt), m_ckpt, texts)
    torch.testing.assert_close(_logits(builder.load(a_ckpt), a_ckpt, texts), m_logits)
    plain = AutoModelForSequenceClassification.from_pretrained(str(m_ckpt))
    torch.testing.assert_close(_logits(plain, m_ckpt, texts), m_logits)

    write_csv(project.root / "new.csv", [(t, "") for t in texts])
    outs = []
    for run in (merged, adapter):
        out = project.root / f"pred-{run.name}.csv"
        ok(run_cli("predict", str(run), "--input", str(project.root / "new.csv"), "-o", str(out)))
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1], rtol=1e-4)
    column = [c for c in outs[0].columns if c.startswith("pred")][0]
    labels = [plain.config.id2label[i] for i in m_logits.argmax(-1).tolist()]
    assert outs[0][column].tolist() == labels


def test_a_peft_model_resumes_from_a_training_state_checkpoint(tmp_path: Path, tiny_models) -> None:
    """Trainer.fit with the builder's peft model: resuming from a mid-run checkpoint ends with
    the uninterrupted run's weights (adapter and head), bit for bit."""
    from tuneforge.components import ModelSpec
    from tuneforge.config import TrainerConfig
    from tuneforge.console import Console
    from tuneforge.plugins.text.hf import HFSequenceClassification
    from tuneforge.trainer import FitHooks, StateOptions, Trainer

    class Rows(torch.utils.data.Dataset):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(5, 30, (n, 8), generator=g)
            self.y = torch.randint(0, 3, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.ids[i], "labels": self.y[i]}

    def collate(rows: list[dict]) -> dict:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def fit(state_dir: Path, resume: Path | None = None) -> list[torch.Tensor]:
        cfg = TrainerConfig(
            epochs=2,
            batch_size=8,
            lr=1e-2,
            device="cpu",
            precision="fp32",
            num_workers=0,
            early_stopping_patience=None,
            log_every_n_steps=1,
            checkpoint_every_n_steps=2,
            keep_checkpoints=100,
        )
        builder = HFSequenceClassification(
            HFSequenceClassification.Config(
                checkpoint=str(tiny_models["bert"]), peft={"r": 2, "dropout": 0.0}
            )
        )
        model = builder.build(ModelSpec("classification", 3, ["a", "b", "c"], {}))
        trainer = Trainer(cfg, Console("quiet"))
        hooks = FitHooks(
            evaluate=lambda logits, labels: {
                "loss": float(torch.nn.functional.cross_entropy(logits, labels))
            },
            save_best=lambda m: None,
        )
        trainer.fit(
            model,
            Rows(32, 1),
            Rows(16, 2),
            collate,
            torch.nn.CrossEntropyLoss(),
            hooks,
            monitor="loss",
            mode="min",
            state=StateOptions(state_dir=state_dir, resume=resume),
        )
        unwrapped = trainer.accelerator.unwrap_model(model)
        return [p.detach().clone() for p in unwrapped.parameters() if p.requires_grad]

    ref = fit(tmp_path / "ref")
    checkpoints = sorted((tmp_path / "ref").glob("step-*"))
    assert len(checkpoints) >= 3
    resumed = fit(tmp_path / "again", resume=checkpoints[1])  # mid-run (step 4 of 8)
    assert len(resumed) == len(ref)
    for a, b in zip(resumed, ref, strict=True):
        assert torch.equal(a, b)


def test_a_tuner_searches_the_lora_rank(project, tiny_models) -> None:
    tuner = {"name": "grid", "space": {"model.peft.r": {"choice": [2, 4]}}}
    cfg = project.config(
        model={"peft": {"method": "lora"}},
        trainer={"epochs": 1},
        tuner=tuner,
    )
    ok(run_cli("run", str(cfg)))
    study = project.root / "runs" / "run"
    trials = pd.read_csv(study / "trials.csv")
    assert sorted(trials["params.model.peft.r"].tolist()) == [2, 4]
    counts = {}
    for folder in sorted((study / "trials").iterdir()):
        info = json.loads((folder / "run.json").read_text())
        counts[info["params"]["model.peft.r"]] = info["trainable_parameters"]
    assert counts[2] < counts[4]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"peft": {"method": "ia3"}}, "model.peft.method"),
        ({"peft": {"r": 0}}, "model.peft.r"),
        ({"peft": {"alpha": -1}}, "model.peft.alpha"),
        ({"peft": {"rank": 4}}, "model.peft"),
        ({"peft": {"target_modules": ["nonexistent"]}}, "model.peft.target_modules"),
        ({"reinit_layers": 3}, "model.reinit_layers"),  # the tiny BERT has 2 layers
        ({"reinit_layers": -1}, "model.reinit_layers"),
    ],
)
def test_bad_peft_and_reinit_configs_are_one_line_errors(project, model, expected) -> None:
    line = one_line_error(run_cli("run", str(project.config(model=model))))
    assert expected in line, line
    assert not (project.root / "runs").exists() or not any((project.root / "runs").iterdir())


def test_reinit_layers_changes_exactly_the_top_layers(tiny_models) -> None:
    from tuneforge.components import ModelSpec
    from tuneforge.plugins.text.hf import HFSequenceClassification

    spec = ModelSpec("classification", 3, ["a", "b", "c"], {})

    def build(n: int) -> dict[str, torch.Tensor]:
        cfg = HFSequenceClassification.Config(checkpoint=str(tiny_models["bert"]), reinit_layers=n)
        torch.manual_seed(0)  # the same new head in both
        model = HFSequenceClassification(cfg).build(spec)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain, top = build(0), build(1)
    changed = {k for k in plain if not torch.equal(plain[k], top[k])}
    assert changed, "nothing was re-initialised"
    assert all(k.startswith("bert.encoder.layer.1.") for k in changed), sorted(changed)
    # every matrix of the top layer is new (its LayerNorms were at their init already)
    top_matrices = {
        k for k in plain if k.startswith("bert.encoder.layer.1.") and plain[k].ndim == 2
    }
    assert top_matrices and top_matrices <= changed


def test_timm_vit_lora_and_reinit(tmp_path: Path) -> None:
    from tuneforge.components import ModelSpec
    from tuneforge.errors import ConfigError
    from tuneforge.plugins.image.timm_model import TimmModel

    spec = ModelSpec("classification", 3, ["0", "1", "2"], {"channels": 3})
    builder = TimmModel(TimmModel.Config(architecture="test_vit", peft={"r": 2}))
    wrapper = builder.build(spec)
    n = sum(p.numel() for p in wrapper.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapper.parameters())
    assert 0 < n < total / 2
    assert any("lora_A" in k for k, _ in wrapper.named_parameters())
    with torch.no_grad():  # a trained adapter is not zero
        for name, p in wrapper.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    x = torch.randn(2, 3, *wrapper.data_config["input_size"][1:])
    wrapper.eval()
    with torch.no_grad():
        before = wrapper(x)
    builder.save(wrapper, tmp_path)
    loaded = builder.load(tmp_path)  # merged weights in timm's own format
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in loaded.state_dict())

    with pytest.raises(ConfigError, match=r"model\.peft\.target_modules"):
        TimmModel(TimmModel.Config(architecture="test_efficientnet", peft={})).build(spec)
    with pytest.raises(ConfigError, match=r"model\.reinit_layers"):
        TimmModel(TimmModel.Config(architecture="test_vit", reinit_layers=99)).build(spec)
    torch.manual_seed(0)
    a = TimmModel(TimmModel.Config(architecture="test_vit")).build(spec).state_dict()
    torch.manual_seed(0)
    b = TimmModel(TimmModel.Config(architecture="test_vit", reinit_layers=1)).build(spec)
    changed = {k for k, v in b.state_dict().items() if not torch.equal(v, a[k])}
    last = len(b.model.blocks) - 1
    assert changed and all(k.startswith(f"model.blocks.{last}.") for k in changed), changed


def test_every_run_states_trainable_parameters_and_peak_memory(project) -> None:
    run = project.root / "runs" / "run"
    ok(run_cli("run", str(project.config(trainer={"epochs": 1}))))
    info = json.loads((run / "run.json").read_text())
    assert info["trainable_parameters"] == info["parameters"] > 0
    assert info["trainable_share"] == 1.0
    assert np.isfinite(info["peak_rss_mb"]) and info["peak_rss_mb"] > 50
