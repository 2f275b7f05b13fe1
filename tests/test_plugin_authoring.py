"""The plugin author's experience: declared finding kinds, plugin dependencies, disabled plugins
named in errors, strict component configs, and the plugin options of the command line."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tuneforge.components import FindingKind
from tuneforge.registry import SECTION_KINDS, RegistryError, section_kind
from tuneforge.registry.static import scan_source

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

DISABLED = (
    r"validators\[\d+\]\.name: 'target-values' comes from plugin 'regression', which is "
    r"disabled \(--disable-plugin regression\)"
)


def text_regression(tmp_path: Path, **sections) -> Path:
    rows = [(text, f"{len(text) / 10:.2f}") for text, _ in make_texts(60, seed=2)]
    write_csv(tmp_path / "scores.csv", rows, header=("text", "score"))
    cfg = {"task": "text-regression", "data": {"path": "scores.csv", "target": "score"}}
    cfg.update(sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_plugin(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("flag", ["regression", "no:regression"])
def test_a_component_of_a_disabled_plugin_is_named_with_its_plugin(
    tmp_path: Path, flag: str
) -> None:
    cfg = text_regression(tmp_path)
    line = one_line_error(run_cli("validate", str(cfg), "-p", flag))
    assert re.search(DISABLED, line), line
    line = one_line_error(run_cli("validate", str(cfg), "--disable-plugin", flag))
    assert re.search(DISABLED, line), line
    env = {"TUNEFORGE_DISABLE_PLUGINS": "regression"}
    assert re.search(DISABLED, one_line_error(run_cli("validate", str(cfg), env=env)))
    # Enabled, the same config validates.
    assert "rows loaded" in ok(run_cli("validate", str(cfg)))


def test_a_plugin_that_requires_a_disabled_plugin_is_not_loaded_and_says_why(
    tmp_path: Path,
) -> None:
    write_plugin(
        tmp_path / "needs_reg.py",
        """
        import tuneforge
        from tuneforge.components import Finding, Validator

        requires = ["regression"]


        class Spread(Validator):
            def check(self, data, task=None):
                return [Finding("target-spread", "info", "spread checked")]


        @tuneforge.hookimpl
        def register_validators(register):
            register("target-spread", Spread)
        """,
    )
    cfg = text_regression(
        tmp_path, validators=["target-spread"], plugins={"local": ["needs_reg.py"]}
    )
    assert "spread checked" in ok(run_cli("validate", str(cfg), cwd=tmp_path))
    line = one_line_error(run_cli("validate", str(cfg), "-p", "regression", cwd=tmp_path))
    assert line.endswith(
        "validators[0].name: 'target-spread' comes from plugin 'needs_reg', which needs plugin "
        "'regression', which is disabled (--disable-plugin regression)"
    ), line
    # `plugins` does not read a config: the local plugin is named on the command line.
    listing = json.loads(
        ok(
            run_cli(
                "plugins", "--json", "-p", "regression", "--plugin", "needs_reg.py", cwd=tmp_path
            )
        )
    )
    [info] = [p for p in listing if p["name"] == "needs_reg"]
    assert info["requires"] == ["regression"] and info["disabled"]
    assert info["reason"].startswith("needs plugin 'regression', which is disabled")


def test_requires_must_be_a_list_of_names(tmp_path: Path) -> None:
    write_plugin(tmp_path / "bad_requires.py", 'requires = "regression"\n')
    line = one_line_error(run_cli("plugins", "--plugin", "bad_requires.py", cwd=tmp_path))
    assert "plugin 'bad_requires'" in line and "requires must be a list of plugin names" in line


def test_an_unknown_disable_name_warns_with_a_did_you_mean(tmp_path: Path) -> None:
    proc = run_cli("plugins", "-p", "regresion")
    ok(proc)
    assert (
        "tuneforge: warning: --disable-plugin 'regresion': no plugin has that name; "
        "did you mean 'regression'?"
    ) in proc.stderr
    proc = run_cli("plugins", "-p", "no:regression")
    assert "regression [disabled]" in ok(proc) and "warning" not in proc.stderr


def test_help_documents_that_p_disables_and_accepts_no_name() -> None:
    out = " ".join(ok(run_cli("validate", "--help")).split())
    assert "-p DISABLES here (pytest's -p loads)" in out and "no:NAME" in out


def test_a_plain_basemodel_config_is_refused_at_registration(tmp_path: Path) -> None:
    write_plugin(
        tmp_path / "loose.py",
        """
        import tuneforge
        from pydantic import BaseModel
        from tuneforge.components import Validator


        class Loose(Validator):
            class Config(BaseModel):
                limit: int = 3

            def check(self, data, task=None):
                return []


        @tuneforge.hookimpl
        def register_validators(register):
            register("loose", Loose)
        """,
    )
    line = one_line_error(run_cli("plugins", "--plugin", "loose.py", cwd=tmp_path))
    assert (
        "validator 'loose' from plugin 'loose': its Config 'Loose.Config' accepts unknown" in line
    )
    assert "StrictConfig" in line


def test_a_lazy_plain_basemodel_config_is_refused_when_used(tmp_path: Path) -> None:
    (tmp_path / "loose_impl.py").write_text(
        "from pydantic import BaseModel\n"
        "from tuneforge.components import Validator\n\n\n"
        "class Loose(Validator):\n"
        "    class Config(BaseModel):\n"
        "        limit: int = 3\n\n"
        "    def check(self, data, task=None):\n"
        "        return []\n"
    )
    write_plugin(
        tmp_path / "lazy_loose.py",
        """
        import tuneforge


        @tuneforge.hookimpl
        def register_validators(register):
            register("loose", "loose_impl:Loose")
        """,
    )
    cfg = text_regression(tmp_path, validators=[{"name": "loose", "limt": 4}])
    proc = run_cli(
        "validate",
        str(cfg),
        "--plugin",
        "lazy_loose.py",
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    )
    line = one_line_error(proc)
    assert "validators[0].name: validator 'loose' from plugin 'lazy_loose'" in line
    assert "accepts unknown keys" in line


def test_a_local_plugins_failure_names_its_file(tmp_path: Path) -> None:
    write_plugin(
        tmp_path / "crashy.py",
        """
        import tuneforge
        from tuneforge.components import Validator


        class Crashy(Validator):
            def check(self, data, task=None):
                raise RuntimeError("boom")


        @tuneforge.hookimpl
        def register_validators(register):
            register("crashy", Crashy)
        """,
    )
    cfg = text_regression(tmp_path, validators=["crashy"])
    line = one_line_error(run_cli("validate", str(cfg), "--plugin", "crashy.py", cwd=tmp_path))
    assert "crashy.py" in line and "RuntimeError: boom" in line
    assert "tuneforge_local" not in line
    out = ok(run_cli("components", "validators", "--plugin", "crashy.py", cwd=tmp_path))
    assert "tuneforge_local" not in out


def test_every_builtin_finding_kind_is_declared(project) -> None:
    rows = make_texts(60, seed=5)
    rows += [rows[0], (rows[1][0], "other"), ("", rows[2][1])]
    write_csv(project.root / "data.csv", rows)
    every = ["schema", "missing", "empty-text", "duplicates", "conflicting-labels", "class-size"]
    cfg = project.config(validators=every)
    report = json.loads(ok(run_cli("validate", str(cfg), "--json")))
    kinds = {f["kind"] for f in report["findings"]}
    assert {"duplicate", "conflicting-labels", "leakage"} <= kinds
    assert kinds <= {k.value for k in FindingKind}, kinds - {k.value for k in FindingKind}


def test_config_sections_map_to_component_kinds() -> None:
    assert section_kind("preprocessors") == "tokenizers"
    assert section_kind("validators[2].name") == "validators"
    assert section_kind("balancer") == "balancers" and SECTION_KINDS["tuner"] == "tuners"
    with pytest.raises(RegistryError, match="config section 'trainer' names no component kind"):
        section_kind("trainer.lr")


def test_static_scan_reads_names_without_importing() -> None:
    source = textwrap.dedent(
        """
        import not_installed_anywhere

        requires = ["regression", "text"]
        TABLE = {"a-metric": 1, "b-metric": 2}


        def register_metrics(register):
            for name, cls in TABLE.items():
                register(name, cls)
            register("c-metric", "pkg:C")


        def register_validators(register):
            for name in ("v1", "v2"):
                register(name, object)
        """
    )
    found = scan_source(source, ("metrics", "validators"))
    assert found.requires == ["regression", "text"]
    assert found.components == {
        "metrics": ["a-metric", "b-metric", "c-metric"],
        "validators": ["v1", "v2"],
    }


def test_label_noise_weights_are_a_declared_finding_field_the_pipeline_applies(project) -> None:
    rows = make_texts(150, seed=4)
    for i in range(0, 150, 10):  # every tenth label moved to the next class
        classes = sorted({y for _, y in rows})
        rows[i] = (rows[i][0], classes[(classes.index(rows[i][1]) + 1) % len(classes)])
    write_csv(project.root / "data.csv", rows)
    noise = {"name": "label-noise", "policy": "down-weight", "folds": 3, "backend": "tuneforge"}
    cfg = project.config(validators=[noise])
    report = json.loads(ok(run_cli("validate", str(cfg), "--json")))
    [found] = [f for f in report["findings"] if f["kind"] == FindingKind.LABEL_ISSUE]
    assert found["count"] and found["action"] == f"down-weighted {found['count']} rows in the loss"
    assert "weights" not in found["details"]
    assert sorted(int(r) for r in found["weights"]) == sorted(found["rows"])
    assert all(0 <= w < 0.5 for w in found["weights"].values())
