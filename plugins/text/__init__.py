"""Built-in text plugin: the text-classification task, Hugging Face tokenizer and models,
token-noise augmentation and text normalisation.

Registered lazily: listing this plugin imports neither torch nor transformers.
"""

from __future__ import annotations

from tuneforge import hookimpl
from tuneforge.hookspecs import Register

_PKG = "tuneforge.plugins.text"


@hookimpl
def register_tasks(register: Register) -> None:
    register(
        "text-classification",
        f"{_PKG}.task:TextClassificationTask",
        "Classify a text or a pair of texts (CSV/TSV/JSONL/Parquet)",
    )


@hookimpl
def register_tokenizers(register: Register) -> None:
    register(
        "hf-tokenizer",
        f"{_PKG}.hf:HFTokenizer",
        "Hugging Face fast tokenizer (local path or checkpoint)",
    )
    register(
        "text-normalize",
        f"{_PKG}.preprocess:TextNormalize",
        "Unicode normalisation, case folding, whitespace",
    )


@hookimpl
def register_models(register: Register) -> None:
    register(
        "hf-sequence-classification",
        f"{_PKG}.hf:HFSequenceClassification",
        "transformers AutoModelForSequenceClassification (BERT, RoBERTa, GPT-2, MiniLM...)",
    )


@hookimpl
def register_augmenters(register: Register) -> None:
    register(
        "token-noise", f"{_PKG}.augment:TokenNoise", "Random word deletion and swaps (EDA-style)"
    )
