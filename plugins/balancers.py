"""Built-in class balancers. They see the training split only."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import BalancePlan, Balancer, StrictConfig
from tuneforge.errors import UserError
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - numpy is imported where it is used (fast start-up)
    import numpy as np

    from tuneforge.data import TaskData


def _needs_classes(data: TaskData) -> None:
    """Class balancers need classes: a regression target gets a one-line hint instead."""
    if data.classes is None:
        raise UserError(
            "balancer: this balancer works on classes; for regression use target-bins "
            "(loss weights, optionally smoothed) or resample-bins"
        )


def _train_labels(data: TaskData, train_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class ids of the training rows and the count of each class."""
    import numpy as np

    _needs_classes(data)
    labels = data.subset(train_rows).label_ids()
    return labels, np.bincount(labels, minlength=len(data.classes or []))


class NoBalance(Balancer):
    """Use the training split as it is."""

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        return BalancePlan(note="no balancing")


class Oversample(Balancer):
    """Repeat rows of minority classes (with replacement) up to ``ratio`` x the largest class."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        ratio: float = Field(
            1.0, gt=0, le=1, description="target size of each class relative to the largest"
        )

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np

        labels, counts = _train_labels(data, train_rows)
        target = int(np.ceil(counts.max() * self.config.ratio))
        picks = [np.arange(len(labels))]
        for c, n in enumerate(counts):
            if 0 < n < target:
                members = np.flatnonzero(labels == c)
                picks.append(rng.choice(members, size=target - n, replace=True))
        idx = np.sort(np.concatenate(picks))
        return BalancePlan(indices=idx, note=f"oversampled minority classes to {target} rows")


class Undersample(Balancer):
    """Keep a random subset of majority classes, down to ``ratio`` x the smallest class."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        ratio: float = Field(
            1.0, ge=1, description="largest allowed class size relative to the smallest"
        )

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np

        labels, counts = _train_labels(data, train_rows)
        present = counts[counts > 0]
        cap = int(np.floor(present.min() * self.config.ratio))
        picks = []
        for c, n in enumerate(counts):
            members = np.flatnonzero(labels == c)
            picks.append(rng.choice(members, size=cap, replace=False) if n > cap else members)
        idx = np.sort(np.concatenate(picks))
        return BalancePlan(indices=idx, note=f"undersampled majority classes to {cap} rows")


class ClassWeights(Balancer):
    """Weight the loss by inverse class frequency (``n / (k * count_c)``, scikit-learn's "balanced")."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        power: float = Field(
            1.0, ge=0, le=1, description="0 = no weighting, 0.5 = square root, 1 = balanced"
        )

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np
        from sklearn.utils.class_weight import compute_class_weight

        _needs_classes(data)
        labels = data.subset(train_rows).label_ids()
        k = len(data.classes or [])
        present = np.unique(labels)
        w = np.ones(k, dtype=np.float64)
        w[present] = compute_class_weight("balanced", classes=present, y=labels)
        w = w**self.config.power
        return BalancePlan(class_weights=w, note="loss weights " + ", ".join(f"{x:.2f}" for x in w))


class WeightedSampler(Balancer):
    """Draw training rows with probability inversely proportional to their class size.

    Each epoch sees classes about equally often; under multi-process training Accelerate
    shards the sampler's batches, so each process draws its own part.
    """

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        power: float = Field(
            1.0, ge=0, le=1, description="1 = balanced, 0.5 = square root, 0 = none"
        )

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        import numpy as np

        labels, counts = _train_labels(data, train_rows)
        per_class = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0) ** self.config.power
        return BalancePlan(
            sample_weights=per_class[labels], note=f"weighted sampler (power {self.config.power:g})"
        )


class FocalLoss(Balancer):
    """Focal loss instead of cross-entropy: down-weights easy examples (optionally class-weighted)."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        gamma: float = Field(2.0, gt=0, le=10, description="focusing parameter")
        class_weights: bool = Field(False, description="also weight classes by inverse frequency")

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        weights = None
        if self.config.class_weights:
            weights = ClassWeights().plan(data, train_rows, rng).class_weights
        return BalancePlan(
            class_weights=weights,
            focal_gamma=self.config.gamma,
            note=f"focal loss (gamma {self.config.gamma:g})",
        )


@hookimpl
def register_balancers(register: Register) -> None:
    register("none", NoBalance)
    register("oversample", Oversample)
    register("undersample", Undersample)
    register("class-weights", ClassWeights)
    register("weighted-sampler", WeightedSampler)
    register("focal-loss", FocalLoss)
