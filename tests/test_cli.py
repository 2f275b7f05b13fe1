"""The CLI as a user sees it: real subprocesses, exit codes and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import one_line_error, run_cli
from tinymodels import make_texts, write_csv


def test_plugins_listing_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        "assert main(['plugins']) == 0\n"
        "assert main(['components']) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'accelerate', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout


def test_plugins_json_lists_builtins_with_their_components() -> None:
    proc = run_cli("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert {"text", "validators", "balancers", "metrics", "tuners"} <= set(infos)
    text = infos["text"]
    assert text["distribution"] == "tuneforge" and text["version"]
    assert "register_models" in text["hooks"]
    assert text["components"]["models"] == ["hf-sequence-classification", "setfit"]
    assert set(infos["balancers"]["components"]["balancers"]) == {
        "none",
        "oversample",
        "undersample",
        "class-weights",
        "weighted-sampler",
        "focal-loss",
    }


def test_components_of_one_kind() -> None:
    proc = run_cli("components", "tuners")
    assert proc.returncode == 0
    assert "grid" in proc.stdout and "random" in proc.stdout and "accuracy" not in proc.stdout
    err = one_line_error(run_cli("components", "widgets"))
    assert "unknown component kind 'widgets'" in err


def test_config_schema_is_json_schema_with_component_parameters() -> None:
    proc = run_cli("config", "schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["title"] == "tuneforge run config"
    task_names = schema["properties"]["task"]["anyOf"][0]["enum"]  # or {name: ..., param: ...}
    assert "text-classification" in task_names and "image-regression" in task_names
    balancer_variants = schema["properties"]["balancer"]["anyOf"]
    oversample = next(
        v
        for v in balancer_variants
        if v.get("properties", {}).get("name", {}).get("const") == "oversample"
    )
    assert "ratio" in oversample["properties"] and oversample["additionalProperties"] is False
    # The schema validates a real config.
    jsonschema = pytest.importorskip("jsonschema")
    example = yaml.safe_load(
        (Path(__file__).parents[1] / "examples/support-tickets/config.yaml").read_text()
    )
    jsonschema.validate(example, schema)


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.startswith("tuneforge ")
    assert "run" in run_cli("--help").stdout


# -- bad input: one clear line, exit 2, nothing written ------------------------------------


def assert_nothing_written(project) -> None:
    runs = project.root / "runs"
    leftovers = list(runs.iterdir()) if runs.exists() else []
    assert leftovers == [], leftovers


def test_unknown_component_name(project) -> None:
    cfg = project.config(model={"name": "hf-sequence-clasifier"})
    err = one_line_error(run_cli("run", str(cfg)))
    assert "model.name: unknown model 'hf-sequence-clasifier'" in err
    assert "did you mean 'hf-sequence-classification'?" in err
    assert_nothing_written(project)


def test_unknown_balancer_lists_available(project) -> None:
    err = one_line_error(run_cli("run", str(project.config(balancer="smoteish"))))
    assert "balancer.name: unknown balancer 'smoteish'" in err and "class-weights" in err


def test_wrong_parameter_type_and_unknown_parameter(project) -> None:
    cfg = project.config(augmenters=["token-noise", {"name": "token-noise", "p": "often"}])
    err = one_line_error(run_cli("run", str(cfg)))
    assert err.startswith("tuneforge: error: augmenters[1].p: Input should be a valid number")
    cfg = project.config(balancer={"name": "oversample", "ratioo": 1})
    err = one_line_error(run_cli("run", str(cfg)))
    assert "balancer.ratioo: unknown key (did you mean 'ratio'?)" in err


def test_wrong_trainer_value(project) -> None:
    err = one_line_error(run_cli("run", str(project.config(trainer={"epochs": 0}))))
    assert "trainer.epochs: Input should be greater than or equal to 1" in err


def test_missing_data_file(project) -> None:
    err = one_line_error(run_cli("run", str(project.config(data={"path": "nope.csv"}))))
    assert "data file not found" in err and "nope.csv" in err
    assert_nothing_written(project)


def test_missing_column(project) -> None:
    err = one_line_error(
        run_cli("run", str(project.config(data={"path": "data.csv", "columns": {"text": "body"}})))
    )
    assert "column 'body' (from data.columns.text) not found; columns are: text, label" in err


def test_label_column_with_one_class(project) -> None:
    write_csv(project.root / "one.csv", [(t, "billing") for t, _ in make_texts(30)])
    err = one_line_error(run_cli("run", str(project.config(data={"path": "one.csv"}))))
    assert "label column 'label' has 1 class (only 'billing')" in err


def test_empty_dataset_after_validation(project) -> None:
    rows = [("   ", lab) for _, lab in make_texts(30)]
    write_csv(project.root / "blank.csv", rows)
    err = one_line_error(run_cli("run", str(project.config(data={"path": "blank.csv"}))))
    assert "no rows left after validation" in err
    assert_nothing_written(project)


def test_fail_policy_names_rows(project) -> None:
    rows = make_texts(60)
    rows.append(rows[0])
    write_csv(project.root / "dups.csv", rows)
    cfg = project.config(
        data={"path": "dups.csv"}, validators=[{"name": "duplicates", "policy": "fail"}]
    )
    err = one_line_error(run_cli("run", str(cfg)))
    assert "validators[0] (duplicates, policy fail)" in err and "rows 0" in err


def test_set_key_that_does_not_exist(project) -> None:
    err = one_line_error(
        run_cli("run", str(project.config()), "--set", "trainer.learning_rate=0.1")
    )
    assert "--set trainer.learning_rate: no such key" in err


def test_unreadable_yaml_and_missing_config(project) -> None:
    bad = project.root / "bad.yaml"
    bad.write_text("task: text-classification\ndata: {path: [\n")
    assert "invalid YAML" in one_line_error(run_cli("run", str(bad)))
    assert "config file not found" in one_line_error(
        run_cli("run", str(project.root / "none.yaml"))
    )


def test_monitor_must_be_computed(project) -> None:
    err = one_line_error(
        run_cli("run", str(project.config(metrics=["accuracy"], trainer={"monitor": "f1_macro"})))
    )
    assert "trainer.monitor: 'f1_macro' is not computed" in err


def test_validate_reports_findings_and_writes_nothing(project) -> None:
    rows = make_texts(80)
    rows += [
        rows[0],
        rows[1],
        (rows[2][0], "technical" if rows[2][1] != "technical" else "billing"),
        ("", "billing"),
    ]
    write_csv(project.root / "messy.csv", rows)
    cfg = project.config(data={"path": "messy.csv"})
    proc = run_cli("validate", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    kinds = {f["kind"]: f for f in report["findings"]}
    assert {"duplicate", "conflicting-labels", "missing-value"} <= set(kinds)
    assert kinds["conflicting-labels"]["action"] == "dropped 2 rows"
    assert report["rows_loaded"] == 84
    assert sum(report["split"].values()) == report["rows_kept"]
    assert_nothing_written(project)
