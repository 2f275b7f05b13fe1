"""Repeated runs: cross-validation (``split.folds: K``) and repeated seeds (``trainer.seeds``).

A repeated run is one run folder (the parent) whose members are complete ordinary runs in
``members/fold-1 ... fold-K`` or ``members/seed-S``, each trained and tested by
:func:`tuneforge.training.train` and :func:`tuneforge.training.finish`. The parent records
the members (``members.json``), every metric's values over the members with their mean,
standard deviation and 95% t-interval (``metrics.json`` ``repeats``), and tests its model, the
ensemble of the members (the mean of their logits), once on the shared test split: the
seeds' split, or a given test split with folds. Cross-validation without a given test split
has no rows left for the ensemble: its ``test`` is the mean of the folds' held-out scores.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import UserError
from tuneforge.predict import MEMBERS_FILE, ensemble_outputs
from tuneforge.prepare import Log, Prepared, fold_holdout, prepare
from tuneforge.run import RunContext, RunFolder
from tuneforge.split import Split
from tuneforge.training import (
    Outcome,
    baseline_advice,
    close_failed,
    end_run,
    evaluate_metrics,
    finish,
    run_info,
    train,
)

#: ``metrics.json`` ``test_is`` for each way the parent's ``test`` is made.
TEST_IS_ENSEMBLE = "the members' ensemble (mean of their logits) on the test split"
TEST_IS_FOLD_MEAN = "mean of folds' held-out scores"


@dataclass
class Member:
    """One member of a repeated run: its name, fold (0-based, with folds) and trainer seed."""

    name: str
    fold: int | None
    seed: int
    final: Path | None = None
    outcome: Outcome | None = None
    metrics: dict[str, Any] | None = None


def plan(prep: Prepared) -> tuple[str, list[Member]]:
    """The kind (``folds`` or ``seeds``) and the members of a repeated run."""
    cfg = prep.config
    if cfg.split.folds is not None:
        k = cfg.split.folds
        return "folds", [Member(f"fold-{j + 1}", j, cfg.trainer.seed) for j in range(k)]
    seeds = list(cfg.trainer.seeds or ())
    return "seeds", [Member(f"seed-{s}", None, s) for s in seeds]


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1) and 95% t-interval of the finite ``values``."""
    from scipy import stats

    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": n}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def run_repeated(prep: Prepared, log: Log, overwrite: bool, started: float) -> Path:
    """Train every member into ``RUN/members/``, then test the ensemble and commit the parent.

    A member's failure fails the parent with a one-line error naming the member; the members
    that completed are kept in the failed parent's folder.
    """
    kind, members = plan(prep)
    folder = RunFolder(prep.config.output.dir, overwrite=overwrite)
    try:
        for member in members:
            _train_member(prep, folder, member, log)
        return _commit_parent(prep, folder, kind, members, log, started)
    except BaseException as exc:
        error = close_failed(folder, exc, log)
        if error is exc:
            raise
        raise error from exc


def _member_prep(prep: Prepared, folder: RunFolder, member: Member) -> Prepared:
    cfg = prep.config.model_copy(deep=True)
    cfg.split.folds = None
    cfg.trainer.seeds = None
    cfg.trainer.seed = member.seed
    cfg.output.dir = folder.path / "members" / member.name
    cfg.output.overwrite = False
    mprep = prepare(cfg, prep.base_dir, prep.pm)
    if member.fold is not None:
        mprep.fold = (member.fold, prep.config.split.folds or 0)
    return mprep


def _train_member(prep: Prepared, parent: RunFolder, member: Member, log: Log) -> None:
    """Train and test one member as an ordinary run (its folder committed under the parent)."""
    log(f"== {member.name} ==")
    t0 = time.time()
    mprep = _member_prep(prep, parent, member)
    folder = RunFolder(mprep.config.output.dir)
    try:
        try:
            outcome = train(mprep, folder, log)
            if folder.training_started:
                parent.training_started = True  # from here on, what the members did is kept
            member.final = finish(outcome, mprep, log, t0, member=member.name)
        except BaseException as exc:
            if folder.training_started:
                parent.training_started = True
            error = close_failed(folder, exc, log)
            if error is exc:
                raise
            raise error from exc
    except UserError as exc:
        if not parent.training_started:  # nothing trained yet: the error as it is
            raise
        raise UserError(f"member {member.name} failed: {exc}") from exc
    member.outcome = outcome
    member.metrics = json.loads((member.final / "metrics.json").read_text(encoding="utf-8"))


def _values(members: list[Member]) -> dict[str, list[float]]:
    """``val.<metric>`` and ``test.<metric>`` over the members (in member order)."""
    out: dict[str, list[float]] = {}
    for section in ("val", "test"):
        names: list[str] = []
        for m in members:
            assert m.metrics is not None
            names += [n for n in m.metrics.get(section, {}) if n not in names]
        for name in names:
            out[f"{section}.{name}"] = [
                float(m.metrics.get(section, {}).get(name, float("nan")))  # type: ignore[union-attr]
                for m in members
            ]
    return out


def _ensemble_test(
    members: list[Member], rows: np.ndarray, train_rows: np.ndarray, log: Log
) -> tuple[dict[str, float], dict[str, Any], Any]:
    """The members' ensemble on ``rows``: metrics (with the task's baselines, fitted on
    ``train_rows``), test details and the prediction frame."""
    last = members[-1].outcome
    assert last is not None and last.training is not None
    run = last.training
    mprep, task, data = run.prep, run.prep.task, run.data
    ckpts = [m.final / "checkpoint" for m in members if m.final is not None]
    seed = mprep.config.trainer.seed
    logits, labels = ensemble_outputs(
        ckpts, mprep.config, task, lambda: task.make_dataset(data, rows, [], seed), log
    )
    metrics = evaluate_metrics(mprep, logits, labels, task.loss_fn(None))
    split = Split(np.asarray(train_rows), np.asarray([], dtype=int), np.asarray(rows))
    metrics.update(task.baselines(data, split, mprep.metrics))
    details = task.test_details(data, rows, logits, labels)
    return metrics, details, task.prediction_frame(data, rows, logits, labels)


def _commit_parent(
    prep: Prepared,
    folder: RunFolder,
    kind: str,
    members: list[Member],
    log: Log,
    started: float,
) -> Path:
    import pandas as pd
    import yaml

    first, last = members[0], members[-1]
    assert first.final is not None and last.outcome is not None
    run = last.outcome.training
    assert run is not None
    values = _values(members)
    summary = {key: summarize(v) for key, v in values.items()}
    fm = first.metrics or {}
    holdout = fold_holdout(run.prep, run.data) if kind == "folds" else None
    details: dict[str, Any] = {}
    if kind == "seeds" or holdout is not None:
        rows = run.split.test if kind == "seeds" else holdout
        train_rows = (
            run.split.train
            if kind == "seeds"
            else run.data.frame.index[~run.data.frame.index.isin(rows)].to_numpy()
        )
        log(f"ensemble of {len(members)} members on {len(rows)} test rows")
        test, details, predictions = _ensemble_test(members, rows, train_rows, log)
        test_is = TEST_IS_ENSEMBLE
    else:
        test = {k[5:]: s["mean"] for k, s in summary.items() if k.startswith("test.")}
        frames = [pd.read_csv(m.final / "predictions_test.csv") for m in members if m.final]
        predictions = pd.concat(frames).sort_values("row")  # out-of-fold predictions
        test_is = TEST_IS_FOLD_MEAN
    best = [v for v in values.get(str(fm.get("monitor")), []) if math.isfinite(v)]
    metrics: dict[str, Any] = {
        "monitor": fm.get("monitor"),
        "monitor_mode": fm.get("monitor_mode"),
        "best_value": float(np.mean(best)) if best else None,
        "train_seconds": sum(float((m.metrics or {}).get("train_seconds") or 0) for m in members),
        "val": {k[4:]: s["mean"] for k, s in summary.items() if k.startswith("val.")},
        "test": test,
        "test_is": test_is,
        "final": "ensemble",
        "repeats": {
            "kind": kind,
            "n": len(members),
            "members": [m.name for m in members],
            "seeds": [m.seed for m in members],
            "values": values,
            "summary": summary,
        },
    }
    if details:
        metrics["test_details"] = details
    advice = baseline_advice(test, prep.metrics, prep.monitor)
    if advice:
        metrics["recommendations"] = advice
    names = [f"members/{m.name}" for m in members]
    folder.write_json(MEMBERS_FILE, {"kind": kind, "members": names, "final": "ensemble"})
    # The members' records, with the parent's own settings where they differ.
    config = yaml.safe_load((first.final / "config.yaml").read_text(encoding="utf-8"))
    config["split"]["folds"] = prep.config.split.folds
    config["trainer"]["seeds"] = prep.config.trainer.seeds
    config["trainer"]["seed"] = prep.config.trainer.seed
    config["output"]["dir"] = str(folder.final)
    folder.write_yaml("config.yaml", config)
    for name in ("labels.json", "findings.json"):
        shutil.copy2(first.final / name, folder.path / name)
    folder.write_json("split.json", _split_record(kind, members, holdout))
    folder.write_json("metrics.json", metrics)
    folder.write_text("predictions_test.csv", predictions.to_csv(index=False))
    _show(log, kind, members, metrics)
    ctx = RunContext(
        config=prep.config,
        run_dir=folder.path,
        final_dir=folder.final,
        task=prep.config.task.name,
        problem=prep.task.problem,
        classes=run.data.classes,
        split_sizes={"test": len(predictions)},
        findings=run.ctx.findings,
    )
    info = {**run_info(prep, started), "repeats": kind, "members": len(members)}
    try:
        final = folder.commit(info, keep_lock=True)
    except BaseException:
        end_run(prep, ctx, {}, "failed")
        raise
    ctx.run_dir = final
    try:
        end_run(prep, ctx, test, "completed")
    finally:
        folder.release()
    log.result(f"run folder: {final}")
    return final


def _split_record(kind: str, members: list[Member], holdout: np.ndarray | None) -> dict[str, Any]:
    """``split.json`` of the parent: each member's rows; ``test``, the rows its test is on."""
    splits = {}
    for m in members:
        assert m.final is not None
        record = json.loads((m.final / "split.json").read_text(encoding="utf-8"))
        splits[m.name] = {k: record.get(k, []) for k in ("train", "val", "test")}
    out: dict[str, Any] = {"kind": kind, "members": splits}
    if kind == "seeds":  # one split for every member
        first = next(iter(splits.values()))
        out.update(first)
        out["notes"] = [f"the same split for the {len(members)} seeds"]
    elif holdout is not None:
        out["test"] = sorted(int(r) for r in holdout)
        out["notes"] = [f"{len(members)} folds; the given test split is in none of them"]
    else:
        out["test"] = sorted(int(r) for s in splits.values() for r in s["test"])
        out["notes"] = [f"{len(members)} folds; test: every fold's held-out rows"]
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _show(log: Log, kind: str, members: list[Member], metrics: dict[str, Any]) -> None:
    """A table of the members' best validation value and test metrics, then each metric's
    mean +- std [95% interval]."""
    import pandas as pd

    repeats = metrics["repeats"]
    values = repeats["values"]
    monitor = metrics.get("monitor") or ""
    keys = [monitor] if monitor in values else []
    keys += [k for k in values if k.startswith("test.") and "baseline" not in k]
    table = pd.DataFrame(
        {"member": [m.name for m in members], **{k: [_fmt(x) for x in values[k]] for k in keys}}
    )
    log.result(f"{kind}: {len(members)} members\n" + table.to_string(index=False))
    for key in keys:
        s = repeats["summary"][key]
        ci = s["ci95"]
        interval = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        log.result(f"  {key}: {_fmt(s['mean'])} ± {_fmt(s['std'])}{interval} (95% t-interval)")
    test = metrics["test"]
    shown = "  ".join(f"{k} {_fmt(v)}" for k, v in test.items())
    log.result(f"test ({metrics['test_is']}): {shown}")
    for line in metrics.get("recommendations", []):
        log.result(f"recommendation: {line}")
