"""``tuneforge run --resume``: continue a killed run from its last training-state checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.checkpoint import STATE_DIR
from tuneforge.config import (
    build_config,
)
from tuneforge.errors import ConfigError, UserError
from tuneforge.manager import make_plugin_manager
from tuneforge.prepare import Log, prepare
from tuneforge.run import RunFolder, RunLock
from tuneforge.sampling import process_count
from tuneforge.training import close_failed, finish, train


def resume_run(
    run_dir: Path,
    log: Log,
    disable: list[str] = (),
    local: list[str] = (),
    strict: bool | None = None,
) -> Path:
    """Continue a killed or crashed run from its last training-state checkpoint.

    The run's own ``config.yaml`` is used, the data must split as ``split.json`` says, and the
    run ends as the uninterrupted run would have (same final metrics on CPU).
    """
    from tuneforge.checkpoint import read_checkpoint, step_dirs
    from tuneforge.config import read_yaml
    from tuneforge.run import find_resumable

    if process_count() > 1:
        raise UserError("--resume runs in one process (multi-process runs keep no training state)")
    source, final = find_resumable(run_dir)
    # One process at a time continues a run: a second --resume (or a new run of the same
    # output.dir) stops here with a one-line error naming the process that holds it.
    lock = RunLock(final)
    try:
        source, final = find_resumable(run_dir)  # again, now that nobody else can move it
        steps = step_dirs(source / STATE_DIR)
        if not steps and (source / "members").is_dir():
            raise UserError(
                f"{source}: a repeated run (split.folds or trainer.seeds) cannot be resumed; "
                "run it again"
            )
        if not steps:
            raise UserError(f"{source / 'state'}: no training-state checkpoint; nothing to resume")
        # Before anything moves: every file's size and SHA-256, the state's checksum, and that
        # each part decodes; a damaged, missing or extra file is refused here, naming it.
        state = read_checkpoint(steps[-1][1])
        config_file = source / "config.yaml"
        if config_file.is_file() and "***" in config_file.read_text(errors="replace"):
            raise UserError(
                f"{source / 'config.yaml'}: holds masked passwords (***), which a resumed run "
                "cannot use; start the run again from its own config"
            )
        try:
            cfg = build_config(read_yaml(source / "config.yaml"))
        except ConfigError as exc:
            raise UserError(f"{source / 'config.yaml'}: {exc}") from None
        if cfg.tuner is not None or (cfg.model is not None and cfg.model.candidates):
            raise UserError(f"{source}: a study (tuner or model.candidates) cannot be resumed")
        run_info = state.get("run", {})
        base_dir = Path(run_info.get("base_dir") or source)
        cfg.output.dir = final
        pm = make_plugin_manager(cfg, base_dir, disable, local, strict)
        prep = prepare(cfg, base_dir, pm)
        folder = RunFolder.adopt(source, final, run_info.get("history_bytes"), lock=lock)
    except BaseException:
        lock.release()
        raise
    log(f"resuming {final.name} from {source.name}/state/{steps[-1][1].name}")
    try:
        outcome = train(prep, folder, log, resume=folder.path / STATE_DIR / steps[-1][1].name)
        return finish(outcome, prep, log, float(run_info.get("started") or time.time()))
    except BaseException as exc:
        error = close_failed(folder, exc, log)
        if error is exc:
            raise
        raise error from exc
