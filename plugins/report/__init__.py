"""Built-in report plugin: plots and report.html at the end of a run; `tuneforge report`, `tuneforge runs`.

Importing this module is cheap: matplotlib, pandas and scikit-learn are imported only when a
report is built, and the commands are registered as lazy ``"module:Attr"`` strings.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.hookspecs import Register
    from tuneforge.run import RunContext


@hookimpl
def register_commands(register: Register) -> None:
    register(
        "report",
        "tuneforge.plugins.report.commands:ReportCommand",
        "Rebuild a finished run's plots and report.html",
    )
    register(
        "runs",
        "tuneforge.plugins.report.commands:RunsCommand",
        "List runs with their key parameters and metrics, sortable",
    )


@hookimpl
def on_run_end(run: RunContext, metrics: dict[str, Any], status: str) -> None:
    """Write ``plots/*.png`` and ``report.html`` into a completed run's folder.

    A failure here is reported as a warning and never fails the run.
    """
    if status != "completed":
        return
    _build(
        Path(run.run_dir),
        Path(run.final_dir).name,
        "the run report could not be written ({error}); the run itself is complete",
    )


def _build(run_dir: Path, name: str | None, failed: str) -> None:
    """Write ``run_dir/report.html``, its warnings and any failure (``failed``, with
    ``{error}``) printed as one-line warnings: a report never fails what it describes."""
    try:
        from tuneforge.plugins.report.html import build_report

        report = build_report(run_dir) if name is None else build_report(run_dir, name=name)
        for warning in report.warnings:
            print(f"tuneforge: warning: {warning}", file=sys.stderr, flush=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {first}"
        shown = failed.replace("{error}", error)  # not str.format: paths may hold braces
        print(f"tuneforge: warning: {shown}", file=sys.stderr, flush=True)


@hookimpl
def on_evaluation_end(run_dir: Path, name: str, results: dict[str, Any]) -> None:
    """Rebuild the run's ``report.html``, when it has one, so that it shows the new evaluation.

    A failure here is reported as a warning: the evaluation itself is saved.
    """
    if not (Path(run_dir) / "report.html").is_file():
        return
    failed = f"{run_dir}/report.html could not be rebuilt ({{error}}); evaluation {name!r} is saved"
    _build(Path(run_dir), None, failed)


@hookimpl
def on_study_end(
    study_dir: Path, trials: list[Any], space: dict[str, Any], monitor: str, direction: str
) -> None:
    """Plot a study's optimisation history and parameter importances into ``plots/``."""
    try:
        from tuneforge.plugins.report.study import write_study_plots

        write_study_plots(study_dir, trials, space, monitor, direction)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"tuneforge: warning: the study plots could not be written "
            f"({type(exc).__name__}: {first})",
            file=sys.stderr,
            flush=True,
        )
