"""Start-up: the listing commands import no heavy library (issue 15, point 5).

``tuneforge plugins``, ``tuneforge components`` and ``tuneforge --help`` import every plugin
module to collect its hooks and components; they must stay fast (under 0.5 s: see
``bench/startup.py``). So importing a plugin module, and registering its components, must
not import numpy, pandas, torch and the like: those are imported inside the functions that
use them (with ``if TYPE_CHECKING:`` imports for type hints). The checks are deterministic,
not timings: which modules the process imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ok, run_cli

#: Top-level packages a listing command must not import (each costs 0.02 s to seconds).
HEAVY = (
    "numpy",
    "pandas",
    "pyarrow",
    "torch",
    "transformers",
    "sklearn",
    "scipy",
    "timm",
    "accelerate",
    "safetensors",
    "optuna",
    "albumentations",
    "imgaug",
    "PIL",
    "yaml",
)

#: Runs ``tuneforge ARGS`` in-process exactly as the console script does
#: (``from tuneforge.cli import main; sys.exit(main())``), recording for each heavy package
#: the tuneforge module and line whose import first asked for it.
PROBE = """
import json, sys
out, heavy = sys.argv[1], set(json.loads(sys.argv[2]))
found = {}

class Recorder:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in heavy and top not in found:
            f = sys._getframe(1)
            while f is not None and not f.f_globals.get("__name__", "").startswith("tuneforge"):
                f = f.f_back
            found[top] = f"{f.f_globals['__name__']}:{f.f_lineno}" if f is not None else "?"
        return None

sys.meta_path.insert(0, Recorder())
sys.argv = ["tuneforge", *sys.argv[3:]]
try:
    from tuneforge.cli import main
    code = main()
finally:
    with open(out, "w") as fh:
        json.dump(found, fh)
sys.exit(code)
"""


def heavy_imports(tmp_path: Path, *args: str) -> tuple[str, dict[str, str]]:
    """(stdout, {heavy package: "tuneforge.module:line" that imported it}) of ``tuneforge ARGS``."""
    record = tmp_path / "imports.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(record), json.dumps(HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return ok(proc), json.loads(record.read_text())


@pytest.mark.parametrize(
    "args",
    [("plugins",), ("plugins", "--json"), ("components",), ("components", "metrics"), ("--help",)],
    ids=" ".join,
)
def test_listing_commands_import_no_heavy_library(tmp_path: Path, args: tuple[str, ...]) -> None:
    out, heavy = heavy_imports(tmp_path, *args)
    assert out.strip()
    assert heavy == {}, (
        "imported at start-up (import it inside the functions that use it): "
        + ", ".join(f"{pkg} by {where}" for pkg, where in sorted(heavy.items()))
    )


def test_plugins_lists_every_builtin_plugin_without_heavy_imports(tmp_path: Path) -> None:
    """The fast listing still registers everything: components of the plugins whose modules
    no longer import numpy/pandas at module level are all there."""
    out, heavy = heavy_imports(tmp_path, "components", "--json")
    assert heavy == {}
    names = {kind: {e["name"] for e in entries} for kind, entries in json.loads(out).items()}
    assert {"duplicates", "missing", "label-noise", "target-values"} <= names["validators"]
    assert {"oversample", "class-weights", "target-bins"} <= names["balancers"]
    assert {"accuracy", "f1_macro", "rmse", "r2"} <= names["metrics"]
    assert {"grid", "random"} <= names["tuners"]


def test_the_probe_names_the_importer(tmp_path: Path) -> None:
    """The probe sees a heavy import and names the module that made it (the check can fail)."""
    record = tmp_path / "imports.json"
    probe = PROBE.replace("from tuneforge.cli", "import tuneforge.data; from tuneforge.cli")
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(record), json.dumps(HEAVY), "plugins"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(record.read_text())
    assert found["pandas"].startswith("tuneforge.data:")
    assert found["numpy"].startswith("tuneforge.data:")


_IMPORTTIME = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)\s*$", re.MULTILINE)


def test_console_script_plugins_imports_no_heavy_library() -> None:
    """The installed console script itself, seen by ``python -X importtime``."""
    proc = run_cli("plugins", env={"PYTHONPROFILEIMPORTTIME": "1"})
    ok(proc)
    modules = set(_IMPORTTIME.findall(proc.stderr))
    assert {"tuneforge.cli", "tuneforge.manager", "pydantic"} <= modules, proc.stderr[-2000:]
    assert sorted(m for m in modules if m.partition(".")[0] in HEAVY) == []


def test_float32_max_constant_matches_numpy() -> None:
    """regression.FLOAT32_MAX is a literal (no numpy at import): it must equal numpy's value."""
    import numpy as np

    from tuneforge.plugins.regression import FLOAT32_MAX

    assert float(np.finfo(np.float32).max) == FLOAT32_MAX
