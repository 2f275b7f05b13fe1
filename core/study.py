"""Studies: a tuner's trials (``tuner:``) and model selection (``model.candidates``), each trial
a training run in a replica folder, the winner tested once."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import tuneforge
from tuneforge.components import (
    Trial,
    TrialPruned,
)
from tuneforge.config import (
    ComponentRef,
    build_config,
    instantiate,
)
from tuneforge.errors import ConfigError, PluginError, UserError
from tuneforge.prepare import Log, Prepared, prepare
from tuneforge.run import RunFolder
from tuneforge.training import (
    Outcome,
    close_failed,
    end_run,
    finish,
    model_label,
    resource_info,
    train,
)


def _space_probes(dist: Any) -> list[Any]:
    kind = dist.kind
    # a Distribution's own field (uniform, loguniform, int), by name
    return list(dist.choice) if kind == "choice" else list(getattr(dist, kind))


def _study_summary(trials: list[Trial], sign: int) -> dict[str, Any]:
    """The study's best completed trial and its trial counts by state."""
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    done = [
        t for t in trials if t.state == "complete" and t.value is not None and np.isfinite(t.value)
    ]
    top = max(done, key=lambda t: (sign * t.value, -t.number)) if done else None
    best = (
        None
        if top is None
        else {"trial": top.number, "value": top.value, "params": top.params, "run_dir": top.run_dir}
    )
    return {"best": best, "counts": {"total": len(trials), **counts}}


def _describe_best(best: dict[str, Any], monitor: str) -> str:
    where = f" ({best['run_dir']})" if best.get("run_dir") else ""
    return f"trial {best['trial']}: {monitor} {best['value']:.4f} with {best['params']}{where}"


def _no_winner(
    study: RunFolder,
    trials: list[Trial],
    summary: dict[str, Any],
    tuner: str,
    monitor: str,
    log: Log,
) -> Path:
    """End a study run none of whose own trials completed.

    Failures only: an error. Pruned trials are the tuner at work, not failures: when the study
    (shared with other workers or earlier runs) has a completed trial, this run has done its
    share; its folder records its trials and the study's best, with no model of its own, and
    the exit status is 0. When no trial of the whole study completed, the pruner stopped
    everything: an error that says so.
    """
    pruned = sum(t.state == "pruned" for t in trials)
    failed = sum(t.state == "failed" for t in trials)
    if not pruned:
        raise UserError("every trial failed; see the messages above")
    mine = f"{pruned} pruned" + (f", {failed} failed" if failed else "")
    best = summary["best"]
    if best is None:
        raise UserError(
            f"no trial completed ({mine}): the pruner stopped every trial of the study; "
            "prune later (tuner.warmup_epochs, tuner.startup_trials) or set tuner.pruner: none"
        )
    study.write_json(
        "metrics.json",
        {
            "study": {
                "tuner": tuner,
                "trials": len(trials),
                "best_trial": None,
                "study_best": best,
                "study_trials": summary["counts"],
            }
        },
    )
    study.write_json(
        "run.json",
        {
            "status": "pruned",
            "tuneforge": tuneforge.__version__,
            "why": f"no trial of this run completed ({mine}); nothing was tested here",
            "finished": time.time(),
        },
    )
    final = study.commit()
    log.result(
        f"no trial of this run completed ({mine}); nothing was tested here. "
        f"Best trial of the study: {_describe_best(best, monitor)}"
    )
    log.result(f"study folder: {final}")
    return final


@dataclass
class Study:
    """One study's state while its tuner searches: the study folder, the objective's sign and
    the best trial so far (its outcome, prepared config and :class:`Trial`)."""

    prep: Prepared
    raw: dict[str, Any]
    overrides: list[tuple[str, Any]]
    log: Log
    folder: RunFolder
    best_outcome: Outcome | None = None
    best_prep: Prepared | None = None
    best_trial: Trial | None = None
    #: With ``trainer.seeds``: each trial's best validation value per seed (trial number ->
    #: values in seed order); the trial's objective is their mean.
    seed_values: dict[int, list[float]] = field(default_factory=dict)

    @property
    def sign(self) -> int:
        return 1 if self.prep.mode == "max" else -1

    @property
    def monitor(self) -> str:
        return f"val.{self.prep.monitor}"

    def trial_dir(self, number: int, final: bool = False) -> Path:
        return (self.folder.final if final else self.folder.path) / "trials" / f"trial_{number:03d}"


def run_study(
    prep: Prepared,
    raw: dict[str, Any],
    overrides: list[tuple[str, Any]],
    log: Log,
    overwrite: bool,
    started: float,
) -> Path:
    """A tuner study: each trial is a run folder under ``trials/``; the best is tested once."""
    cfg = prep.config
    assert cfg.tuner is not None
    tuner = _tuner(prep, raw, overrides)
    folder = RunFolder(cfg.output.dir, overwrite=overwrite or cfg.output.overwrite)
    study = Study(
        prep, raw, [(k, v) for k, v in overrides if not k.startswith("tuner")], log, folder
    )
    try:
        trials = tuner.search(cfg.tuner.space, lambda trial: _objective(study, trial), prep.mode)
        _write_tables(study, trials)
        prep.pm.hook.on_study_end(
            study_dir=folder.path,
            trials=trials,
            space=cfg.tuner.space,
            monitor=study.monitor,
            direction=prep.mode,
        )
        summary = _study_summary(tuner.study_trials() or trials, study.sign)
        if study.best_trial is None:
            return _no_winner(folder, trials, summary, cfg.tuner.name, study.monitor, log)
        outcome, extra = _winner(study, trials, summary)
        return finish(outcome, study.best_prep, log, started, extra)
    except BaseException as exc:
        error = close_failed(folder, exc, log)
        if error is exc:
            raise
        raise error from exc


def _tuner(prep: Prepared, raw: dict[str, Any], overrides: list[tuple[str, Any]]) -> Any:
    """The config's tuner, after checking that every searched key takes its range's values."""
    tuner_ref = prep.config.tuner
    assert tuner_ref is not None
    tuner = instantiate(
        prep.pm.registries,
        "tuners",
        ComponentRef.model_validate({"name": tuner_ref.name, **tuner_ref.params}),
        "tuner",
    )
    if not tuner_ref.space:
        raise ConfigError("tuner.space", "empty: give at least one key to search, e.g. trainer.lr")
    try:
        tuner.validate_space(tuner_ref.space)
    except ValueError as exc:
        raise ConfigError("tuner.space", str(exc)) from None
    base_raw = {k: v for k, v in raw.items() if k != "tuner"}
    base_overrides = [(k, v) for k, v in overrides if not k.startswith("tuner")]
    for key, dist in tuner_ref.space.items():
        # Every searched key must exist and accept the range's values.
        for value in _space_probes(dist):
            try:
                prepare(
                    build_config(base_raw, base_overrides + [(key, value)]), prep.base_dir, prep.pm
                )
            except ConfigError as exc:
                raise ConfigError(
                    f"tuner.space.{key}", f"value {value!r} is not valid: {exc}"
                ) from None
    return tuner


def _objective(study: Study, trial: Trial) -> float:
    """Train one trial into ``trials/trial_NNN`` and return its best validation value (NaN for
    a pruned or failed trial); the best trial's outcome is kept for the final test."""
    t0 = time.time()
    trial_raw = copy.deepcopy(study.raw)
    trial_raw.pop("tuner", None)
    trial_cfg = build_config(trial_raw, study.overrides + list(trial.params.items()))
    trial_cfg.output.dir = study.trial_dir(trial.number)
    seeds = list(trial_cfg.trainer.seeds or ())
    if seeds:  # the first seed's run is the trial's folder (pruned, tested if it wins)
        trial_cfg.trainer.seed = seeds[0]
    study.log(f"trial {trial.number}: {trial.params}")
    trial_prep = prepare(trial_cfg, study.prep.base_dir, study.prep.pm)
    folder = RunFolder(trial_cfg.output.dir)
    study.folder.training_started = True
    monitor = f"val.{trial_prep.monitor}"

    def after_epoch(epoch: int, row: dict[str, float]) -> None:
        value = float(row.get(monitor, float("nan")))
        trial.intermediate[epoch] = value
        if trial.report is not None and trial.report(epoch, value):
            raise TrialPruned(f"{monitor} {value:.4f} after epoch {epoch}")

    try:
        outcome = train(
            trial_prep, folder, study.log, trial=trial.number, epoch_callback=after_epoch
        )
    except TrialPruned as exc:  # the tuner stopped an unpromising trial: keep its folder
        finite = [v for v in trial.intermediate.values() if np.isfinite(v)]
        trial.value = (max if study.sign > 0 else min)(finite) if finite else None
        trial.state, trial.seconds = "pruned", time.time() - t0
        folder.commit(
            {"status": "pruned", "trial": trial.number, "params": trial.params, "why": str(exc)}
        )
        trial.run_dir = str(study.trial_dir(trial.number, final=True))
        study.log(f"trial {trial.number} pruned: {exc}")
        return float("nan")
    except UserError as exc:  # this trial's settings fail (say, the loss diverges): go on
        trial.state, trial.seconds = "failed", time.time() - t0
        if folder.training_started:
            kept = folder.fail(exc)
            trial.run_dir = str(study.folder.final / "trials" / kept.name)
        else:
            folder.abort()
        if isinstance(exc, PluginError):  # a plugin's bug, not this trial's settings: stop
            raise
        study.log(f"trial {trial.number} failed: {exc}")
        return float("nan")
    except BaseException as exc:  # the study stops: keep what this trial logged
        error = close_failed(folder, exc, study.log)
        if error is exc:
            raise
        raise error from exc
    _commit_trial(study, trial, trial_prep, folder, outcome, keep_best=len(seeds) < 2)
    if len(seeds) > 1:
        first_dir = trial.run_dir
        values = [trial.value] + _other_seeds(study, trial, trial_cfg, seeds[1:])
        trial.run_dir = first_dir
        finite = [v for v in values if v is not None and np.isfinite(v)]
        study.seed_values[trial.number] = [float("nan") if v is None else v for v in values]
        if len(finite) < len(values):  # a seed failed: so did the trial
            trial.state, trial.value = "failed", None
        else:
            trial.value = float(np.mean(finite))
            study.log(f"trial {trial.number}: {monitor} mean {trial.value:.4f} over seeds {seeds}")
            _keep_if_best(study, trial, trial_prep, outcome)
    trial.seconds = time.time() - t0
    return trial.value if trial.value is not None else float("nan")


def _other_seeds(
    study: Study, trial: Trial, trial_cfg: Any, seeds: list[int]
) -> list[float | None]:
    """Train the trial's config again with each of ``seeds`` (``trials/trial_NNN-seed-S``,
    committed as trained, never tested); their best validation values (None: it failed)."""
    out: list[float | None] = []
    for seed in seeds:
        cfg = trial_cfg.model_copy(deep=True)
        cfg.trainer.seed = seed
        cfg.output.dir = study.trial_dir(trial.number).with_name(
            f"trial_{trial.number:03d}-seed-{seed}"
        )
        prep = prepare(cfg, study.prep.base_dir, study.prep.pm)
        folder = RunFolder(cfg.output.dir)
        try:
            outcome = train(prep, folder, study.log, trial=trial.number)
        except UserError as exc:
            if folder.training_started:
                folder.fail(exc)
            else:
                folder.abort()
            if isinstance(exc, PluginError):
                raise
            study.log(f"trial {trial.number}, seed {seed} failed: {exc}")
            out.append(None)
            continue
        except BaseException as exc:
            error = close_failed(folder, exc, study.log)
            if error is exc:
                raise
            raise error from exc
        _commit_trial(study, trial, prep, folder, outcome, keep_best=False)
        out.append(outcome.best_value)
    return out


def _commit_trial(
    study: Study,
    trial: Trial,
    trial_prep: Prepared,
    folder: RunFolder,
    outcome: Outcome,
    keep_best: bool = True,
) -> None:
    """Commit a trained trial's folder (``trained``: tested only if it wins) and, with
    ``keep_best``, keep it when it is the best so far."""
    try:
        folder.write_json("metrics.json", outcome.train_metrics)
        info = {"status": "trained", "trial": trial.number, "params": trial.params}
        info.update(resource_info(outcome.training))  # trainable parameters, peak memory
        outcome.context.run_dir = folder.commit(info, keep_lock=True)
    except BaseException as exc:
        end_run(trial_prep, outcome.context, {}, "failed")
        error = close_failed(folder, exc, study.log)
        if error is exc:
            raise
        raise error from exc
    try:
        end_run(trial_prep, outcome.context, outcome.train_metrics["val"], "trained")
    finally:
        folder.release()
    trial.value = outcome.best_value
    trial.state = "complete"
    trial.run_dir = str(study.trial_dir(trial.number, final=True))
    if keep_best:
        _keep_if_best(study, trial, trial_prep, outcome)


def _keep_if_best(study: Study, trial: Trial, trial_prep: Prepared, outcome: Outcome) -> None:
    """Keep ``trial`` as the study's best when its objective beats the best so far."""
    current = study.best_trial
    if trial.value is not None and (
        current is None or study.sign * trial.value > study.sign * current.value
    ):
        study.best_outcome, study.best_prep, study.best_trial = outcome, trial_prep, trial


def _write_tables(study: Study, trials: list[Trial]) -> None:
    """``trials.csv`` and, for model selection, ``candidates.csv`` (also logged)."""
    import pandas as pd

    rows = [
        {
            "number": t.number,
            **{f"params.{k}": v for k, v in t.params.items()},
            study.monitor: t.value,
            # trainer.seeds: the objective above is the mean of these, one per seed
            **(
                {f"{study.monitor} per seed": " ".join(f"{v:.6g}" for v in per_seed)}
                if (per_seed := study.seed_values.get(t.number)) is not None
                else {}
            ),
            "epochs": len(t.intermediate),
            "state": t.state,
            "seconds": round(t.seconds, 2),
        }
        for t in trials
    ]
    study.folder.write_text("trials.csv", pd.DataFrame(rows).to_csv(index=False))
    tuner_ref = study.prep.config.tuner
    if tuner_ref is None or "model" not in tuner_ref.space:
        return
    table = pd.DataFrame(  # model selection: a comparison table of the candidates
        [
            {
                "model": model_label(t.params["model"]),
                **{f"params.{k}": v for k, v in t.params.items() if k != "model"},
                study.monitor: t.value,
                "state": t.state,
                "epochs": len(t.intermediate),
                "seconds": round(t.seconds, 2),
            }
            for t in trials
        ]
    )
    study.folder.write_text("candidates.csv", table.to_csv(index=False))
    study.log("model selection:\n" + table.to_string(index=False))


def _winner(
    study: Study, trials: list[Trial], summary: dict[str, Any]
) -> tuple[Outcome, dict[str, Any]]:
    """Make the study folder the winner's run folder (``predict`` works on it, with
    ``best_config.yaml`` to rerun it alone); returns its outcome and the study's record."""
    import shutil

    winner, outcome, folder = study.best_trial, study.best_outcome, study.folder
    assert winner is not None and outcome is not None
    tuner_ref = study.prep.config.tuner
    assert tuner_ref is not None
    study.log(
        f"best trial {winner.number}: {study.monitor} {winner.value:.4f} with {winner.params}"
    )
    study_best = summary["best"]
    if study_best is not None and study_best["trial"] != winner.number:
        study.log(f"best trial of the study: {_describe_best(study_best, study.monitor)}")
    # The winner's resolved config (absolute paths), ready to run on its own.
    trial_dir = study.trial_dir(winner.number)
    best_yaml = yaml.safe_load((trial_dir / "config.yaml").read_text())
    best_yaml["output"]["dir"] = str(folder.final.parent / f"{folder.final.name}-best")
    best_yaml.pop("tuner", None)
    folder.write_yaml("best_config.yaml", best_yaml)
    for name in ("config.yaml", "labels.json", "split.json", "findings.json"):
        shutil.copy2(trial_dir / name, folder.path / name)
    shutil.copytree(trial_dir / "checkpoint", folder.path / "checkpoint")
    outcome.folder = folder
    outcome.context.run_dir, outcome.context.final_dir = folder.path, folder.final
    extra: dict[str, Any] = {
        "study": {
            "tuner": tuner_ref.name,
            "trials": len(trials),
            "best_trial": winner.number,
            "best_params": winner.params,
            # The whole study (every worker sharing its storage, earlier runs included).
            "study_best": summary["best"],
            "study_trials": summary["counts"],
        }
    }
    if "model" in winner.params:
        extra["study"]["selected_model"] = model_label(winner.params["model"])
    # In place: the winner's evaluate_test adds "tuning" and "test_details" to this dict.
    outcome.train_metrics["trial"] = winner.number
    return outcome, extra
