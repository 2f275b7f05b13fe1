"""Text augmentation applied on the fly to training examples."""

from __future__ import annotations

import random
from typing import Any, ClassVar

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
