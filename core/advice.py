"""Refinement: read a finished run, let the advisors diagnose it, patch its config, run again.

``tuneforge refine RUN`` prints the diagnoses and the merged patch; ``--apply`` runs the patched
config as the next round, and ``--rounds N`` repeats until no advisor fires or a round is not
measurably better than the one before (:func:`tuneforge.compare.compare_rounds`: a paired
bootstrap on the common validation rows, or a Welch interval over seeds/folds). The advisors
themselves are plugins (``register_advisors``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.components import Diagnosis
from tuneforge.errors import ConfigError, UserError


@dataclass
class RunRecord:
    """What advisors see of a finished run (read-only; nothing here is the test split's).

    :param epochs: one row per epoch, keys like ``"train.loss"``, ``"val.loss"``,
        ``"val.accuracy"`` (from ``history.jsonl``).
    :param steps: the step-level training records: ``{"step", "train.loss", "lr"}``.
    :param fields: config section -> the keys its component accepts (``"model"``,
        ``"trainer"``), so an advisor proposes only keys that exist.
    :param augmenters: augmenter names registered for this run's input modalities.
    """

    path: Path
    config: dict[str, Any]
    status: str
    error: str
    metrics: dict[str, Any]
    findings: list[dict[str, Any]]
    split: dict[str, Any]
    labels: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    fields: dict[str, set[str]] = field(default_factory=dict)
    modalities: set[str] = field(default_factory=set)
    augmenters: list[str] = field(default_factory=list)

    @property
    def monitor(self) -> str:
        """The monitored validation key, e.g. ``"val.accuracy"``."""
        name = (
            self.metrics.get("monitor")
            or f"val.{self.config.get('trainer', {}).get('monitor', 'loss')}"
        )
        return str(name)

    @property
    def mode(self) -> str:
        mode = self.metrics.get("monitor_mode")
        if mode in ("min", "max"):
            return str(mode)
        return "min" if self.monitor.endswith("loss") else "max"

    def series(self, key: str) -> list[float]:
        """Per-epoch values of ``key`` (NaN where an epoch lacks it)."""
        return [float(row.get(key, math.nan)) for row in self.epochs]

    def best_val(self) -> float | None:
        value = self.metrics.get("best_value")
        return None if value is None else float(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"{path.parent} is not a complete run folder: {path.name} is missing"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def load_record(run_dir: Path) -> RunRecord:
    """Read a finished (completed or failed) run folder; a partial one is an error."""
    import yaml

    from tuneforge.run import read_history

    run_dir = Path(run_dir)
    if run_dir.name.startswith(".") and ".partial-" in run_dir.name:
        raise UserError(
            f"{run_dir} is the partial folder of a run that never finished; nothing to refine"
        )
    if not run_dir.is_dir():
        leftovers = sorted(run_dir.parent.glob(f".{run_dir.name}.partial-*"))
        if leftovers:
            raise UserError(
                f"run {run_dir} never finished: only its partial folder {leftovers[0].name} exists"
            )
        raise UserError(f"run folder not found: {run_dir}")
    run = _read_json(run_dir / "run.json")
    status = str(run.get("status", "unknown"))
    if status not in ("completed", "failed"):
        raise UserError(
            f"{run_dir}: run status is {status!r}; refine needs a completed (or failed) run"
        )
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a complete run folder: config.yaml is missing")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    metrics = _read_json(run_dir / "metrics.json") if status == "completed" else {}
    findings = _read_json(run_dir / "findings.json").get("findings", [])
    split = _read_json(run_dir / "split.json")
    labels = _read_json(run_dir / "labels.json")
    from tuneforge.predict import read_members

    members = read_members(run_dir)  # a repeated run: its members' mean learning curves
    curves = [_history(m, read_history) for m in members or [run_dir]]
    by_epoch, steps = _mean_curves([c[0] for c in curves]), _mean_curves([c[1] for c in curves])
    epochs = [{"epoch": float(e), **by_epoch[e]} for e in sorted(by_epoch)]
    return RunRecord(
        path=run_dir,
        config=config,
        status=status,
        error=str(run.get("error", "")),
        metrics=metrics,
        findings=findings,
        split=split,
        labels=labels,
        epochs=epochs,
        steps=[steps[s] for s in sorted(steps)],
    )


def _history(
    run_dir: Path, read_history: Any
) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """A run's ``history.jsonl`` as per-epoch and per-step rows (``{"val.loss": ...}``)."""
    records, _warnings = read_history(run_dir)
    by_epoch: dict[int, dict[str, float]] = {}
    steps: dict[int, dict[str, float]] = {}
    for r in records:
        value = r.get("value")
        if not isinstance(value, int | float):
            continue
        key = f"{r.get('split') or 'train'}.{r['name']}" if r["name"] != "lr" else "lr"
        if r.get("epoch") is not None:
            by_epoch.setdefault(int(r["epoch"]), {})[key] = float(value)
        elif r.get("step") is not None:
            steps.setdefault(int(r["step"]), {"step": float(r["step"])})[key] = float(value)
    return by_epoch, steps


def _mean_curves(curves: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Per epoch (or step) and key, the mean over the runs that have it: one run's curve as
    it is; a repeated run's members (seeds, folds) averaged, as the advisors should see it."""
    if len(curves) == 1:
        return curves[0]
    sums: dict[int, dict[str, list[float]]] = {}
    for curve in curves:
        for t, row in curve.items():
            for key, value in row.items():
                sums.setdefault(t, {}).setdefault(key, []).append(value)
    return {t: {k: sum(v) / len(v) for k, v in row.items()} for t, row in sums.items()}


def describe_components(record: RunRecord, pm: Any) -> None:
    """Fill ``record.fields`` / ``modalities`` / ``augmenters`` from the plugin registries."""
    from tuneforge.components import Augmenter, Task
    from tuneforge.config import TrainerConfig

    regs = pm.registries
    record.fields["trainer"] = set(TrainerConfig.model_fields)
    model = record.config.get("model") or {}
    name = model.get("name") if isinstance(model, dict) else model
    if name in regs["models"]:
        config = regs["models"].get(name).config_model()  # the declared Config, or an empty one
        record.fields["model"] = {"name", *config.model_fields}
    inputs = record.labels.get("inputs") or {}
    task = record.config.get("task")
    task_name = task.get("name") if isinstance(task, dict) else task  # {name: ..., param: ...}
    roles: dict[str, str] = {}
    if task_name in regs["tasks"]:
        target = regs["tasks"].get(task_name).load()  # a class, or a factory: roles unknown
        if isinstance(target, type) and issubclass(target, Task):
            roles = dict(target.roles)
    # Run folders record each input's modality; older ones only their roles.
    recorded = record.labels.get("modalities") or {}
    record.modalities = {recorded.get(r) or roles.get(r, r) for r in inputs}
    available = []
    for entry in regs["augmenters"]:
        try:
            target = entry.load()  # a class, or a factory: modalities unknown (any)
            is_augmenter = isinstance(target, type) and issubclass(target, Augmenter)
            mods = set(target.modalities) if is_augmenter else set()
        except Exception:  # a broken plugin is reported by `tuneforge plugins`
            continue
        if not mods or mods & record.modalities:
            available.append(entry.name)
    record.augmenters = sorted(available)


def diagnose(record: RunRecord, pm: Any) -> list[Diagnosis]:
    """Every registered advisor's diagnoses, in registration order."""
    out: list[Diagnosis] = []
    for entry in pm.registries["advisors"]:
        advisor = entry.load()()
        for d in advisor.diagnose(record):
            d.advisor = d.advisor or entry.name
            out.append(d)
    return out


def merge_patches(diagnoses: list[Diagnosis]) -> tuple[dict[str, Any], dict[str, str]]:
    """One patch from several diagnoses; when two touch the same key, the first one wins."""
    patch: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for d in diagnoses:
        for key, value in d.patch.items():
            if key not in patch:
                patch[key] = value
                reasons[key] = f"{d.kind}: {d.reasons.get(key, '')}".rstrip(": ")
    return patch, reasons


def patched_config(record: RunRecord, patch: dict[str, Any], out_dir: Path) -> Any:
    """The run's resolved config with ``patch`` applied and the output moved to ``out_dir``."""
    from tuneforge.config import build_config

    raw = json.loads(json.dumps(record.config))  # a deep copy of plain YAML data
    raw.setdefault("output", {})["dir"] = str(out_dir)
    raw["output"]["overwrite"] = False
    try:
        return build_config(raw, list(patch.items()))
    except ConfigError as exc:
        raise UserError(f"the advisors' patch does not apply to {record.path}: {exc}") from None


def next_round_dir(run_dir: Path, round_no: int) -> Path:
    """``runs/x`` -> ``runs/x-r2``; ``runs/x-r2`` -> ``runs/x-r3`` (never an existing folder)."""
    base = run_dir.name
    stem, sep, tail = base.rpartition("-r")
    if sep and tail.isdigit():
        base = stem
    target = run_dir.parent / f"{base}-r{round_no}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir.parent / f"{base}-r{round_no}.{n}"
    return target


_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _current(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def refine(
    run_dir: Path,
    apply: bool,
    rounds: int,
    log: Any,
    disable: list[str] = (),
    local: list[str] = (),
) -> list[dict[str, Any]]:
    """Diagnose ``run_dir``; with ``apply``, run up to ``rounds`` patched rounds.

    Returns the comparison table (one row per round, with the verdict of each round against
    the one before, its difference and 95% interval). Stops when no advisor proposes a change
    or when a round is not measurably better than the previous one
    (:func:`tuneforge.compare.compare_rounds`); the last ``better`` round is the one to keep.
    """
    import pandas as pd

    from tuneforge.compare import BETTER, NOT_MEASURED, compare_rounds
    from tuneforge.manager import make_plugin_manager
    from tuneforge.run import atomic_write_text
    from tuneforge.trainer import improved
    from tuneforge.training import run

    record = load_record(run_dir)
    cfg_for_plugins = patched_config(record, {}, record.path)
    pm = make_plugin_manager(cfg_for_plugins, record.path, disable, local)
    table: list[dict[str, Any]] = []

    def row(rec: RunRecord, round_no: int, changes: str, cmp: Any = None) -> dict[str, Any]:
        test = rec.metrics.get("test") or {}
        name = rec.monitor.removeprefix("val.")
        ci = cmp.ci95 if cmp is not None else None
        return {
            "round": round_no,
            "run": str(rec.path),
            rec.monitor: rec.best_val(),
            f"test.{name}": test.get(name),
            "changes": changes or "-",
            # this round against the one before (round 1: nothing to compare)
            "verdict": cmp.verdict if cmp is not None else "-",
            "diff": cmp.diff if cmp is not None else None,
            "ci95_lo": ci[0] if ci is not None else None,
            "ci95_hi": ci[1] if ci is not None else None,
        }

    table.append(row(record, 1, ""))
    keep, keep_round = record.path, 1  # the last round that was better than the one before
    for round_no in range(2, rounds + 2):
        describe_components(record, pm)
        found = sorted(diagnose(record, pm), key=lambda d: _SEVERITY_ORDER.get(d.severity, 3))
        best = record.best_val()
        where = f"{record.monitor} {best:.4f}" if best is not None else f"status {record.status}"
        log.result(f"diagnosis of {record.path} ({where}, {len(record.epochs)} epochs):")
        if not found:
            log.result("  no advisor fired: nothing to change")
            break
        for d in found:
            log.result(f"  [{d.severity}] {d.kind} ({d.advisor}): {d.evidence}")
        patch, reasons = merge_patches(found)
        # a proposal equal to what the run had (a value at its cap) changes nothing
        patch = {k: v for k, v in patch.items() if _current(record.config, k) != v}
        if not patch:
            log.result("  the advisors propose no config change")
            break
        log.result("patch:")
        for key, value in patch.items():
            before = _current(record.config, key)
            log.result(f"  {key}: {_show(before)} -> {_show(value)}  ({reasons[key]})")
        if not apply:
            log.result(f"run it with: tuneforge refine {record.path} --apply")
            break
        out_dir = next_round_dir(record.path, round_no)
        cfg = patched_config(record, patch, out_dir)
        log.result(f"round {round_no}: training {out_dir}")
        final = run(cfg, record.path, pm, log)
        new = load_record(final)
        cmp = compare_rounds(record, new, record.monitor, record.mode, disable=disable, local=local)
        log.result(cmp.line(round_no, round_no - 1))
        if cmp.verdict == NOT_MEASURED:  # older run folders: the bare difference decides
            go_on = improved(new.best_val(), record.best_val(), record.mode)
        else:
            go_on = cmp.verdict == BETTER
        if go_on:
            keep, keep_round = final, round_no
        changes = ", ".join(f"{k}={_show(v)}" for k, v in patch.items())
        table.append(row(new, round_no, changes, cmp))
        atomic_write_text(
            final / "refine.json",
            json.dumps(
                {
                    "round": round_no,
                    "previous": str(record.path),
                    "diagnoses": [d.as_dict() for d in found],
                    "patch": patch,
                    "comparison": cmp.as_dict(),
                    "keep": str(keep),
                },
                indent=2,
                default=str,
            )
            + "\n",
        )
        atomic_write_text(final / "refine.csv", pd.DataFrame(table).to_csv(index=False))
        record = new
        if not go_on:
            if cmp.verdict == NOT_MEASURED:
                why = "it is not higher" if record.mode == "max" else "it is not lower"
                log.result(f"round {round_no} is not kept ({why}, unmeasured): stopping")
            else:
                log.result(f"round {round_no}: {cmp.verdict}, not better: stopping")
            break
    if len(table) > 1:
        log.result("rounds:")
        log.result(pd.DataFrame(table).to_string(index=False))
        log.result(f"the round to keep: round {keep_round} ({keep})")
    return table
