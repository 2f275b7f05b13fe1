"""A hyperparameter study's plots: optimisation history and parameter importances.

Importances are optuna's fANOVA estimates over the study's completed trials, whichever tuner
ran them (grid, random, optuna, skopt): the trials are replayed into an in-memory optuna study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneforge.run import atomic_write_text


def _distribution(dist: Any) -> Any:
    import optuna.distributions as od

    kind = dist.kind
    if kind == "choice":
        return od.CategoricalDistribution([repr(c) for c in dist.choice])
    if kind == "int":
        return od.IntDistribution(*dist.int)
    if kind == "loguniform":
        return od.FloatDistribution(*dist.loguniform, log=True)
    return od.FloatDistribution(*dist.uniform)


def param_importances(trials: list[Any], space: dict[str, Any], direction: str) -> dict[str, float]:
    """fANOVA importance of each searched key (sums to 1), from the completed trials.

    Empty when fewer than two completed trials differ in their parameters, or when they all
    scored the same (nothing to explain).
    """
    import optuna

    done = [
        t
        for t in trials
        if t.state == "complete" and t.value is not None and math.isfinite(t.value)
    ]
    if len(done) < 2 or len({float(t.value) for t in done}) < 2:
        return {}
    dists = {k: _distribution(d) for k, d in space.items()}
    varied = {k for k in space if len({repr(t.params[k]) for t in done}) > 1}
    if not varied:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if direction == "max" else "minimize")
    for t in done:
        params = {
            k: repr(v) if space[k].kind == "choice" else v
            for k, v in t.params.items()
            if k in dists
        }
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(t.value))
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(
        study, evaluator=evaluator, params=sorted(varied)
    )
    return {k: float(v) for k, v in found.items()}


def write_study_plots(
    study_dir: Path, trials: list[Any], space: dict[str, Any], monitor: str, direction: str
) -> list[Path]:
    """``plots/optimization_history.png``, ``plots/param_importances.png`` and ``importances.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = study_dir / "plots"
    out.mkdir(exist_ok=True)
    written: list[Path] = []
    better = max if direction == "max" else min
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"complete": "tab:blue", "pruned": "tab:orange", "failed": "tab:red"}
    for state, color in colors.items():
        pts = [
            (t.number, t.value)
            for t in trials
            if t.state == state and t.value is not None and math.isfinite(t.value)
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, label=state, zorder=3)
    best_x, best_y, current = [], [], None
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == "complete" and t.value is not None and math.isfinite(t.value):
            current = t.value if current is None else better(current, t.value)
        if current is not None:
            best_x.append(t.number)
            best_y.append(current)
    if best_x:
        ax.step(best_x, best_y, where="post", color="black", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = out / "optimization_history.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    importances = param_importances(trials, space, direction)
    atomic_write_text(study_dir / "importances.json", json.dumps(importances, indent=2) + "\n")
    if importances:
        keys = sorted(importances, key=importances.get)
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(keys) + 1.5))
        ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
        ax.set_xlabel(f"importance for {monitor} (fANOVA)")
        ax.set_title("Hyperparameter importances")
        fig.tight_layout()
        path = out / "param_importances.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
