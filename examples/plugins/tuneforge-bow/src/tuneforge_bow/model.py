"""The ``bag-of-words`` model builder and its torch module.

Imported only when a run (or ``tuneforge predict``) uses the model: this is where torch and
safetensors come in.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from tuneforge.components import ModelBuilder, ModelSpec, StrictConfig
from tuneforge.errors import ConfigError, UserError, short

#: The checkpoint files :meth:`BagOfWords.save` writes (the text task adds the tokenizer's).
WEIGHTS = "bow.safetensors"
RECORD = "bow.json"
FORMAT = "tuneforge-bow"
VERSION = 1

Mode = Literal["mean", "sum", "max"]


class Record(BaseModel):
    """``bow.json``: the spec the model was built for and the builder's parameters, all that
    :meth:`BagOfWords.load` needs to rebuild the module."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["tuneforge-bow"]
    version: Literal[1]
    problem: str
    vocab_size: int = Field(ge=1)
    pad_token_id: int = Field(ge=0)
    n_outputs: int = Field(ge=1)
    output_names: list[str]
    embedding_dim: int = Field(ge=1)
    hidden_dim: int = Field(ge=0)
    dropout: float = Field(ge=0, lt=1)
    mode: Mode


class BagOfWordsModel(nn.Module):
    """Token ids -> ``EmbeddingBag`` (mean, sum or max over the tokens) -> dropout -> a
    linear layer, or a one-hidden-layer MLP when ``hidden_dim`` > 0 -> logits.

    Padding (``attention_mask == 0``, and the pad token itself) is left out of the bag.
    ``record`` (its :class:`Record`) is what :meth:`BagOfWords.save` writes beside the weights.
    """

    def __init__(self, record: Record) -> None:
        super().__init__()
        self.record = record
        dim, hidden = record.embedding_dim, record.hidden_dim
        self.bag = nn.EmbeddingBag(
            record.vocab_size, dim, mode=record.mode, padding_idx=record.pad_token_id
        )
        self.dropout = nn.Dropout(record.dropout)
        if hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.ReLU(),
                nn.Dropout(record.dropout),
                nn.Linear(hidden, record.n_outputs),
            )
        else:
            self.head = nn.Linear(dim, record.n_outputs)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        """Logits, rows x outputs. Other batch keys (``token_type_ids``...) are ignored."""
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, self.record.pad_token_id)
        return self.head(self.dropout(self.bag(input_ids)))


class BagOfWords(ModelBuilder):
    """Bag-of-words text model (torch ``EmbeddingBag``) trained from scratch.

    For the text tasks (``text-classification``, ``text-regression``, ``text-multilabel``):
    one logit per class, label or target. There are no pretrained weights
    (:meth:`checkpoint_path` is None), so the run names its tokenizer:
    ``tokenizer: {name: hf-tokenizer, checkpoint: PATH}``; only the tokenizer's vocabulary is
    used. Checkpoints are ``bow.safetensors`` plus ``bow.json``.
    """

    class Config(StrictConfig):
        embedding_dim: int = Field(64, ge=1, le=4096, description="size of each token embedding")
        hidden_dim: int = Field(
            0,
            ge=0,
            le=8192,
            description="0: a linear layer on the pooled embeddings; else one ReLU hidden layer",
        )
        dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the pooled embeddings")
        mode: Mode = Field("mean", description="how token embeddings are pooled: mean, sum, max")

    def build(self, spec: ModelSpec) -> BagOfWordsModel:
        vocab_size = spec.inputs.get("vocab_size")
        pad = spec.inputs.get("pad_token_id")
        if not (_is_int(vocab_size) and vocab_size > 0 and _is_int(pad) and pad >= 0):
            raise ConfigError(
                "model.name",
                "bag-of-words needs a text task whose tokenizer gives vocab_size and pad_token_id "
                f"(got vocab_size {short(vocab_size)}, pad_token_id {short(pad)})",
            )
        if pad >= vocab_size:
            raise ConfigError(
                "tokenizer", f"pad_token_id {pad} is outside the vocabulary of {vocab_size} tokens"
            )
        if spec.n_outputs < 1:
            raise ConfigError("model.name", f"bag-of-words: {spec.n_outputs} outputs to predict")
        record = Record(
            format=FORMAT,
            version=VERSION,
            problem=spec.problem,
            vocab_size=int(vocab_size),
            pad_token_id=int(pad),
            n_outputs=spec.n_outputs,
            output_names=[str(n) for n in spec.output_names],
            **self.config.model_dump(),
        )
        return BagOfWordsModel(record)

    def save(self, model: BagOfWordsModel, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
        (folder / RECORD).write_text(json.dumps(model.record.model_dump(), indent=2) + "\n")

    def load(self, folder: Path) -> BagOfWordsModel:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = folder / RECORD
        if not path.is_file() or not (folder / WEIGHTS).is_file():
            raise UserError(f"{folder}: not a bag-of-words checkpoint (no {RECORD} or {WEIGHTS})")
        try:
            record = Record.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(map(str, err["loc"])) or "(top level)"
            raise UserError(f"{path}: {where}: {err['msg']}") from None
        except OSError as exc:
            raise UserError(f"{path}: unreadable ({exc.strerror})") from None
        model = BagOfWordsModel(record)
        try:
            model.load_state_dict(load_file(str(folder / WEIGHTS)))
        except (OSError, SafetensorError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"{folder / WEIGHTS}: does not hold the weights {RECORD} describes: {first[:200]}"
            ) from None
        return model


def _is_int(value: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
