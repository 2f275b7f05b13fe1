"""One optuna study spread over worker processes: started together on a new storage (sqlite, and a
real PostgreSQL server started by the test), re-runs whose trials are all pruned, and the study's
best reported in every worker's folder."""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import TUNEFORGE, ok, run_cli

SPACE = {"trainer.lr": {"choice": [3e-3, 1e-7]}}


def optuna_tuner(storage: str, **extra) -> dict:
    return {
        "name": "optuna",
        "trials": 2,
        "sampler": "random",
        "pruner": "none",
        "storage": storage,
        "study_name": "shared",
        "space": SPACE,
        **extra,
    }


# -- the storage set-up race, at its tightest ------------------------------------------------


def _open_study(url: str, barrier: Any, out: Path) -> None:
    from tuneforge.plugins.tuners import OptunaTuner

    tuner = OptunaTuner(OptunaTuner.Config(storage=url, study_name="race"))
    barrier.wait()  # every process opens the new storage at the same instant
    try:
        tuner.create_study("max")
        out.write_text("ok")
    except Exception as exc:
        out.write_text(f"{type(exc).__name__}: {exc}")


def test_workers_opening_a_new_storage_at_the_same_instant_all_get_the_study(
    tmp_path: Path,
) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier = ctx.Barrier(4)
        outs = [tmp_path / f"out{attempt}-{i}.txt" for i in range(4)]
        procs = [ctx.Process(target=_open_study, args=(url, barrier, o)) for o in outs]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [o.read_text() for o in outs] == ["ok"] * 4

        import optuna

        assert optuna.get_all_study_names(url) == ["race"]  # one study, not four


# -- two workers through the CLI -----------------------------------------------------------------


def start_worker(cfg: Path, out: Path, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(TUNEFORGE), "run", str(cfg), "-q", "--set", f"output.dir={out}", *extra],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_two_workers(project, storage: str, trials: int, seeds: tuple[int, int] = (1, 2)) -> None:
    cfg = project.config(tuner=optuna_tuner(storage, trials=trials), trainer={"epochs": 1})
    outs = [project.root / "runs" / name for name in ("worker-a", "worker-b")]
    procs = [
        start_worker(cfg, out, project.root, "--set", f"tuner.seed={seed}")
        for out, seed in zip(outs, seeds, strict=True)
    ]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout + stderr

    import optuna

    stored = optuna.load_study(study_name="shared", storage=storage)
    total = 2 * trials
    assert sorted(t.number for t in stored.trials) == list(range(total))
    assert {t.state.name for t in stored.trials} == {"COMPLETE"}
    numbers = [pd.read_csv(out / "trials.csv")["number"].tolist() for out in outs]
    assert len(numbers[0]) == len(numbers[1]) == trials
    assert sorted(numbers[0] + numbers[1]) == list(range(total))  # each added its own trials
    best = stored.best_trial
    reports = [json.loads((out / "metrics.json").read_text())["study"] for out in outs]
    for out, report, own in zip(outs, reports, numbers, strict=True):
        assert report["trials"] == trials and report["best_trial"] in own
        seen = report["study_best"]  # the study's best when this worker ended
        assert seen["value"] >= report_value(out, report["best_trial"])
        assert stored.trials[seen["trial"]].value == seen["value"]
        assert seen["run_dir"].endswith(f"trials/trial_{seen['trial']:03d}")
        assert best.value >= seen["value"]
        assert trials <= report["study_trials"]["total"] <= total


def report_value(out: Path, number: int) -> float:
    trials = pd.read_csv(out / "trials.csv")
    return float(trials.loc[trials["number"] == number, "val.accuracy"].iloc[0])


def test_two_workers_started_together_share_one_new_sqlite_study(project) -> None:
    check_two_workers(project, f"sqlite:///{project.root / 'study.db'}", trials=2)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own, on a free loopback port, for the length of one test."""
    # SQLAlchemy 2 opens postgresql:// URLs with psycopg (3).
    pytest.importorskip(
        "psycopg", reason="needs the psycopg driver (pip install 'psycopg[binary]')"
    )
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("needs the PostgreSQL server (apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parents are closed to every user but root.
    home = Path(tempfile.mkdtemp(prefix="tuneforge-pg-"))
    try:
        if as_user:
            shutil.chown(home, "postgres")
        data, port = home / "data", _free_port()
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-t", "60"]
            + ["-l", str(home / "server.log"), "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_started_together_share_one_new_postgresql_study(
    project, postgres_url: str
) -> None:
    check_two_workers(project, postgres_url, trials=1)


# -- re-runs whose trials are all pruned ------------------------------------------------------------


def test_a_rerun_whose_trials_are_all_pruned_ends_well_and_reports_the_study_best(project) -> None:
    storage = f"sqlite:///{project.root / 'study.db'}"
    pruning = {"pruner": "median", "startup_trials": 1, "warmup_epochs": 0}
    # On the loss: at lr 1e-7 it stays where it starts, at 3e-3 it falls (the accuracy of the
    # tiny model may not move in 3 epochs).
    trainer = {"epochs": 3, "monitor": "loss"}
    # seed 2 draws lr 3e-3: a trial that learns.
    first = project.config(
        tuner=optuna_tuner(storage, seed=2, trials=1, **pruning),
        trainer=trainer,
        output={"dir": str(project.root / "runs" / "first")},
    )
    ok(run_cli("run", str(first)))
    # seed 3 draws lr 1e-7 twice: both stay where they start and the median pruner stops them.
    again = project.config(
        "again.yaml",
        tuner=optuna_tuner(storage, seed=3, **pruning),
        trainer=trainer,
        output={"dir": str(project.root / "runs" / "again")},
    )
    proc = run_cli("run", str(again))
    out = ok(proc)
    assert "every trial failed" not in out + proc.stderr

    import optuna

    stored = optuna.load_study(study_name="shared", storage=storage)
    states = [t.state.name for t in stored.trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"], [
        (t.params, t.intermediate_values) for t in stored.trials
    ]
    best = stored.best_trial
    folder = project.root / "runs" / "again"
    assert "no trial of this run completed (2 pruned); nothing was tested here" in out
    assert f"Best trial of the study: trial {best.number}: val.loss {best.value:.4f}" in out
    assert str(project.root / "runs" / "first" / "trials" / f"trial_{best.number:03d}") in out
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "pruned"
    study = json.loads((folder / "metrics.json").read_text())["study"]
    assert study["best_trial"] is None and study["trials"] == 2
    assert study["study_best"]["trial"] == best.number
    assert study["study_best"]["value"] == best.value
    assert study["study_trials"] == {"total": 3, "complete": 1, "pruned": 2}
    assert pd.read_csv(folder / "trials.csv")["state"].tolist() == ["pruned", "pruned"]
    assert not (folder / "checkpoint").exists()  # no model of its own: none is pretended
    # `tuneforge report` says why there is nothing to report.
    line = run_cli("report", str(folder)).stderr.strip()
    assert "is not a completed run (run.json status is 'pruned')" in line
