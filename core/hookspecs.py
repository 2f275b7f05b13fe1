"""Hook specifications: the contract between tuneforge and its plugins.

Every behaviour of tuneforge comes from a plugin. A plugin is a module (or object) with
functions marked ``@tuneforge.hookimpl`` whose names match the specs below; it is declared
in the ``tuneforge`` entry-point group of its distribution's ``pyproject.toml``::

    [project.entry-points.tuneforge]
    my-plugin = "my_package.plugin"

**Registration hooks** hand the plugin a ``register(name, target, description="")`` callable.
``target`` is a class, a factory, or a lazy ``"module:Attr"`` string: use the string form so
that listing plugins does not import heavy libraries. The class should define a nested
pydantic ``Config`` model (``model_config = ConfigDict(extra="forbid")``) with the
parameters users may set in YAML next to ``name``; the component is built as ``Target(config)``.

**Lifecycle hooks** are called on every loaded plugin during a run; they observe and may
act (write files, log to a tracker). They receive a :class:`tuneforge.run.RunContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tuneforge import hookspec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pathlib import Path

    from tuneforge.components import Trial
    from tuneforge.run import RunContext


class Register(Protocol):
    """The callable passed to every ``register_<kind>`` hook."""

    def __call__(self, name: str, target: Any, description: str = "") -> Any: ...


@hookspec
def register_tasks(register: Register) -> None:
    """Register tasks: a task brings one modality's data loading, datasets and defaults.

    A task class implements :class:`tuneforge.components.Task`.

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_validators(register: Register) -> None:
    """Register data-quality validators (:class:`tuneforge.components.Validator`).

    A validator inspects the loaded data and returns findings; the pipeline applies each
    validator's ``policy`` (``warn``, ``drop`` or ``fail``).

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_balancers(register: Register) -> None:
    """Register class/target balancers (:class:`tuneforge.components.Balancer`).

    A balancer sees the training split only and returns a :class:`tuneforge.components.BalancePlan`
    (resampled indices, loss weights and/or sampler weights).

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_augmenters(register: Register) -> None:
    """Register augmenters (:class:`tuneforge.components.Augmenter`), applied to training examples only.

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers and preprocessors (the preprocessing stage).

    Tokenizers turn raw inputs into model inputs; preprocessors
    (:class:`tuneforge.components.Preprocessor`) transform raw inputs before the tokenizer.

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register model builders (:class:`tuneforge.components.ModelBuilder`).

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_tuners(register: Register) -> None:
    """Register hyperparameter tuners (:class:`tuneforge.components.Tuner`).

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics (:class:`tuneforge.components.Metric`).

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_callbacks(register: Register) -> None:
    """Register callbacks selected by name in ``callbacks:`` (loggers, trackers).

    A callback object implements any of the lifecycle hooks below as methods marked
    ``@tuneforge.hookimpl``; it is registered with the plugin manager for the duration of the run.

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_advisors(register: Register) -> None:
    """Register advisors (:class:`tuneforge.components.Advisor`) for ``tuneforge refine``.

    An advisor reads a finished run's history, findings and metrics and returns diagnoses
    (overfitting, divergence...) with the evidence and a config patch for the next round.

    :param register: ``register(name, target, description="")``.
    """


@hookspec
def register_commands(register: Register) -> None:
    """Register extra CLI sub-commands (:class:`tuneforge.components.Command`).

    :param register: ``register(name, target, description="")``.
    """


# -- lifecycle ------------------------------------------------------------------------------


@hookspec
def on_run_start(run: RunContext) -> None:
    """Called once the data is validated and split, before training starts.

    :param run: the run context (config, run folder, task data, split sizes, findings).
    """


@hookspec
def on_epoch_end(run: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """Called after each training epoch and its validation pass.

    :param run: the run context.
    :param epoch: the epoch just finished, counted from 1.
    :param metrics: train loss and every validation metric, keys like ``"val.accuracy"``.
    """


@hookspec
def on_evaluate(run: RunContext, split: str, metrics: dict[str, float]) -> None:
    """Called after any evaluation (``split`` is ``"val"`` or ``"test"``).

    :param run: the run context.
    :param split: which split was evaluated.
    :param metrics: metric name to value, without the split prefix.
    """


@hookspec
def on_log(run: RunContext, step: int, values: dict[str, float]) -> None:
    """Called with training values (loss, learning rate, throughput) every few steps.

    :param run: the run context.
    :param step: the optimizer step.
    :param values: name to value, for example ``{"train.loss": 0.41, "lr": 3e-5}``.
    """


@hookspec
def on_run_end(run: RunContext, metrics: dict[str, float], status: str) -> None:
    """Called once when the run ends, successfully or not.

    :param run: the run context.
    :param metrics: the final metrics: test metrics when completed, the best validation metrics
        for a tuner trial (``"trained"``: trials are never tested), empty when failed.
    :param status: ``"completed"``, ``"trained"`` (a tuner trial) or ``"failed"``.
    """


@hookspec
def on_evaluation_end(run_dir: Path, name: str, results: dict[str, Any]) -> None:
    """Called by ``tuneforge evaluate`` once an evaluation is saved in a completed run folder
    (``RUN/evaluations/NAME/``), e.g. to show it in the run's report.

    :param run_dir: the run folder.
    :param name: the evaluation's name (its folder under ``evaluations/``).
    :param results: what its ``metrics.json`` holds: the metrics (keys as in the run's
        ``metrics.json`` ``test`` section) and ``name``, ``input``, ``rows``, ``details``,
        ``notes``.
    """


@hookspec
def on_study_end(
    study_dir: Path, trials: list[Trial], space: dict[str, Any], monitor: str, direction: str
) -> None:
    """Called once a hyperparameter study has run its trials, before the winner is tested.

    :param study_dir: the study folder (``trials.csv`` is written; ``plots/`` is free to use).
    :param trials: every trial of this search, with params, value, state, seconds and the
        per-epoch validation values (``intermediate``).
    :param space: the search space: config key to :class:`tuneforge.config.Distribution`.
    :param monitor: the validation metric the study optimises, e.g. ``"val.accuracy"``.
    :param direction: ``"max"`` or ``"min"``.
    """
