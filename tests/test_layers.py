"""Issue 17 part 2: parameter depths (layer-wise lr decay), gradient checkpointing, EMA of the
weights and the advisors' layer remedies, on tiny random-init models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tuneforge.cli import main
from tuneforge.components import ModelSpec
from tuneforge.config import TrainerConfig
from tuneforge.console import Console
from tuneforge.errors import ConfigError
from tuneforge.trainer import FitHooks, StateOptions, Trainer

LORA = {"method": "lora", "r": 2, "alpha": 4, "dropout": 0.0}
SPEC = ModelSpec("classification", 3, ["a", "b", "c"], {})


def _hf(path: Path, **cfg):
    from transformers import AutoTokenizer

    from tuneforge.plugins.text.hf import HFSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    builder = HFSequenceClassification(HFSequenceClassification.Config(checkpoint=str(path), **cfg))
    torch.manual_seed(0)
    spec = ModelSpec("classification", 3, ["a", "b", "c"], {"tokenizer": tok})
    return builder, builder.build(spec), tok


def _timm(**cfg):
    from tuneforge.plugins.image.timm_model import TimmModel

    builder = TimmModel(TimmModel.Config(**cfg))
    torch.manual_seed(0)
    spec = ModelSpec("classification", 3, ["0", "1", "2"], {"channels": 3})
    return builder, builder.build(spec)


# -- depth maps -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "block", "embeddings", "heads"),
    [
        ("bert", "bert.encoder.layer.", "bert.embeddings.", ("bert.pooler.", "classifier.")),
        ("gpt2", "transformer.h.", "transformer.w", ("transformer.ln_f.", "score.")),
        ("roberta", "roberta.encoder.layer.", "roberta.embeddings.", ("classifier.",)),
    ],
)
@pytest.mark.parametrize("peft", [False, True])
def test_hf_depths_embeddings_blocks_head(tiny_models, family, block, embeddings, heads, peft):
    builder, model, _ = _hf(tiny_models[family], **({"peft": LORA} if peft else {}))
    depths = builder.parameter_depths(model)
    names = [n for n, _ in model.named_parameters()]
    assert depths is not None and list(depths) == names
    assert sorted(set(depths.values())) == [0, 1, 2, 3]  # 2 blocks: L + 1 = 3
    prefix = "base_model.model." if peft else ""
    for name, depth in depths.items():
        bare = name.removeprefix(prefix)
        if bare.startswith(block):
            assert depth == int(bare[len(block)]) + 1, name
        elif bare.startswith(embeddings):
            assert depth == 0, name
        else:
            assert bare.startswith(heads) and depth == 3, name
    if peft:  # LoRA's adapters sit in their block; the trained head at the top
        lora = {n: d for n, d in depths.items() if "lora_" in n}
        assert lora and set(lora.values()) == {1, 2}
        trainable = {depths[n] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {1, 2, 3}


@pytest.mark.parametrize("peft", [False, True])
def test_timm_depths_stem_blocks_head(peft) -> None:
    builder, model = _timm(architecture="test_vit", **({"peft": {"r": 2}} if peft else {}))
    depths = builder.parameter_depths(model)
    assert depths is not None and list(depths) == [n for n, _ in model.named_parameters()]
    blocks = len(model.model.get_base_model().blocks if peft else model.model.blocks)
    assert max(depths.values()) == blocks + 1
    for name, depth in depths.items():
        if ".blocks." in name:
            index = int(name.split(".blocks.")[1].split(".")[0])
            assert depth == index + 1, name
        elif any(k in name for k in ("patch_embed", "cls_token", "pos_embed")):
            assert depth == 0, name
        else:
            assert "head" in name or "norm" in name, name
            assert depth == blocks + 1, name


def test_depths_of_other_timm_families_and_names() -> None:
    import timm

    from tuneforge.plugins.layers import HF_LAYER, depths_from_names, timm_parameter_depths

    resnet = timm_parameter_depths(timm.create_model("resnet10t", num_classes=3))
    assert resnet["conv1.0.weight"] == 0 and resnet["layer1.0.conv1.weight"] == 1
    assert resnet["layer4.0.conv1.weight"] == 4 and resnet["fc.weight"] == 5
    assert timm_parameter_depths(timm.create_model("test_efficientnet", num_classes=3))
    # no numbered blocks: no layer structure
    assert timm_parameter_depths(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None
    # an encoder-decoder: the stacks are numbered one after the other; embeddings after the
    # first block (a decoder's position embeddings, DeBERTa's relative ones) stay at 0
    names = [
        "model.shared.weight",
        "model.encoder.layers.0.fc.weight",
        "model.encoder.layers.1.fc.weight",
        "model.encoder.layernorm_embedding.weight",
        "model.decoder.embed_positions.weight",
        "model.decoder.layers.0.fc.weight",
        "model.decoder.layer_norm.weight",
        "classification_head.dense.weight",
    ]
    assert list(depths_from_names(names, HF_LAYER).values()) == [0, 1, 2, 0, 0, 3, 4, 4]


# -- optimizer groups -------------------------------------------------------------------------
def test_layer_decay_groups_lrs_weight_decay_and_schedule(tiny_models) -> None:
    from transformers import get_scheduler

    builder, model, _ = _hf(tiny_models["bert"])
    depths = builder.parameter_depths(model)
    cfg = TrainerConfig(lr=1e-3, layer_decay=0.5, weight_decay=0.1, device="cpu")
    log = io.StringIO()
    trainer = Trainer(cfg, Console("normal", stream=log))
    opt = trainer._optimizer(model, depths)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = group_of[id(p)]
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (3 - depths[name])), name
        no_decay = p.ndim < 2 or "norm" in name.lower()
        assert g["weight_decay"] == (0.0 if no_decay else 0.1), name
    assert {g["layer_depth"] for g in opt.param_groups} == {0, 1, 2, 3}
    assert len(opt.param_groups) == 8  # (depth, decayed?) pairs
    assert log.getvalue().strip() == (
        "layer-wise lr decay 0.5: 4 depths (0..3), lr 0.000125 (depth 0) to 0.001 (depth 3)"
    )
    # the schedule scales every group alike (warm-up: a tenth of the way after 1 of 10 steps)
    sched = get_scheduler("linear", opt, num_warmup_steps=10, num_training_steps=100)
    opt.step()
    sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(g["initial_lr"] * 0.1)
    # off: the two usual groups at lr
    plain = Trainer(TrainerConfig(lr=1e-3, device="cpu"), Console("quiet"))._optimizer(model)
    assert [g["lr"] for g in plain.param_groups] == [1e-3, 1e-3]
    # a model without depths
    with pytest.raises(ConfigError, match=r"^trainer\.layer_decay: .*Sequential"):
        trainer._optimizer(torch.nn.Sequential(torch.nn.Linear(2, 2)), None)


def test_layer_decay_config_range_and_tuner_space() -> None:
    from tuneforge.config import build_config

    raw = {
        "task": "text-classification",
        "data": {"path": "data.csv"},
        "tuner": {"name": "grid", "space": {"trainer.layer_decay": {"choice": [0.65, 0.8, 1.0]}}},
    }
    cfg = build_config(raw)
    assert cfg.tuner is not None and "trainer.layer_decay" in cfg.tuner.space
    for value in (0.65, 0.8, 1.0):  # what the study's probe of each value builds
        assert build_config(raw, [("trainer.layer_decay", value)]).trainer.layer_decay == value
    for key, bad in (("layer_decay", 1.5), ("layer_decay", 0), ("ema_decay", 1.0)):
        with pytest.raises(ConfigError, match=rf"trainer\.{key}"):
            build_config(raw, [(f"trainer.{key}", bad)])


def test_unsupported_models_are_one_line_errors(tmp_path: Path, capsys) -> None:
    """The tabular MLP has no blocks: trainer.layer_decay is a one-line error naming the key
    and the model (nothing written), and so is gradient checkpointing (the default)."""
    from tuneforge.plugins.tabular.model import MLP

    with pytest.raises(ConfigError, match=r"^trainer\.gradient_checkpointing: model MLP"):
        MLP().enable_gradient_checkpointing(torch.nn.Linear(2, 2))
    rng = np.random.default_rng(0)
    rows = ["x1,x2,label"] + [
        f"{a:.3f},{b:.3f},{'yes' if a > b else 'no'}" for a, b in rng.normal(size=(80, 2))
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    for key, value in (("layer_decay", 0.8),):
        cfg = tmp_path / f"{key}.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "task": "tabular-classification",
                    "data": {"path": "t.csv"},
                    "trainer": {"epochs": 1, key: value, "device": "cpu"},
                    "output": {"dir": str(tmp_path / "runs" / key)},
                }
            )
        )
        assert main(["run", str(cfg)]) == 2  # in process: the CLI's own error path
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"tuneforge: error: trainer.{key}: model MLP"), err
        assert not (tmp_path / "runs" / key).exists()


# -- gradient checkpointing -------------------------------------------------------------------
def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks (checkpointing replays the RNG state)
    out = model(**batch)
    logits = out.logits if hasattr(out, "logits") else out
    logits.float().pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients_hf(tiny_models) -> None:
    builder, model, tok = _hf(tiny_models["bert"])
    model.train()
    batch = dict(
        tok(["invoice refund please", "crash login app again"], padding=True, return_tensors="pt")
    )
    plain = _grads(model, batch)
    builder.enable_gradient_checkpointing(model)
    assert model.is_activation_checkpointing
    calls: list[int] = []
    block = model.bert.encoder.layer[0].intermediate  # inside the checkpointed block
    hook = block.register_forward_hook(lambda *a: calls.append(1))
    checked = _grads(model, batch)
    hook.remove()
    assert len(calls) == 2  # the block ran again in the backward pass
    assert plain.keys() == checked.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("peft", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_timm(peft) -> None:
    builder, model = _timm(architecture="test_vit", **({"peft": {"r": 2}} if peft else {}))
    model.train()
    x = torch.randn(2, 3, *model.data_config["input_size"][1:])
    plain = _grads(model, {"pixel_values": x})
    builder.enable_gradient_checkpointing(model)
    timm_model = model.model.get_base_model() if peft else model.model
    assert timm_model.grad_checkpointing
    checked = _grads(model, {"pixel_values": x})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(plain) == sorted(checked) == sorted(trainable)  # LoRA's too (non-reentrant)
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_default_builder_has_no_gradient_checkpointing() -> None:
    from tuneforge.components import ModelBuilder

    class Plain(ModelBuilder):
        def build(self, spec):
            return torch.nn.Linear(2, 2)

        def save(self, model, folder):
            pass

        def load(self, folder):
            return torch.nn.Linear(2, 2)

    assert Plain().parameter_depths(torch.nn.Linear(2, 2)) is None
    with pytest.raises(ConfigError, match=r"^trainer\.gradient_checkpointing: model Plain"):
        Plain().enable_gradient_checkpointing(torch.nn.Linear(2, 2))


# -- EMA of the weights -----------------------------------------------------------------------
class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "labels": self.y[i]}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _NanOnCall(torch.nn.Module):
    """Cross-entropy whose ``bad``-th call (1-based) is NaN: that step is not applied."""

    def __init__(self, bad: int | None) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if self.calls == self.bad else loss


def _collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _ema_fit(tmp: Path | None, n_rows: int, epochs: int, ema: float | None, **kw):
    """A small fit; returns (raw weights after each step, validation logits per epoch, the
    best model's weights per save, the model's final state, the trainer)."""
    bad = kw.pop("bad", None)
    resume = kw.pop("resume", None)
    cfg = TrainerConfig(
        epochs=epochs,
        batch_size=16,
        lr=5e-2,
        schedule="constant",
        warmup_ratio=0.0,
        device="cpu",
        precision="fp32",
        num_workers=0,
        early_stopping_patience=None,
        log_every_n_steps=1,
        nonfinite="skip",
        ema_decay=ema,
        **kw,
    )
    trainer = Trainer(cfg, Console("quiet"))
    model = _Net()
    steps: list[dict[str, torch.Tensor]] = []
    logits_seen: list[torch.Tensor] = []
    best: list[dict[str, torch.Tensor]] = []

    def snapshot(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    def evaluate(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        logits_seen.append(logits.clone())
        return {"loss": float(torch.nn.functional.cross_entropy(logits, labels))}

    hooks = FitHooks(
        evaluate=evaluate,
        save_best=lambda m: best.append(snapshot(m)),
        on_log=lambda step, values: steps.append(snapshot(model)),
    )
    state = StateOptions(state_dir=tmp, resume=resume) if tmp is not None else None
    trainer.fit(
        model,
        _Rows(n_rows, seed=1),
        _Rows(24, seed=2),
        _collate,
        _NanOnCall(bad),
        hooks,
        monitor="loss",
        mode="max",  # every epoch's model is saved as "best"
        state=state,
    )
    return steps, logits_seen, best, snapshot(model), trainer


def test_ema_is_evaluated_saved_and_kept_and_equals_the_hand_computed_average() -> None:
    decay = 0.75
    steps, logits, best, final, trainer = _ema_fit(None, 32, 1, decay)
    assert len(steps) == 2 and len(best) == 1
    w1, w2 = steps
    floats = [k for k in w1 if w1[k].is_floating_point()]
    # AveragedModel copies the weights at its first update, then averages
    want = {k: decay * w1[k] + (1 - decay) * w2[k] for k in floats}
    for k in floats:
        torch.testing.assert_close(best[0][k], want[k])
        torch.testing.assert_close(final[k], want[k])  # the run keeps the EMA weights
    assert any(not torch.allclose(want[k], w2[k]) for k in floats)  # not the raw weights
    # integer buffers (BatchNorm's step counter) are copied, not averaged and truncated
    assert int(final["body.1.num_batches_tracked"]) == int(w2["body.1.num_batches_tracked"]) == 2
    # validation scored the averaged weights
    ema_model = _Net()
    ema_model.load_state_dict(best[0])
    ema_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits[0], ema_model(_Rows(24, seed=2).x))


def test_ema_ignores_a_skipped_non_finite_step() -> None:
    decay = 0.5
    steps, _, best, _, trainer = _ema_fit(None, 64, 1, decay, bad=3)
    assert trainer.skipped_steps == 1 and len(steps) == 4
    w1, w2, w3, w4 = steps
    floats = [k for k in w1 if w1[k].is_floating_point()]
    for k, _ in _Net().named_parameters():
        assert torch.equal(w3[k], w2[k])  # the skipped step changed no weight
    for k in floats:  # buffers too: BatchNorm's statistics moved in step 3, the EMA did not
        e2 = decay * w1[k] + (1 - decay) * w2[k]
        torch.testing.assert_close(best[0][k], decay * e2 + (1 - decay) * w4[k])


def test_ema_resume_mid_run_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    kw = {"checkpoint_every_n_steps": 1, "keep_checkpoints": 100}
    _, ref_logits, _, ref_final, _ = _ema_fit(tmp_path / "ref", 40, 2, 0.8, **kw)
    checkpoints = sorted((tmp_path / "ref").glob("step-*"))
    assert len(checkpoints) == 6 and all((c / "ema.safetensors").is_file() for c in checkpoints)
    mid = checkpoints[1]  # in epoch 1, after 2 of its 3 steps
    state = json.loads((mid / "trainer_state.json").read_text())
    assert state["batches_done"] == 2 and "ema.safetensors" in state["files"]
    _, logits, _, final, _ = _ema_fit(tmp_path / "again", 40, 2, 0.8, resume=mid, **kw)
    assert final.keys() == ref_final.keys()
    for k in final:
        assert torch.equal(final[k], ref_final[k]), k
    assert torch.equal(logits[-1], ref_logits[-1])
    # a checkpoint with an EMA into a run without one, and the reverse: named errors
    with pytest.raises(ConfigError, match=r"^trainer\.ema_decay: .* holds an EMA"):
        _ema_fit(tmp_path / "no-ema", 40, 2, None, resume=mid, **kw)
    _ema_fit(tmp_path / "plain", 40, 2, None, **kw)
    plain = sorted((tmp_path / "plain").glob("step-*"))[1]
    with pytest.raises(ConfigError, match=r"^trainer\.ema_decay: .* holds no EMA"):
        _ema_fit(tmp_path / "ema", 40, 2, 0.8, resume=plain, **kw)


# -- a real run with all three ----------------------------------------------------------------
def test_a_run_with_layer_decay_checkpointing_and_ema(project, capsys) -> None:
    out = project.root / "runs" / "all"
    cfg = project.config(
        trainer={
            "epochs": 1,
            "layer_decay": 0.8,
            "gradient_checkpointing": True,
            "ema_decay": 0.9,
        },
        output={"dir": str(out)},
    )
    assert main(["run", str(cfg)]) == 0  # in process (a subprocess doubles the time)
    log = capsys.readouterr().out
    assert "layer-wise lr decay 0.8: 4 depths (0..3)" in log, log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["test"]["accuracy"] > 0
    assert json.loads((out / "run.json").read_text())["layers"] == 2


# -- advisors ---------------------------------------------------------------------------------
def _overfit_record(model: dict, trainer: dict | None = None, counts: dict | None = None, **kw):
    from tuneforge.advice import RunRecord

    epochs = [
        {"epoch": i + 1.0, "train.loss": t, "val.loss": v, "val.accuracy": a}
        for i, (t, v, a) in enumerate(
            zip(
                [0.9, 0.5, 0.2, 0.05, 0.01],
                [0.7, 0.45, 0.5, 0.7, 0.9],
                [0.6, 0.8, 0.8, 0.78, 0.77],
                strict=True,
            )
        )
    ]
    hf_fields = {"name", "checkpoint", "dropout", "peft", "reinit_layers"}
    base = {
        "path": Path("runs/x"),
        "config": {"model": model, "trainer": {"lr": 1e-3, **(trainer or {})}},
        "status": "completed",
        "error": "",
        "metrics": {"monitor": "val.accuracy", "monitor_mode": "max", "best_epoch": 2},
        "findings": [],
        "split": {"class_counts": {"train": counts or {"a": 400, "b": 300, "c": 200}}},
        "labels": {},
        "epochs": epochs,
        "fields": {"model": hf_fields, "trainer": {"lr", "l1", "layer_decay"}},
        "modalities": {"text"},
        "augmenters": ["token-noise"],
    }
    base.update(kw)
    return RunRecord(**base)


def test_overfitting_proposes_layer_decay_and_top_layer_reinit() -> None:
    from tuneforge.plugins.advisors import Overfitting

    hf = {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"}
    (d,) = Overfitting().diagnose(_overfit_record(hf))
    assert d.patch["trainer.layer_decay"] == 0.8 and d.patch["model.reinit_layers"] == 1
    assert "model.peft" not in d.patch and set(d.reasons) == set(d.patch)
    assert "lower, general layers" in d.reasons["trainer.layer_decay"]
    assert "val.loss rose from 0.4500" in d.evidence
    # already set: layer decay left alone, one more layer re-initialised, then no more
    (d,) = Overfitting().diagnose(
        _overfit_record({**hf, "reinit_layers": 1}, trainer={"layer_decay": 0.9})
    )
    assert "trainer.layer_decay" not in d.patch and d.patch["model.reinit_layers"] == 2
    (d,) = Overfitting().diagnose(_overfit_record({**hf, "reinit_layers": 2}))
    assert "model.reinit_layers" not in d.patch
    # few examples per class: LoRA instead of re-initialising (its frozen layers would stay
    # random), with the counts as evidence
    (d,) = Overfitting().diagnose(_overfit_record(hf, counts={"a": 30, "b": 12, "c": 80}))
    assert d.patch["model.peft"] == {"method": "lora", "r": 8}
    assert "'b', has 12 examples" in d.reasons["model.peft"]
    assert "model.reinit_layers" not in d.patch and d.patch["trainer.layer_decay"] == 0.8
    # an image model: layer decay, no transformer re-init
    timm = {"name": "timm", "architecture": "vit_small", "weights": "w.safetensors"}
    (d,) = Overfitting().diagnose(_overfit_record(timm, modalities={"image"}))
    assert d.patch["trainer.layer_decay"] == 0.8 and "model.reinit_layers" not in d.patch
    # trained from scratch, or a model without blocks: none of them
    (d,) = Overfitting().diagnose(_overfit_record({"name": "hf-sequence-classification"}))
    assert not {"trainer.layer_decay", "model.reinit_layers", "model.peft"} & set(d.patch)
    mlp = _overfit_record(hf, fields={"model": {"name", "dropout"}, "trainer": {"layer_decay"}})
    (d,) = Overfitting().diagnose(mlp)
    assert not {"trainer.layer_decay", "model.reinit_layers", "model.peft"} & set(d.patch)
