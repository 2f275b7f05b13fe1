"""The pipeline's stages, re-exported: :mod:`tuneforge.prepare` (config -> components, data
loaded, validated, split), :mod:`tuneforge.training` (``tuneforge run``), :mod:`tuneforge.study`
(tuners and model selection), :mod:`tuneforge.resume` (``--resume``) and
:mod:`tuneforge.predict` (``tuneforge predict``). Import from the stage a command needs; this
module imports them all."""

from __future__ import annotations

from tuneforge.manager import PluginManager, make_plugin_manager, resolve_local
from tuneforge.predict import predict
from tuneforge.prepare import (
    Log,
    Prepared,
    build_component,
    check_problems,
    leakage_check,
    prepare,
    run_validators,
    split_data,
)
from tuneforge.resume import resume_run
from tuneforge.study import run_study
from tuneforge.training import (
    Outcome,
    ReplicaFolder,
    close_failed,
    end_run,
    evaluate_metrics,
    finish,
    model_label,
    run,
    train,
    with_model_selection,
)

__all__ = [
    "Log",
    "Outcome",
    "PluginManager",
    "Prepared",
    "ReplicaFolder",
    "build_component",
    "check_problems",
    "close_failed",
    "end_run",
    "evaluate_metrics",
    "finish",
    "leakage_check",
    "make_plugin_manager",
    "model_label",
    "predict",
    "prepare",
    "resolve_local",
    "resume_run",
    "run",
    "run_study",
    "run_validators",
    "split_data",
    "train",
    "with_model_selection",
]
