"""Parameter-efficient fine-tuning (``model.peft``, the peft library) and top-layer
re-initialisation (``model.reinit_layers``) for the Hugging Face and timm model builders.

peft and torch are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tuneforge.components import StrictConfig
from tuneforge.errors import ConfigError, UserError

#: peft methods tuneforge supports (the names users write).
METHODS = ("lora",)

#: The file an adapter-only checkpoint keeps next to peft's: the base model's reference.
ADAPTER_INFO = "tuneforge_adapter.json"

#: ``target_modules: auto``: attention projections, by module leaf name, in order of preference.
AUTO_TARGETS: tuple[tuple[str, ...], ...] = (
    ("query", "key", "value"),  # BERT, MiniLM, RoBERTa, ELECTRA, ...
    ("q_proj", "k_proj", "v_proj"),  # DistilRoBERTa-style / LLaMA-style / DeBERTa-v2 names
    ("q_lin", "k_lin", "v_lin"),  # DistilBERT
    ("query_proj", "key_proj", "value_proj"),  # DeBERTa-v2
    ("c_attn",),  # GPT-2
    ("qkv",),  # timm ViT / DeiT / BEiT / Swin
)

#: Heads that train fully (peft ``modules_to_save``), by top-level module name.
HEAD_NAMES = ("classifier", "score", "head", "fc", "classif")


class PeftConfig(StrictConfig):
    """``model.peft``: train low-rank adapters instead of all weights; the head trains fully."""

    method: Literal["lora"] = Field("lora", description="peft method: lora")
    r: int = Field(8, gt=0, description="LoRA rank")
    alpha: float = Field(
        16, gt=0, description="LoRA scaling alpha (the update is scaled by alpha/r)"
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA branch")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="module names to adapt; auto: the architecture's attention projections",
    )
    save_adapter: bool = Field(
        False,
        description="checkpoint keeps only the adapter and head (+ the base model's reference) "
        "instead of merged full weights",
    )


def check_peft_config(cfg: PeftConfig) -> None:
    """Refuse values peft would choke on, naming the key."""
    if cfg.method not in METHODS:
        raise ConfigError(
            "model.peft.method", f"unknown peft method {cfg.method!r}; choose from {list(METHODS)}"
        )
    if cfg.r <= 0:
        raise ConfigError("model.peft.r", f"must be a positive rank, got {cfg.r}")
    if cfg.alpha <= 0:
        raise ConfigError("model.peft.alpha", f"must be positive, got {cfg.alpha}")
    if isinstance(cfg.target_modules, list) and not cfg.target_modules:
        raise ConfigError("model.peft.target_modules", "empty list; use auto or module names")


def _linear_like(module: Any) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, torch.nn.Linear | Conv1D)


def find_targets(model: Any, cfg: PeftConfig, what: str) -> list[str]:
    """The leaf module names to adapt in ``model``; a ConfigError when none fit."""
    leaves: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if name and _linear_like(module):
            leaves.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    key = "model.peft.target_modules"
    if cfg.target_modules == "auto":
        for group in AUTO_TARGETS:
            if all(g in leaves for g in group):
                return list(group)
        raise ConfigError(
            key,
            f"auto found no attention projections in {what} (peft LoRA adapts linear layers, "
            "e.g. transformer attention); name the modules or drop model.peft",
        )
    missing = [t for t in cfg.target_modules if t not in leaves]
    if missing:
        some = ", ".join(sorted(leaves)[:12])
        raise ConfigError(key, f"{what} has no linear module named {missing[0]!r} (it has: {some})")
    return list(cfg.target_modules)


def head_modules(model: Any) -> list[str]:
    """Top-level module names of the classification head (they train fully)."""
    names = [n for n, _ in model.named_children()]
    return [n for n in HEAD_NAMES if n in names]


def apply_peft(model: Any, cfg: PeftConfig, what: str) -> Any:
    """``model`` wrapped by peft (LoRA on its targets, the head trained fully)."""
    from peft import LoraConfig, get_peft_model

    check_peft_config(cfg)
    targets = find_targets(model, cfg, what)
    heads = head_modules(model)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        modules_to_save=heads or None,
        fan_in_fan_out="c_attn" in targets,  # GPT-2's Conv1D stores weights transposed
        bias="none",
    )
    return get_peft_model(model, lora)


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def merged_copy(model: Any) -> Any:
    """The base model with the adapter merged in, from a deep copy (``model`` keeps training)."""
    return copy.deepcopy(model).merge_and_unload()


def save_adapter(model: Any, folder: Path, base: dict[str, Any]) -> None:
    """peft's adapter files (adapter + head) and :data:`ADAPTER_INFO` with ``base``."""
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / ADAPTER_INFO).write_text(json.dumps(base, indent=2), encoding="utf-8")


def adapter_info(folder: Path) -> dict[str, Any] | None:
    """The base model's reference of an adapter-only checkpoint, or None for a full one."""
    f = folder / ADAPTER_INFO
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{f}: corrupt ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{f}: not an adapter reference")
    return info


def load_adapter(base_model: Any, folder: Path) -> Any:
    """``base_model`` with the adapter of ``folder`` merged in (a plain model for predict)."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base_model, str(folder))
    except Exception as exc:  # corrupt or mismatched files raise library-specific errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(
            f"checkpoint {folder}: cannot load the adapter: {type(exc).__name__}: {first}"
        ) from None
    return model.merge_and_unload()


# -- parameters and memory ---------------------------------------------------------------------
def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, all) parameter counts of ``model``."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


# -- re-initialising the top layers -----------------------------------------------------------
def hf_layers(model: Any) -> list[Any]:
    """The transformer blocks of a transformers model, bottom-up (a ModuleList's children)."""
    import torch

    best: list[Any] = []
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.ModuleList)
            and re.search(r"(^|\.)(layer|layers|h|block|blocks)$", name)
            and len(module) > len(best)
        ):
            best = list(module)
    return best


def reinit_hf(model: Any, n: int) -> None:
    """Re-initialise the top ``n`` transformer blocks with the model's own ``_init_weights``."""
    if n <= 0:
        return
    layers = hf_layers(model)
    key = "model.reinit_layers"
    if not layers:
        raise ConfigError(key, f"{type(model).__name__} has no transformer blocks to re-initialise")
    if n > len(layers):
        raise ConfigError(key, f"{n} is more than the model's {len(layers)} transformer layers")
    for layer in layers[-n:]:
        for tensor in [*layer.parameters(), *layer.buffers()]:
            # transformers 5 skips tensors it marked as loaded from the checkpoint
            if getattr(tensor, "_is_hf_initialized", False):
                tensor._is_hf_initialized = False
        for module in layer.modules():
            model._init_weights(module)


def reinit_timm(model: Any, n: int) -> None:
    """Re-initialise the last ``n`` blocks of a timm model (``blocks`` or ``stages``)."""
    import torch

    if n <= 0:
        return
    key = "model.reinit_layers"
    blocks = None
    for attr in ("blocks", "stages", "layers"):
        seq = getattr(model, attr, None)
        if isinstance(seq, torch.nn.Sequential | torch.nn.ModuleList) and len(seq):
            blocks = list(seq)
            break
    if blocks is None:
        raise ConfigError(key, f"{type(model).__name__} has no blocks to re-initialise")
    if n > len(blocks):
        raise ConfigError(key, f"{n} is more than the model's {len(blocks)} blocks")
    for block in blocks[-n:]:
        for module in block.modules():
            if isinstance(module, torch.nn.Linear):  # timm's ViT init: truncated normal, 0 bias
                torch.nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()


# -- the Hugging Face builder ------------------------------------------------------------------
def prepare_hf(model: Any, config: Any, path: str) -> Any:
    """A just-built transformers model with ``config.reinit_layers`` and ``config.peft``."""
    reinit_hf(model, config.reinit_layers)
    if config.peft is None:
        return model
    return apply_peft(model, config.peft, f"{type(model).__name__} ({path})")


def save_hf(model: Any, folder: Path, config: Any) -> bool:
    """Save a peft-wrapped transformers model: merged full weights (default) or, with
    ``save_adapter``, the adapter + head, the model config and the base's reference. False
    for a plain model (the caller saves it)."""
    if not is_peft(model):
        return False
    if config.peft is not None and config.peft.save_adapter:
        base = model.get_base_model()
        base.config.save_pretrained(str(folder))  # labels and problem type, for load
        save_adapter(
            model,
            folder,
            {"checkpoint": config.checkpoint, "base_model": base.config._name_or_path},
        )
    else:
        merged_copy(model).save_pretrained(str(folder), safe_serialization=True)
    return True


def load_hf_adapter(folder: Path) -> Any:
    """The model of an adapter-only checkpoint: its base, re-resolved, with the adapter merged."""
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tuneforge.plugins.text.hf import OFFLINE_CHECKPOINTS, resolve_checkpoint

    info = adapter_info(folder) or {}
    name = str(info.get("checkpoint") or "")
    where = f"checkpoint {folder} ({ADAPTER_INFO})"
    if name in OFFLINE_CHECKPOINTS or Path(name).expanduser().is_dir():
        base_path = resolve_checkpoint(name, where)
    else:
        base_path = str(info.get("base_model") or name)
    if not base_path:
        raise UserError(f"{where}: names no base model")
    try:
        hf_config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {folder}: cannot read config.json: {exc}") from None
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head comes from the adapter
    try:
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path, config=hf_config, ignore_mismatched_sizes=True
        )
    except Exception as exc:  # a moved or corrupt base checkpoint
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(
            f"{where}: cannot load the base model {base_path}: {type(exc).__name__}: {first}"
        ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return load_adapter(base, folder)


# -- the report --------------------------------------------------------------------------------
def resource_facts(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The report header's facts from ``run.json``: trainable parameters and peak memory
    (HTML-safe strings: numbers only)."""
    facts: list[tuple[str, str]] = []
    n, total = run.get("trainable_parameters"), run.get("parameters")
    if isinstance(n, int) and isinstance(total, int) and total > 0:
        facts.append(("trainable parameters", f"{n:,} of {total:,} ({100 * n / total:.2f}%)"))
    memory = []
    if isinstance(run.get("peak_rss_mb"), int | float):
        memory.append(f"RSS {run['peak_rss_mb']:,.0f} MB")
    if isinstance(run.get("peak_gpu_memory_mb"), int | float):
        memory.append(f"GPU {run['peak_gpu_memory_mb']:,.0f} MB")
    if memory:
        facts.append(("peak memory", ", ".join(memory)))
    return facts


# -- the timm builder --------------------------------------------------------------------------
def prepare_timm(model: Any, config: Any) -> Any:
    """A just-built timm model with ``config.reinit_layers`` and ``config.peft``."""
    reinit_timm(model, config.reinit_layers)
    if config.peft is None:
        return model
    if config.peft.save_adapter:
        raise ConfigError(
            "model.peft.save_adapter", "timm models save merged weights only; set it to false"
        )
    if config.freeze_epochs:
        raise ConfigError(
            "model.freeze_epochs", "cannot be combined with model.peft (peft freezes the backbone)"
        )
    return apply_peft(model, config.peft, f"timm {config.architecture}")
