"""Built-in text plugin: the text-classification task, Hugging Face tokenizer and models,
text preprocessors (normalise, lower-case, mask, stem, lemmatize, stop words) and text
augmenters (token noise, word swap/delete/insert, typos).

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
    register(
        "text-regression",
        f"{_PKG}.regression:TextRegressionTask",
        "Predict numeric target(s) from a text or a pair of texts (STS-B style)",
    )
    register(
        "text-multilabel",
        f"{_PKG}.multilabel:TextMultiLabelTask",
        "Tag a text or a pair of texts with any number of labels (a|b cells or 0/1 columns)",
    )


@hookimpl
def register_validators(register: Register) -> None:
    register(
        "long-text",
        f"{_PKG}.checks:LongText",
        "Text cells over 1,000,000 characters: cut (default), drop or fail, naming the rows",
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
    register("lowercase", f"{_PKG}.preprocess:Lowercase", "Lower-case (or case-fold) the text")
    register(
        "mask",
        f"{_PKG}.preprocess:Mask",
        "Replace URLs, e-mail addresses and numbers with [URL], [EMAIL], [NUM]",
    )
    register(
        "stem", f"{_PKG}.preprocess:Stem", "NLTK Porter or Snowball stemming (no data download)"
    )
    register(
        "lemmatize",
        f"{_PKG}.preprocess:Lemmatize",
        "spaCy lookup lemmatizer on a blank pipeline (spacy-lookups-data; no model download)",
    )
    register(
        "stopwords",
        f"{_PKG}.preprocess:Stopwords",
        "Remove spaCy's stop words for a language, plus extra words, minus kept ones",
    )


@hookimpl
def register_models(register: Register) -> None:
    register(
        "hf-sequence-classification",
        f"{_PKG}.hf:HFSequenceClassification",
        "transformers AutoModelForSequenceClassification (BERT, RoBERTa, GPT-2, MiniLM...)",
    )
    register(
        "setfit",
        f"{_PKG}.setfit_model:SetFit",
        "SetFit: contrastive fine-tuning of a sentence-transformers body, then a head (setfit)",
    )


@hookimpl
def register_augmenters(register: Register) -> None:
    register(
        "token-noise", f"{_PKG}.augment:TokenNoise", "Random word deletion and swaps (EDA-style)"
    )
    register("word-swap", f"{_PKG}.augment:WordSwap", "Swap randomly chosen words (EDA)")
    register("word-delete", f"{_PKG}.augment:WordDelete", "Delete each word with a probability")
    register("word-insert", f"{_PKG}.augment:WordInsert", "Insert copies of the row's own words")
    register(
        "typo",
        f"{_PKG}.augment:Typo",
        "Character typos: swap, drop, duplicate, QWERTY-neighbour letters",
    )
