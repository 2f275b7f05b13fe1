"""Built-in tuners: grid search and random search over config keys."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import StrictConfig, Trial, Tuner
from tuneforge.hookspecs import Register


def sample(dist: Any, rng: np.random.Generator) -> Any:
    """Draw one value from a search-space :class:`~tuneforge.config.Distribution`."""
    kind = dist.kind
    if kind == "choice":
        return dist.choice[int(rng.integers(len(dist.choice)))]
    if kind == "uniform":
        lo, hi = dist.uniform
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        lo, hi = dist.loguniform
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    lo, hi = dist.int
    return int(rng.integers(lo, hi + 1))


def _run(
    objective: Callable[[dict[str, Any]], float], params_list: list[dict[str, Any]]
) -> list[Trial]:
    trials = []
    for number, params in enumerate(params_list):
        trial = Trial(number=number, params=params)
        objective(trial)  # the objective fills value/state/seconds/run_dir
        trials.append(trial)
    return trials


class GridSearch(Tuner):
    """Every combination of the ``choice`` (and ``int``) entries of the search space."""

    class Config(StrictConfig):
        max_trials: int | None = Field(None, ge=1, description="stop after this many combinations")

    def validate_space(self, space: dict[str, Any]) -> None:
        for key, dist in space.items():
            if dist.kind not in ("choice", "int"):
                raise ValueError(f"grid search needs choice or int entries; {key} is {dist.kind}")

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        self.validate_space(space)
        axes = []
        for key, dist in space.items():
            if dist.kind == "choice":
                axes.append([(key, v) for v in dist.choice])
            elif dist.kind == "int":
                lo, hi = dist.int
                axes.append([(key, v) for v in range(lo, hi + 1)])
        combos = [dict(c) for c in itertools.product(*axes)]
        if self.config.max_trials:
            combos = combos[: self.config.max_trials]
        return _run(objective, combos)


class RandomSearch(Tuner):
    """Independent random draws from the search space (seeded)."""

    class Config(StrictConfig):
        trials: int = Field(8, ge=1)
        seed: int = 0

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        rng = np.random.default_rng(self.config.seed)
        params = [{k: sample(d, rng) for k, d in space.items()} for _ in range(self.config.trials)]
        return _run(objective, params)


@hookimpl
def register_tuners(register: Register) -> None:
    register("grid", GridSearch)
    register("random", RandomSearch)
