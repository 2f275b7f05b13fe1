"""``tuneforge report RUN`` and ``tuneforge runs [DIR]``."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import Command
from tuneforge.errors import UserError
from tuneforge.plugins.report.plots import read_json

#: ``.NAME.partial-PID``: the folder a run is written into until it completes.
PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")
#: ``.NAME.old-PID``: a replaced run being removed by ``--overwrite``.
OLD = re.compile(r"^\..+\.old-\d+$")

#: Metrics where lower is better (everything else sorts best-first descending).
LOWER_IS_BETTER = {
    "loss",
    "mse",
    "rmse",
    "mae",
    "mape",
    "msle",
    "rmsle",
    "medae",
    "log_loss",
    "brier",
    "error",
}


#: The JSON files of a run folder that ``report`` and ``runs`` read besides ``run.json``.
REPORT_FILES = ("metrics.json", "findings.json", "split.json", "labels.json", "advice.json")


def _warn(message: str) -> None:
    print(f"tuneforge: warning: {message}", file=sys.stderr, flush=True)


def json_problems(run_dir: Path, names: tuple[str, ...] = REPORT_FILES) -> list[str]:
    """One warning per JSON file of ``run_dir`` that exists but cannot be used: unreadable,
    truncated or corrupt, or not a JSON object. Missing files are not problems here (older
    runs and failed ones lack some)."""
    out = []
    for name in names:
        path = run_dir / name
        if not path.exists():
            continue
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
        except (ValueError, UnicodeDecodeError):
            problem = "is truncated or not valid JSON"
        else:
            if isinstance(value, dict):
                continue
            problem = f"holds a JSON {type(value).__name__}, not an object"
        out.append(f"{path}: {problem}; what it holds is left out")
    return out


def finished_run(path: Path) -> Path:
    """``path`` if it is a completed run folder; otherwise a :class:`UserError` that says why."""
    partial = PARTIAL.match(path.name)
    if partial:
        raise UserError(
            f"{path} is the partial folder of run {partial['name']!r}, which never finished "
            f"(interrupted, or still running as process {partial['pid']}); "
            "there is nothing to report"
        )
    if not path.exists():
        leftovers = sorted(p.name for p in path.parent.glob(f".{path.name}.partial-*"))
        if leftovers:
            raise UserError(
                f"run {path} never finished: only its partial folder {leftovers[0]} exists "
                "(interrupted, or still running)"
            )
        raise UserError(f"run folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is not a run folder (it is a file)")
    run_json = path / "run.json"
    if not run_json.is_file():
        raise UserError(f"{path} is not a finished tuneforge run folder (no run.json)")
    run = read_json(run_json)
    if not isinstance(run, dict):
        raise UserError(f"{run_json} is unreadable or not valid JSON")
    status = run.get("status")
    if status != "completed":
        raise UserError(
            f"{path} is not a completed run (run.json status is {status!r}); "
            "a report needs a run that was tested"
        )
    return path


class ReportCommand(Command):
    help: ClassVar[str] = "rebuild a finished run's plots and report.html"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run folder")

    def run(self, args: Any) -> int:
        from tuneforge.plugins.report.html import build_report

        run_dir = finished_run(args.run_dir)
        # A damaged file is named and its part left out: the rest of the report still helps.
        for warning in json_problems(run_dir):
            _warn(warning)
        report = build_report(run_dir)
        for warning in report.warnings:
            _warn(warning)
        print(f"plots: {', '.join(report.plots.written) or 'none'}")
        print(f"report: {report.path}")
        return 0


# -- runs ----------------------------------------------------------------------------------


def _config_values(text: str) -> dict[str, Any]:
    try:
        import yaml

        cfg = yaml.safe_load(text)
    except Exception:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _model_name(cfg: dict[str, Any]) -> str | None:
    model = cfg.get("model")
    if isinstance(model, str):
        return model
    if not isinstance(model, dict):
        return None
    name = str(model.get("name", ""))
    for key in ("checkpoint", "model", "arch", "architecture"):
        value = model.get(key)
        if isinstance(value, str) and value:
            return f"{name} ({Path(value).name or value})"
    return name or None


def run_row(path: Path) -> dict[str, Any]:
    """Everything ``tuneforge runs`` knows about one run folder (partial ones too)."""
    partial = PARTIAL.match(path.name)
    run = read_json(path / "run.json")
    metrics = read_json(path / "metrics.json")
    run = run if isinstance(run, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    config_path = path / "config.yaml"
    cfg = _config_values(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    if partial:
        status = "incomplete"
    elif (path / "run.json").is_file() and not run:
        status = "unreadable"
    else:
        status = str(run.get("status", "unknown"))
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    try:
        started = run.get("started") or path.stat().st_mtime
    except OSError:
        started = None
    return {
        "run": partial["name"] if partial else path.name,
        "path": str(path),
        "task": run.get("task") or cfg.get("task"),
        "model": _model_name(cfg),
        "status": status,
        "lr": trainer.get("lr"),
        "batch": trainer.get("batch_size"),
        "epochs": metrics.get("epochs_run"),
        "best_epoch": metrics.get("best_epoch"),
        "monitor": metrics.get("monitor"),
        "monitor_mode": metrics.get("monitor_mode"),
        "best_value": metrics.get("best_value"),
        "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
        "seconds": run.get("seconds"),
        "started": started,
    }


def collect_runs(folder: Path) -> list[dict[str, Any]]:
    """One row per run folder directly inside ``folder`` (or ``folder`` itself if it is one)."""
    if not folder.exists():
        raise UserError(f"runs folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    rows = []
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or OLD.match(child.name):
            continue
        if PARTIAL.match(child.name) or (child / "run.json").is_file():
            rows.append(run_row(child))
    if not rows and (folder / "run.json").is_file():
        rows.append(run_row(folder))
    return rows


def _metric_name(column: str) -> str:
    return column.split(".", 1)[-1]


def higher_is_better(column: str, rows: list[dict[str, Any]]) -> bool:
    modes = {r.get("monitor_mode") for r in rows if r.get("monitor") == column}
    if modes == {"min"}:
        return False
    if modes == {"max"}:
        return True
    return _metric_name(column) not in LOWER_IS_BETTER


def pick_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: fixed ones, the monitor, up to 3 test metrics the runs share."""
    monitors = {r["monitor"] for r in rows if r.get("monitor")}
    columns = ["run", "task", "model", "status", "lr", "batch", "epochs", "best_epoch"]
    if len(monitors) == 1:
        columns.append(next(iter(monitors)))
    elif monitors:
        columns += ["monitor", "best_value"]
    tested = [r["test"] for r in rows if r.get("test")]
    order: list[str] = []
    for test in tested:
        order += [k for k in test if k not in order]
    common = [k for k in order if all(k in t for t in tested)] or order
    preferred = [_metric_name(m) for m in sorted(monitors)] + [
        "accuracy",
        "f1_macro",
        "rmse",
        "r2",
        "mae",
    ]
    chosen: list[str] = []
    for name in preferred + common:
        wanted = name in common and name not in chosen and not name.startswith("majority_baseline")
        if wanted and (name != "loss" or len(common) == 1):
            chosen.append(name)
    columns += [f"test.{m}" for m in chosen[:3]]
    columns.append("seconds")
    return columns


def _finite_json(value: Any) -> Any:
    """NaN and infinities as null, so that ``--json`` prints valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    return value


def cell(row: dict[str, Any], column: str) -> Any:
    if column.startswith("test."):
        return row["test"].get(column[5:])
    if column.startswith("val.") and column not in row:
        return row["best_value"] if row.get("monitor") == column else None
    return row.get(column)


def _text(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if column == "lr":
            return f"{value:g}"
        if column == "seconds":
            return f"{value:.1f}"
        if column == "started":
            try:
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            except (OverflowError, OSError, ValueError):  # a damaged run.json
                return f"{value:g}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width plain-text table: numbers right-aligned, text left-aligned."""
    cells = [[_text(cell(r, c), c) for c in columns] for r in rows]
    numeric = [
        all(isinstance(cell(r, c), (int, float)) or cell(r, c) is None for r in rows)
        and c not in ("run", "task", "model", "status")
        for c in columns
    ]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(c) for c in cells])


def resolve_sort(key: str, columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A column name for ``--sort KEY``: exact, or a unique column ending in ``.KEY``."""
    aliases = {"batch_size": "batch", "epochs_run": "epochs", "name": "run", "time": "seconds"}
    key = aliases.get(key, key)
    extra = ["monitor", "best_value", "started"]
    if rows:
        extra += [f"test.{m}" for r in rows for m in r["test"]]
    known = list(dict.fromkeys(columns + extra))
    if key in known:
        return key
    matches = [c for c in known if c.endswith("." + key)]
    if len(set(matches)) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"--sort {key}: ambiguous, one of: {', '.join(sorted(set(matches)))}")
    raise UserError(f"--sort {key}: no such column; choose one of: {', '.join(known)}")


def sort_rows(
    rows: list[dict[str, Any]], column: str, ascending: bool | None
) -> list[dict[str, Any]]:
    """Best first by default (descending where higher is better); missing values last."""
    values = [cell(r, column) for r in rows]
    numeric = all(isinstance(v, (int, float)) or v is None for v in values)
    if ascending is None:
        is_metric = column.startswith(("test.", "val.", "train.")) or column == "best_value"
        if column == "best_value":
            modes = {r.get("monitor_mode") for r in rows if r.get("best_value") is not None}
            ascending = modes == {"min"}
        elif is_metric:
            ascending = not higher_is_better(column, rows)
        else:
            ascending = True
    present = [r for r in rows if cell(r, column) is not None]
    missing = [r for r in rows if cell(r, column) is None]

    def key(row: dict[str, Any]) -> Any:
        value = cell(row, column)
        if numeric:
            return float(value)
        return str(value).lower()

    return sorted(present, key=key, reverse=not ascending) + missing


class RunsCommand(Command):
    help: ClassVar[str] = "list the runs in a folder with their key parameters and metrics"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "folder",
            nargs="?",
            type=Path,
            default=Path("runs"),
            metavar="DIR",
            help="the folder holding run folders (default: runs)",
        )
        parser.add_argument(
            "--sort",
            metavar="KEY",
            default=None,
            help="sort by this column (e.g. test.accuracy, lr, seconds); metrics sort best first",
        )
        order = parser.add_mutually_exclusive_group()
        order.add_argument(
            "--asc", dest="ascending", action="store_const", const=True, help="sort ascending"
        )
        order.add_argument(
            "--desc", dest="ascending", action="store_const", const=False, help="sort descending"
        )
        parser.add_argument("--json", action="store_true", help="print the runs as JSON")

    def run(self, args: Any) -> int:
        rows = collect_runs(args.folder)
        for row in rows:
            if not PARTIAL.match(Path(row["path"]).name):
                for warning in json_problems(Path(row["path"]), ("run.json", "metrics.json")):
                    _warn(warning)
        columns = pick_columns(rows)
        # Chronological by default; ties of another sort key keep that order.
        rows = sort_rows(rows, "started", True if args.sort else args.ascending is not False)
        if args.sort:
            key = resolve_sort(args.sort, columns, rows)
            rows = sort_rows(rows, key, args.ascending)
            if key not in columns:  # the table shows the column it is sorted by
                at = columns.index("seconds") if "seconds" in columns else len(columns)
                columns.insert(at, key)
        if args.json:
            print(json.dumps(_finite_json(rows), indent=2, default=str))
            return 0
        if not rows:
            print(f"no runs in {args.folder}")
            return 0
        print(format_table(rows, columns))
        incomplete = sum(r["status"] == "incomplete" for r in rows)
        if incomplete:
            print(
                f"\n{incomplete} incomplete run(s): partial folders of runs that were "
                "interrupted or are still running"
            )
        return 0
