"""Layer structure of Hugging Face and timm models: the depth of each parameter, for
layer-wise learning-rate decay (``trainer.layer_decay``), and gradient checkpointing
(``trainer.gradient_checkpointing``).

Depths (:meth:`tuneforge.components.ModelBuilder.parameter_depths`): 0 for the embeddings (a
timm model's stem), ``1..L`` for the transformer blocks or stages bottom-up, ``L + 1`` for
everything above the last block (pooler, final norm, classification head). Layers are found
by their index in the parameter name (``encoder.layer.3.``, ``h.3.``, ``blocks.3.``,
``stages.3.``, ``layer4.``), so a peft wrapper's ``base_model.model.`` prefix and LoRA's
``lora_A``/``lora_B`` leaves inside a block change nothing.

torch, transformers and timm are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tuneforge.errors import ConfigError

#: Transformer block lists of Hugging Face models: BERT, RoBERTa, MiniLM, ELECTRA, DeBERTa
#: (``encoder.layer.i``), DistilBERT / XLNet (``transformer.layer.i``), GPT-2 (``h.i``),
#: LLaMA / Mistral / BART (``layers.i``), T5 (``block.i``).
HF_LAYER = re.compile(r"(?:^|\.)(layer|layers|h|block|blocks)\.(\d+)\.")

#: timm stages or blocks: ViT / DeiT / EfficientNet / MobileNet (``blocks.i``, EfficientNet's
#: ``blocks.i.j`` is stage i), ConvNeXt / MaxViT (``stages.i``), Swin (``layers.i``), ResNet
#: style (``layer1..layer4``, 1-based).
TIMM_LAYER = re.compile(r"(?:^|\.)(?:(blocks|stages|layers|levels)\.(\d+)|(layer)(\d+))\.")


def _match(name: str, pattern: re.Pattern[str]) -> tuple[str, int] | None:
    """``(stack, index)`` of the leftmost block index in ``name`` (0-based), or None."""
    m = pattern.search(name)
    if m is None:
        return None
    groups = [g for g in m.groups() if g is not None]
    stack_name, index = groups[0], int(groups[1])
    if stack_name == "layer" and m.group(0).rstrip(".").endswith(f"layer{groups[1]}"):
        index -= 1  # ResNet's layer1..layer4
    # the stack is identified by everything up to its name (two stacks: encoder + decoder)
    start = m.start() + (1 if m.group(0).startswith(".") else 0)
    return name[:start] + stack_name, index


def depths_from_names(names: Iterable[str], pattern: re.Pattern[str]) -> dict[str, int] | None:
    """The depth of each parameter name (in ``named_parameters()`` order); None when no name
    holds a block index.

    A name inside a block gets ``offset + index + 1`` (several stacks, an encoder's then a
    decoder's, are numbered one after the other in the order they appear). A name outside
    every block gets 0 before the first block (embeddings, stem) or when it names an embedding
    (``embed``: DeBERTa's relative-position embeddings after its layers, a decoder's position
    embeddings, BART's ``layernorm_embedding``), and otherwise one more than the last block
    seen before it, at most ``L + 1`` (pooler, final norm, head).
    """
    names = list(names)
    matches = [_match(n, pattern) for n in names]
    sizes: dict[str, int] = {}
    for m in matches:
        if m is not None:
            sizes[m[0]] = max(sizes.get(m[0], 0), m[1] + 1)
    if not sizes:
        return None
    offsets, total = {}, 0
    for stack, size in sizes.items():  # dicts keep the order of first appearance
        offsets[stack] = total
        total += size
    top = total + 1
    out: dict[str, int] = {}
    last = 0
    for name, m in zip(names, matches, strict=True):
        if m is not None:
            last = offsets[m[0]] + m[1] + 1
            out[name] = last
        elif last == 0 or "embed" in name.lower():
            out[name] = 0
        else:
            out[name] = min(top, last + 1)
    return out


def hf_parameter_depths(model: Any) -> dict[str, int] | None:
    """Depths of a transformers model's parameters (peft-wrapped or not)."""
    return depths_from_names((n for n, _ in model.named_parameters()), HF_LAYER)


def timm_parameter_depths(model: Any) -> dict[str, int] | None:
    """Depths of a timm model's parameters (or of a module wrapping one, peft included)."""
    return depths_from_names((n for n, _ in model.named_parameters()), TIMM_LAYER)


def layer_count(depths: dict[str, int] | None) -> int | None:
    """``L``, the blocks of a depth map (its top depth is ``L + 1``); None without one."""
    return max(depths.values()) - 1 if depths else None


def _unpeft(model: Any) -> Any:
    """The model a peft wrapper holds (the model itself when it is not one)."""
    from tuneforge.plugins import peft_support

    return model.get_base_model() if peft_support.is_peft(model) else model


def enable_hf_checkpointing(model: Any, what: str) -> None:
    """transformers' gradient checkpointing (non-reentrant) on ``model``; a ConfigError naming
    ``trainer.gradient_checkpointing`` for an architecture that has none."""
    base = _unpeft(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            "trainer.gradient_checkpointing",
            f"model {what} ({type(base).__name__}) does not support gradient checkpointing",
        )
    kwargs = {"use_reentrant": False}  # works with frozen inputs (peft) and is the default
    if hasattr(type(base), "activation_checkpointing_enable"):  # transformers 5 (the old name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)  # warns)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False  # a cache is useless in training and conflicts with it


def enable_timm_checkpointing(model: Any, what: str) -> None:
    """timm's ``set_grad_checkpointing(True)`` on a timm model (or a peft wrapper of one)."""
    base = _unpeft(model)
    key = "trainer.gradient_checkpointing"
    try:
        base.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError):
        raise ConfigError(
            key, f"model {what} does not support gradient checkpointing in timm"
        ) from None
    flags = [
        m.grad_checkpointing
        for m in base.modules()
        if isinstance(getattr(m, "grad_checkpointing", None), bool)
    ]
    if not any(flags):  # accepted the call but has nothing to checkpoint
        raise ConfigError(key, f"model {what} does not support gradient checkpointing in timm")
