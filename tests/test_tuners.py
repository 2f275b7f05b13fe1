"""optuna and scikit-optimize tuners: real studies on the tiny BERT, pruning, shared storage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ok, one_line_error, run_cli


def with_model(path: Path, model: dict) -> Path:
    """The config at ``path`` with its model section replaced (the fixture merges sections)."""
    cfg = yaml.safe_load(path.read_text())
    cfg["model"] = model
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_optuna_study_prunes_shares_storage_and_resumes(project) -> None:
    db = project.root / "study.db"
    tuner = {
        "name": "optuna",
        "trials": 3,
        "sampler": "random",  # seeded: trials draw lr 3e-3, 3e-3, 1e-7
        "seed": 6,
        "pruner": "median",
        "startup_trials": 1,
        "warmup_epochs": 0,
        "storage": f"sqlite:///{db}",
        "study_name": "tiny",
        "space": {"trainer.lr": {"choice": [3e-3, 1e-7]}},
    }
    cfg = project.config(tuner=tuner, trainer={"epochs": 4})
    out = ok(run_cli("run", str(cfg)))
    study = project.root / "runs" / "run"
    trials = pd.read_csv(study / "trials.csv")
    assert trials["params.trainer.lr"].tolist() == [3e-3, 3e-3, 1e-7]
    assert trials["state"].tolist() == ["complete", "complete", "pruned"]
    # The pruned trial stopped before its 4 epochs; its folder says why.
    assert trials["epochs"].tolist()[:2] == [4, 4] and trials["epochs"].iloc[2] < 4
    pruned = json.loads((study / "trials" / "trial_002" / "run.json").read_text())
    assert pruned["status"] == "pruned" and "val.accuracy" in pruned["why"]
    assert "trial 2 pruned" in out
    assert (study / "plots" / "optimization_history.png").is_file()
    metrics = json.loads((study / "metrics.json").read_text())
    assert metrics["study"]["tuner"] == "optuna" and "accuracy" in metrics["test"]

    import optuna

    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    states = [t.state.name for t in stored.trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert stored.trials[0].intermediate_values.keys() == {1, 2, 3, 4}

    # Running again with the same storage and name resumes the study: numbers go on.
    cfg2 = project.config(
        "again.yaml",
        tuner={**tuner, "trials": 1},
        trainer={"epochs": 2},
        output={"dir": str(project.root / "runs" / "again")},
    )
    ok(run_cli("run", str(cfg2)))
    again = pd.read_csv(project.root / "runs" / "again" / "trials.csv")
    assert again["number"].tolist() == [3]
    assert (project.root / "runs" / "again" / "trials" / "trial_003").is_dir()
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials) == 4


def test_skopt_gp_search_with_mixed_space(project) -> None:
    tuner = {
        "name": "skopt",
        "trials": 3,
        "initial_points": 2,
        "seed": 0,
        "space": {
            "trainer.lr": {"loguniform": [1e-4, 1e-2]},
            "trainer.batch_size": {"choice": [8, 16]},
            "trainer.warmup_ratio": {"uniform": [0.0, 0.2]},
        },
    }
    # Monitored on the loss: it differs between trials even where the tiny model's accuracy
    # does not.
    cfg = project.config(tuner=tuner, trainer={"epochs": 2, "monitor": "loss"})
    ok(run_cli("run", str(cfg)))
    study = project.root / "runs" / "run"
    trials = pd.read_csv(study / "trials.csv")
    assert len(trials) == 3 and set(trials["state"]) == {"complete"}
    assert trials["val.loss"].nunique() == 3
    assert trials["params.trainer.lr"].between(1e-4, 1e-2).all()
    assert set(trials["params.trainer.batch_size"]) <= {8, 16}
    best = yaml.safe_load((study / "best_config.yaml").read_text())
    assert type(best["trainer"]["batch_size"]) is int  # plain values, not NumPy scalars
    importances = json.loads((study / "importances.json").read_text())
    assert set(importances) <= {"trainer.lr", "trainer.batch_size", "trainer.warmup_ratio"}
    assert importances and abs(sum(importances.values()) - 1.0) < 1e-6
    assert (study / "plots" / "param_importances.png").is_file()


@pytest.mark.parametrize(
    ("tuner", "expected"),
    [
        (
            {"name": "optuna", "storage": "sqlite:////nonexistent-dir/x/study.db"},
            "tuner.storage: cannot open sqlite:////nonexistent-dir/x/study.db",
        ),
        (
            {"name": "optuna", "storage": "postgresql://me:hunter2@127.0.0.1:1/db"},
            "tuner.storage: cannot open postgresql://me:***@127.0.0.1:1/db",
        ),
        ({"name": "optuna", "trials": None}, "give trials, timeout or both"),
        ({"name": "optuna", "sampler": "annealing"}, "tuner.sampler"),
        ({"name": "skopt", "method": "bayes"}, "tuner.method"),
    ],
)
def test_tuner_bad_input_is_one_line_and_writes_nothing(project, tuner, expected) -> None:
    tuner = {**tuner, "space": {"trainer.lr": {"loguniform": [1e-4, 1e-2]}}}
    line = one_line_error(run_cli("run", str(project.config(tuner=tuner))))
    assert expected in line, line
    assert "hunter2" not in line
    runs = project.root / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"trainer.lr": {"choice": [1e-3]}}, "choice needs at least two values"),
        ({"trainer.lr": {"uniform": [0.1, 0.1]}}, "tuner.space.trainer.lr"),
        ({"trainer.lr": {"loguniform": [1e-2, 1e-4]}}, "tuner.space.trainer.lr"),
        ({"model.nope": {"choice": [1, 2]}}, "tuner.space.model.nope"),
        ({"trainer.epochs": {"int": [3, 1]}}, "int needs low < high, got [3, 1]"),
        ({"trainer.epochs": {"int": [0, 2]}}, "tuner.space.trainer.epochs: value 0 is not valid"),
        ({"trainer.epochs": {"int": [1.5, 2]}}, "tuner.space.trainer.epochs.int"),
    ],
)
def test_search_space_errors(project, space, expected) -> None:
    line = one_line_error(
        run_cli("run", str(project.config(tuner={"name": "optuna", "space": space})))
    )
    assert expected in line, line


def test_grid_over_an_int_range_tries_every_integer(project) -> None:
    tuner = {"name": "grid", "space": {"trainer.epochs": {"int": [1, 3]}}}
    ok(run_cli("run", str(project.config(tuner=tuner))))
    trials = pd.read_csv(project.root / "runs" / "run" / "trials.csv")
    assert trials["params.trainer.epochs"].tolist() == [1, 2, 3]
    assert trials["epochs"].tolist() == [1, 2, 3]
    # Equal validation values leave nothing for fANOVA to explain: no importances, no crash.
    study = project.root / "runs" / "run"
    importances = json.loads((study / "importances.json").read_text())
    values = trials["val.accuracy"]
    assert (importances == {}) == (values.nunique() == 1)


def test_timeout_budget_stops_new_trials(project, tmp_path: Path) -> None:
    tuner = {
        "name": "optuna",
        "trials": None,
        "timeout": 0.001,
        "space": {"trainer.lr": {"loguniform": [1e-4, 1e-2]}},
    }
    ok(run_cli("run", str(project.config(tuner=tuner, trainer={"epochs": 1}))))
    trials = pd.read_csv(project.root / "runs" / "run" / "trials.csv")
    assert len(trials) == 1  # the first trial outlasts the budget; no second one starts


def test_model_selection_trains_each_candidate_and_tests_only_the_winner(
    project, tiny_models
) -> None:
    candidates = [
        {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["roberta"])},
    ]
    cfg = with_model(project.config(trainer={"epochs": 2}), {"candidates": candidates})
    out = ok(run_cli("run", str(cfg)))
    study = project.root / "runs" / "run"
    table = pd.read_csv(study / "candidates.csv")
    assert len(table) == 2 and set(table["state"]) == {"complete"}
    assert table["model"].iloc[0] == f"hf-sequence-classification(checkpoint={tiny_models['bert']})"
    assert "model selection:" in out
    metrics = json.loads((study / "metrics.json").read_text())
    winner = table["val.accuracy"].idxmax()
    assert metrics["study"]["selected_model"] == table["model"].iloc[winner]
    for n in (0, 1):  # the test split is used once, for the winner only
        assert "test" not in json.loads(
            (study / "trials" / f"trial_{n:03d}" / "metrics.json").read_text()
        )
    best = yaml.safe_load((study / "best_config.yaml").read_text())
    assert best["model"] == candidates[winner]  # a plain model section, ready to run


def test_model_candidates_join_a_tuners_search(project, tiny_models) -> None:
    candidates = [
        {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["gpt2"])},
    ]
    tuner = {
        "name": "random",
        "trials": 2,
        "seed": 1,
        "space": {"trainer.lr": {"loguniform": [1e-3, 5e-3]}},
    }
    cfg = with_model(project.config(tuner=tuner, trainer={"epochs": 1}), {"candidates": candidates})
    ok(run_cli("run", str(cfg)))
    table = pd.read_csv(project.root / "runs" / "run" / "candidates.csv")
    assert list(table.columns[:2]) == ["model", "params.trainer.lr"] and len(table) == 2


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            {"candidates": [{"name": "hf-sequence-classification"}]},
            "model: Value error, candidates needs at least two",
        ),
        (
            {"name": "hf-sequence-classification", "candidates": ["a", "b"]},
            "put name and parameters inside each candidate",
        ),
        (
            {"candidates": ["hf-sequence-classification", "hf-sequence-classifier"]},
            "model.candidates[1]",
        ),
    ],
)
def test_model_candidates_bad_input(project, model, expected) -> None:
    line = one_line_error(run_cli("run", str(with_model(project.config(), model))))
    assert expected in line, line
    runs = project.root / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


def test_param_importances_find_the_parameter_that_matters() -> None:
    import random

    from tuneforge.components import Trial
    from tuneforge.config import Distribution
    from tuneforge.plugins.report.study import param_importances

    space = {
        "trainer.lr": Distribution(loguniform=(1e-5, 1e-1)),
        "trainer.epochs": Distribution(int=(1, 9)),
        "trainer.batch_size": Distribution(choice=[8, 16]),
    }
    rng = random.Random(0)
    trials = []
    for n in range(30):
        params = {
            "trainer.lr": 10 ** rng.uniform(-5, -1),
            "trainer.epochs": rng.randint(1, 9),
            "trainer.batch_size": rng.choice([8, 16]),
        }
        # The score depends on the epochs only.
        trials.append(Trial(n, params, value=params["trainer.epochs"] / 10, state="complete"))
    found = param_importances(trials, space, "max")
    assert max(found, key=found.get) == "trainer.epochs" and found["trainer.epochs"] > 0.8
    for t in trials:
        t.value = 0.5
    assert param_importances(trials, space, "max") == {}
