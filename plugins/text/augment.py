"""Text augmentation applied on the fly to training examples.

Every augmenter here takes ``p``, the probability that a row is augmented, and draws all its
randomness from the ``rng`` it is given: the same seed gives the same output.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from tuneforge.components import Augmenter, StrictConfig


class TokenNoise(Augmenter):
    """Random word deletion and adjacent-word swaps (EDA-style), on training examples only."""

    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    class Config(StrictConfig):
        p: float = Field(0.5, ge=0, le=1, description="probability that an example is augmented")
        delete: float = Field(0.1, ge=0, lt=1, description="per-word deletion probability")
        swaps: float = Field(
            0.1, ge=0, le=1, description="swaps per word (rounded down, at least one when > 0)"
        )
        min_words: int = Field(3, ge=1, description="texts shorter than this are left alone")

        @model_validator(mode="after")
        def _something(self) -> TokenNoise.Config:
            if self.delete == 0 and self.swaps == 0:
                raise ValueError("delete and swaps are both 0: the augmenter would do nothing")
            return self

    def augment_text(self, text: str, rng: random.Random) -> str:
        words = text.split()
        cfg = self.config
        if len(words) < cfg.min_words:
            return text
        if cfg.delete > 0:
            kept = [w for w in words if rng.random() >= cfg.delete]
            words = kept if kept else [rng.choice(words)]
        if cfg.swaps > 0 and len(words) > 1:
            for _ in range(max(1, int(cfg.swaps * len(words)))):
                i = rng.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        if rng.random() >= self.config.p:
            return example
        out = dict(example)
        for role in ("text", "text_pair"):
            if isinstance(out.get(role), str):
                out[role] = self.augment_text(out[role], rng)
        return out


# -- word- and character-level augmenters --------------------------------------------------

#: Placeholders such as ``[URL]`` (what the ``mask`` preprocessor writes) never get typos.
_PLACEHOLDER = re.compile(r"\[[^\[\]\s]+\]")
_NONSPACE = re.compile(r"\S+")

#: Neighbouring keys on a QWERTY keyboard (letters only).
QWERTY_NEIGHBOURS: dict[str, str] = {
    "q": "wa",
    "w": "qeas",
    "e": "wrsd",
    "r": "etdf",
    "t": "ryfg",
    "y": "tugh",
    "u": "yihj",
    "i": "uojk",
    "o": "ipkl",
    "p": "ol",
    "a": "qwsz",
    "s": "weadzx",
    "d": "erfsxc",
    "f": "rtdgcv",
    "g": "tyfhvb",
    "h": "yugjbn",
    "j": "uihknm",
    "k": "iojlm",
    "l": "opk",
    "z": "asx",
    "x": "sdzc",
    "c": "dfxv",
    "v": "fgcb",
    "b": "ghvn",
    "n": "hjbm",
    "m": "jkn",
}


class RowConfig(StrictConfig):
    """Parameters every row-level text augmenter has."""

    p: float = Field(0.5, ge=0, le=1, description="probability that a row is augmented")


class _TextAugmenter(Augmenter):
    """Applies :meth:`augment_text` to the ``text`` and ``text_pair`` of a row with probability ``p``.

    One draw decides per row (both texts of a pair change together); everything else is drawn
    from the same ``rng``, so a seed gives the same output.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    def augment_text(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        if rng.random() >= self.config.p:
            return example
        out = dict(example)
        for role in ("text", "text_pair"):
            if isinstance(out.get(role), str):
                out[role] = self.augment_text(out[role], rng)
        return out


def _count(fraction: float, n: int) -> int:
    """``fraction`` of ``n`` words, rounded down, at least one."""
    return max(1, int(fraction * n))


class WordSwap(_TextAugmenter):
    """Random swap (EDA): exchange two randomly chosen words, ``fraction`` x words times."""

    class Config(RowConfig):
        fraction: float = Field(
            0.1, gt=0, le=1, description="swaps per word (rounded down, at least one)"
        )
        min_words: int = Field(3, ge=2, description="texts shorter than this are left alone")

    def augment_text(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if len(words) < self.config.min_words:
            return text
        for _ in range(_count(self.config.fraction, len(words))):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
        return " ".join(words)


class WordDelete(_TextAugmenter):
    """Random deletion (EDA): drop each word with probability ``rate``; one word always stays."""

    class Config(RowConfig):
        rate: float = Field(0.1, gt=0, lt=1, description="per-word deletion probability")
        min_words: int = Field(3, ge=2, description="texts shorter than this are left alone")

    def augment_text(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if len(words) < self.config.min_words:
            return text
        kept = [w for w in words if rng.random() >= self.config.rate]
        return " ".join(kept if kept else [rng.choice(words)])


class WordInsert(_TextAugmenter):
    """Random insertion: copy randomly chosen words of the row to random positions.

    EDA inserts WordNet synonyms instead; that needs the NLTK WordNet corpus, a data download
    tuneforge does not make at run time, so the inserted words come from the row itself.
    """

    class Config(RowConfig):
        fraction: float = Field(
            0.1, gt=0, le=1, description="insertions per word (rounded down, at least one)"
        )
        min_words: int = Field(2, ge=1, description="texts shorter than this are left alone")

    def augment_text(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if len(words) < self.config.min_words:
            return text
        source = list(words)
        for _ in range(_count(self.config.fraction, len(source))):
            words.insert(rng.randint(0, len(words)), rng.choice(source))
        return " ".join(words)


TypoOp = Literal["swap", "drop", "duplicate", "keyboard"]


class Typo(_TextAugmenter):
    """Character-level typos: each word gets one with probability ``rate``.

    A typo is one of ``ops``: ``swap`` two adjacent letters, ``drop`` a letter, ``duplicate``
    a letter, or ``keyboard``: replace a letter with a neighbouring QWERTY key (case kept).
    Spacing and punctuation are kept; placeholders such as ``[URL]`` and words shorter than
    ``min_length`` letters are left alone.
    """

    class Config(RowConfig):
        rate: float = Field(0.1, gt=0, le=1, description="probability of a typo per word")
        ops: list[TypoOp] = Field(
            default_factory=lambda: ["swap", "drop", "duplicate", "keyboard"],
            min_length=1,
            description="kinds of typo to draw from",
        )
        min_length: int = Field(3, ge=2, description="shorter words are left alone")

    def typo(self, word: str, rng: random.Random) -> str:
        letters = [i for i, c in enumerate(word) if c.isalpha()]
        if len(letters) < self.config.min_length:
            return word
        op = rng.choice(self.config.ops)
        if op == "swap":
            pairs = [
                i
                for i in letters
                if i + 1 < len(word) and word[i + 1].isalpha() and word[i] != word[i + 1]
            ]
            if not pairs:
                return word
            i = rng.choice(pairs)
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if op == "keyboard":
            keys = [i for i in letters if word[i].lower() in QWERTY_NEIGHBOURS]
            if not keys:
                return word
            i = rng.choice(keys)
            new = rng.choice(QWERTY_NEIGHBOURS[word[i].lower()])
            return word[:i] + (new.upper() if word[i].isupper() else new) + word[i + 1 :]
        i = rng.choice(letters)
        if op == "drop":
            return word[:i] + word[i + 1 :]
        return word[:i] + word[i] + word[i:]  # duplicate

    def augment_text(self, text: str, rng: random.Random) -> str:
        def one(match: re.Match[str]) -> str:
            word = match.group(0)
            if rng.random() >= self.config.rate or _PLACEHOLDER.search(word):
                return word
            return self.typo(word, rng)

        return _NONSPACE.sub(one, text)
