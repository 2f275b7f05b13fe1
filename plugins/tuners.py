"""Built-in tuners over config keys: grid, random, optuna (TPE and other samplers, pruning,
shared storage) and scikit-optimize (Bayesian optimisation with ``gp_minimize`` /
``forest_minimize`` / ``gbrt_minimize``).

optuna and scikit-optimize are imported inside ``search``: registering this plugin stays cheap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from tuneforge import hookimpl
from tuneforge.components import StrictConfig, Trial, Tuner
from tuneforge.errors import ConfigError
from tuneforge.hookspecs import Register
from tuneforge.secrets import mask_uri


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


def _plain(value: Any) -> Any:
    """NumPy scalars (from scikit-optimize) as plain Python values for the config."""
    return value.item() if isinstance(value, np.generic) else value


def _categorical(choices: list[Any]) -> tuple[list[Any], bool]:
    """Choices a tuner library can store (None/bool/int/float/str), or their indices."""
    plain = all(c is None or isinstance(c, bool | int | float | str) for c in choices)
    return (list(choices), False) if plain else (list(range(len(choices))), True)


class _Budget(StrictConfig):
    trials: int | None = Field(20, ge=1, description="number of trials (with timeout: at most)")
    timeout: float | None = Field(
        None, gt=0, description="wall-clock budget in seconds; no new trial starts after it"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _some_budget(self) -> _Budget:
        if self.trials is None and self.timeout is None:
            raise ValueError("give trials, timeout or both: a study needs a budget")
        return self


class OptunaTuner(Tuner):
    """optuna: TPE by default, pruning on the per-epoch validation metric, shared storage.

    Several processes or machines share one study through ``storage`` (``sqlite:///study.db``
    here; ``postgresql://user:pass@host/db`` the same way) and ``study_name``; running again with
    the same storage and name resumes the study (its earlier trials inform the sampler).
    """

    class Config(_Budget):
        sampler: Literal["tpe", "random", "cmaes", "gp", "qmc"] = Field(
            "tpe", description="optuna sampler by name"
        )
        pruner: Literal["none", "median", "successive-halving", "hyperband"] = Field(
            "median", description="stop unpromising trials on their per-epoch validation metric"
        )
        startup_trials: int = Field(
            5, ge=0, description="trials before the sampler and median pruner act"
        )
        warmup_epochs: int = Field(1, ge=0, description="epochs of a trial that are never pruned")
        storage: str | None = Field(
            None, description="optuna storage URL (e.g. sqlite:///study.db); default in memory"
        )
        study_name: str | None = Field(
            None, description="study name in the storage; needed to share or resume a study"
        )

    def _sampler(self) -> Any:
        import optuna

        cfg = self.config
        if cfg.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)
        if cfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=cfg.seed)
        if cfg.sampler == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)
        if cfg.sampler == "gp":
            return optuna.samplers.GPSampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)
        return optuna.samplers.QMCSampler(seed=cfg.seed)

    def _pruner(self) -> Any:
        import optuna

        cfg = self.config
        if cfg.pruner == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs
            )
        if cfg.pruner == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, cfg.warmup_epochs))
        if cfg.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.warmup_epochs))
        return optuna.pruners.NopPruner()

    def create_study(self, direction: str) -> Any:
        """Open (or create) the study; a storage that cannot be opened is a ``tuner.storage`` error."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cfg = self.config
        try:
            return optuna.create_study(
                storage=cfg.storage,
                sampler=self._sampler(),
                pruner=self._pruner(),
                study_name=cfg.study_name,
                direction="maximize" if direction == "max" else "minimize",
                load_if_exists=cfg.storage is not None,
            )
        except ValueError as exc:  # e.g. a direction that differs from the stored study's
            raise ConfigError("tuner.study_name", str(exc).splitlines()[0]) from None
        except Exception as exc:  # SQLAlchemy / driver errors: cannot open the storage
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            url = mask_uri(cfg.storage or "")
            raise ConfigError(
                "tuner.storage", f"cannot open {url}: {mask_uri(first)[:300]}"
            ) from None

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        import optuna

        study = self.create_study(direction)
        trials: list[Trial] = []
        encoded = {k: _categorical(d.choice) for k, d in space.items() if d.kind == "choice"}

        def suggest(ot: Any, key: str, dist: Any) -> Any:
            if dist.kind == "choice":
                choices, indexed = encoded[key]
                value = ot.suggest_categorical(key, choices)
                return dist.choice[value] if indexed else value
            if dist.kind == "int":
                return ot.suggest_int(key, *dist.int)
            if dist.kind == "loguniform":
                return ot.suggest_float(key, *dist.loguniform, log=True)
            return ot.suggest_float(key, *dist.uniform)

        class _Failed(Exception):
            pass

        def run_one(ot: Any) -> float:
            params = {k: suggest(ot, k, d) for k, d in space.items()}
            trial = Trial(number=ot.number, params=params)

            def report(epoch: int, value: float) -> bool:
                if not math.isfinite(value):
                    return False
                ot.report(value, epoch)
                return ot.should_prune()

            trial.report = report
            trials.append(trial)
            value = objective(trial)
            if trial.state == "pruned":
                raise optuna.TrialPruned()
            if trial.state == "failed" or value is None or not math.isfinite(value):
                raise _Failed()
            return value

        study.optimize(
            run_one,
            n_trials=self.config.trials,
            timeout=self.config.timeout,
            catch=(_Failed,),
            gc_after_trial=True,
        )
        return trials


class SkoptTuner(Tuner):
    """scikit-optimize: Bayesian optimisation (Gaussian process, random forest or boosted trees).

    Failed trials count as the worst value seen so far (the optimiser needs a number).
    """

    class Config(_Budget):
        trials: int | None = Field(16, ge=2, description="number of trials (n_calls)")
        method: Literal["gp", "forest", "gbrt"] = Field(
            "gp", description="gp_minimize, forest_minimize or gbrt_minimize"
        )
        initial_points: int = Field(
            5, ge=1, description="random trials before the surrogate model is used"
        )
        acquisition: Literal["gp_hedge", "EI", "PI", "LCB"] = "gp_hedge"

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        import time

        from skopt import forest_minimize, gbrt_minimize, gp_minimize
        from skopt.space import Categorical, Integer, Real

        cfg = self.config
        keys = list(space)
        dims, indexed = [], {}
        for key in keys:
            dist = space[key]
            if dist.kind == "choice":
                choices, indexed[key] = _categorical(dist.choice)
                dims.append(Categorical(choices, name=key))
            elif dist.kind == "int":
                dims.append(Integer(*dist.int, name=key))
            elif dist.kind == "loguniform":
                dims.append(Real(*dist.loguniform, prior="log-uniform", name=key))
            else:
                dims.append(Real(*dist.uniform, name=key))
        trials: list[Trial] = []
        sign = -1.0 if direction == "max" else 1.0
        deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
        n_calls = cfg.trials if cfg.trials is not None else 10_000

        def run_one(x: list[Any]) -> float:
            params = {}
            for key, value in zip(keys, x, strict=True):
                value = _plain(value)
                params[key] = space[key].choice[value] if indexed.get(key) else value
            trial = Trial(number=len(trials), params=params)
            trials.append(trial)
            value = objective(trial)
            if value is None or not math.isfinite(value):
                done = [t.value for t in trials if t.value is not None and math.isfinite(t.value)]
                return max((sign * v for v in done), default=0.0)
            return sign * value

        def out_of_time(_result: Any) -> bool:
            return deadline is not None and time.monotonic() >= deadline

        minimize = {"gp": gp_minimize, "forest": forest_minimize, "gbrt": gbrt_minimize}[cfg.method]
        minimize(
            run_one,
            dims,
            n_calls=n_calls,
            n_initial_points=min(cfg.initial_points, n_calls),
            acq_func=cfg.acquisition
            if cfg.method == "gp" or cfg.acquisition != "gp_hedge"
            else "EI",
            random_state=cfg.seed,
            callback=[out_of_time],
        )
        return trials


@hookimpl
def register_tuners(register: Register) -> None:
    register("grid", GridSearch)
    register("random", RandomSearch)
    register("optuna", OptunaTuner)
    register("skopt", SkoptTuner)
