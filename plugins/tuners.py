"""Built-in tuners over config keys: grid, random, optuna (TPE and other samplers, pruning,
shared storage) and scikit-optimize (Bayesian optimisation with ``gp_minimize`` /
``forest_minimize`` / ``gbrt_minimize``).

optuna and scikit-optimize are imported inside ``search``: registering this plugin stays cheap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tuneforge import hookimpl
from tuneforge.components import StrictConfig, Trial, Tuner
from tuneforge.errors import ConfigError
from tuneforge.hookspecs import Register
from tuneforge.secrets import mask_uri

if TYPE_CHECKING:  # pragma: no cover - numpy is imported where it is used (fast start-up)
    import numpy as np

#: The optuna trial attribute that records each trial's run folder (any worker's).
RUN_DIR_ATTR = "tuneforge.run_dir"


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
        import numpy as np

        rng = np.random.default_rng(self.config.seed)
        params = [{k: sample(d, rng) for k, d in space.items()} for _ in range(self.config.trials)]
        return _run(objective, params)


def _plain(value: Any) -> Any:
    """NumPy scalars (from scikit-optimize) as plain Python values for the config."""
    import numpy as np

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

    #: Seconds a worker keeps retrying to set up a storage that other workers are creating.
    SETUP_PATIENCE = 60.0

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._study: Any = None  # the optuna study of the last search
        self._space: dict[str, Any] = {}

    def _storage(self) -> Any:
        """The RDB storage of ``storage`` (tables created if need be), or None for memory."""
        import optuna

        url = self.config.storage
        if url is None:
            return None
        engine: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Workers share the file: wait for each other's writes instead of failing at once.
            engine["connect_args"] = {"timeout": 60}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)

    def create_study(self, direction: str) -> Any:
        """Open (or create) the study; a storage that cannot be opened is a ``tuner.storage`` error.

        Workers started together on a new storage race to create its tables, its version row
        and the study itself; the loser of such a race (``table ... already exists``, a unique
        constraint, a locked database) waits a moment and tries again, for up to
        :attr:`SETUP_PATIENCE` seconds. Any other failure is reported at once.
        """
        import random
        import time

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        cfg = self.config
        deadline = time.monotonic() + self.SETUP_PATIENCE
        rng = random.Random()
        while True:
            try:
                return optuna.create_study(
                    storage=self._storage(),
                    sampler=self._sampler(),
                    pruner=self._pruner(),
                    study_name=cfg.study_name,
                    direction="maximize" if direction == "max" else "minimize",
                    load_if_exists=cfg.storage is not None,
                )
            except ValueError as exc:  # e.g. a direction that differs from the stored study's
                raise ConfigError("tuner.study_name", str(exc).splitlines()[0]) from None
            except Exception as exc:  # SQLAlchemy / driver errors: cannot open the storage
                if _set_up_race(exc) and time.monotonic() < deadline:
                    time.sleep(rng.uniform(0.05, 0.5))
                    continue
                raise self._storage_error("cannot open", exc) from None

    def _storage_error(self, what: str, exc: BaseException) -> ConfigError:
        if isinstance(exc, ImportError) and isinstance(exc.__cause__, ImportError):
            # optuna's "Failed to import DB access module": say which one.
            exc = ImportError(f"its database driver is not installed: {exc.__cause__}")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        url = mask_uri(self.config.storage or "")
        return ConfigError("tuner.storage", f"{what} {url}: {mask_uri(first)[:300]}")

    def search(self, space: dict[str, Any], objective: Any, direction: str) -> list[Trial]:
        import optuna
        from sqlalchemy.exc import SQLAlchemyError

        study = self.create_study(direction)
        self._study, self._space = study, space
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
            if trial.run_dir is not None:  # where this trial's folder is, for every worker
                ot.set_user_attr(RUN_DIR_ATTR, trial.run_dir)
            if trial.state == "pruned":
                raise optuna.TrialPruned()
            if trial.state == "failed" or value is None or not math.isfinite(value):
                raise _Failed()
            return value

        try:
            study.optimize(
                run_one,
                n_trials=self.config.trials,
                timeout=self.config.timeout,
                catch=(_Failed,),
                gc_after_trial=True,
            )
        except SQLAlchemyError as exc:  # the shared storage went away during the study
            raise self._storage_error("lost", exc) from None
        return trials

    def study_trials(self) -> list[Trial]:
        """Every trial of the study in its storage: this search's, other workers' and earlier
        runs' (those still running included, state ``running``)."""
        study, space = self._study, self._space
        if study is None:
            return []
        states = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
        out = []
        for ft in study.get_trials(deepcopy=False):
            params = {}
            for key, value in ft.params.items():
                dist = space.get(key)
                if dist is not None and dist.kind == "choice" and _categorical(dist.choice)[1]:
                    value = dist.choice[value] if 0 <= value < len(dist.choice) else value
                params[key] = value
            seconds = ft.duration.total_seconds() if ft.duration is not None else 0.0
            out.append(
                Trial(
                    number=ft.number,
                    params=params,
                    value=ft.value,
                    state=states.get(ft.state.name, ft.state.name.lower()),
                    seconds=seconds,
                    run_dir=ft.user_attrs.get(RUN_DIR_ATTR),
                    intermediate=dict(ft.intermediate_values),
                )
            )
        return out


def _set_up_race(exc: BaseException) -> bool:
    """Whether ``exc`` is another worker creating the same storage or study at the same moment."""
    text = str(exc).lower()
    return any(
        sign in text
        for sign in (
            "already exists",  # CREATE TABLE (sqlite), a relation or type (PostgreSQL)
            "unique constraint",  # the version row or the study name, inserted twice (sqlite)
            "duplicate key",  # the same on PostgreSQL
            "database is locked",
            "deadlock detected",
            "could not serialize",
        )
    )


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
