"""Tabular augmenters: Gaussian feature noise and mixup (Zhang et al., 2018).

They act on the preprocessed training example (standardised numeric features, categorical
codes), so noise is in units of each column's train-split standard deviation.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from tuneforge.components import Augmenter, StrictConfig


class GaussianNoise(Augmenter):
    """Add ``N(0, sigma^2)`` noise to the standardised numeric features of a row."""

    modalities: ClassVar[frozenset[str]] = frozenset({"tabular"})

    class Config(StrictConfig):
        sigma: float = Field(0.05, gt=0, le=5, description="noise std in feature std units")
        p: float = Field(0.5, ge=0, le=1, description="probability per row")

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        if rng.random() >= self.config.p or not len(example["num"]):
            return example
        noise = np.random.default_rng(rng.getrandbits(32)).normal(
            0.0, self.config.sigma, size=len(example["num"])
        )
        return {**example, "num": (example["num"] + noise).astype(np.float32)}


class Mixup(Augmenter):
    """Mix a row with a random partner: ``lam * a + (1 - lam) * b``, ``lam ~ Beta(alpha, alpha)``.

    Numeric features and targets (class probabilities for classification) are mixed; each
    categorical value is taken from the row with the larger weight.
    """

    modalities: ClassVar[frozenset[str]] = frozenset({"tabular"})

    class Config(StrictConfig):
        alpha: float = Field(0.2, gt=0, le=10, description="Beta distribution parameter")
        p: float = Field(0.5, ge=0, le=1, description="probability per row")

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return example  # mixing needs a partner row: the dataset calls mix()

    def mix(
        self, example: dict[str, Any], partner: dict[str, Any], rng: random.Random
    ) -> dict[str, Any]:
        if rng.random() >= self.config.p:
            return example
        lam = rng.betavariate(self.config.alpha, self.config.alpha)
        lam = max(lam, 1.0 - lam)  # the row stays the dominant one
        out = {
            "num": (lam * example["num"] + (1 - lam) * partner["num"]).astype(np.float32),
            "cat": example["cat"],
        }
        if "label" in example:
            a = np.asarray(example["label"], dtype=np.float32)
            b = np.asarray(partner["label"], dtype=np.float32)
            out["label"] = lam * a + (1 - lam) * b
        return out
