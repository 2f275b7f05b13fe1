"""Run folders (written atomically) and the context handed to lifecycle hooks."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.checkpoint import STATE_DIR, step_dirs
from tuneforge.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"


class RunFolder:
    """A run folder built under a hidden ``.NAME.partial-PID`` name and renamed when complete.

    Nothing half-written is left under the final name: a failed run removes its partial
    folder, and ``--overwrite`` replaces an old run only once the new one has succeeded.
    """

    def __init__(self, final: Path, overwrite: bool = False) -> None:
        self.final = final.resolve()
        if self.final.exists() and not overwrite:
            raise UserError(
                f"run folder already exists: {self.final} (pass --overwrite to replace it, or set output.dir)"
            )
        if self.final.exists() and not (self.final / "run.json").exists():
            raise UserError(
                f"{self.final} exists and is not a tuneforge run folder; refusing to replace it"
            )
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()
        self._history = (self.path / "history.jsonl").open("a", encoding="utf-8")
        self.training_started = False
        self.resumed = False

    @classmethod
    def adopt(cls, path: Path, final: Path, history_bytes: int | None = None) -> RunFolder:
        """Continue an interrupted run's folder (``--resume``) under this process's name.

        ``history.jsonl`` is cut back to ``history_bytes`` (its size at the checkpoint), so
        the records the killed process logged after it are not repeated.
        """
        self = cls.__new__(cls)
        self.final = final.resolve()
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        if path.resolve() != self.path:
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(path, self.path)
        history = self.path / "history.jsonl"
        if history_bytes is not None and history.is_file():
            with history.open("r+b") as fh:
                fh.truncate(min(history_bytes, history.stat().st_size))
        self._history = history.open("a", encoding="utf-8")
        self.training_started = True
        self.resumed = True
        return self

    def history_size(self) -> int:
        """Bytes of ``history.jsonl`` written so far (stored in training checkpoints)."""
        self._history.flush()
        return self._history.tell()

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, to_json(obj))

    def write_yaml(self, name: str, obj: Any) -> None:
        atomic_write_text(
            self.path / name, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
        )

    def log_history(self, record: dict[str, Any]) -> None:
        """Append one record to ``history.jsonl`` (flushed, so a crash keeps what was logged)."""
        self._history.write(json.dumps(record, default=_json_default) + "\n")
        self._history.flush()

    def commit(self) -> Path:
        self._history.close()
        state = self.path / STATE_DIR
        if state.is_dir():  # training-state checkpoints: a completed run needs none
            doomed = self.path / ".state.old"
            os.replace(state, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.path = self.final
        return self.final

    def abort(self) -> None:
        """Remove the partial folder (a failure before training started: nothing worth keeping).

        A resumed run's folder is kept as it is: it holds the checkpoints to try again from.
        """
        self._history.close()
        if not self.resumed:
            shutil.rmtree(self.path, ignore_errors=True)

    def fail(self, error: BaseException) -> Path:
        """Keep what a run that crashed during training logged, beside (never at) the final name.

        The folder becomes ``NAME.failed-YYYYmmdd-HHMMSS`` with ``run.json`` saying ``failed``
        and why; an existing run at the final name is left as it was.
        """
        self._history.close()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.final.parent / f"{self.final.name}.failed-{stamp}"
        n = 1
        while target.exists():
            target = self.final.parent / f"{self.final.name}.failed-{stamp}-{n}"
            n += 1
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.write_json(
            "run.json",
            {
                "status": "failed",
                "error": f"{type(error).__name__}: {message}",
                "finished": time.time(),
            },
        )
        for leftover in [*self.path.glob(".checkpoint.tmp"), *self.path.glob("state/.tmp-*")]:
            shutil.rmtree(leftover, ignore_errors=True)
        os.replace(self.path, target)
        self.path = target
        return target


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")
_FAILED = re.compile(r"^(?P<name>.+)\.failed-\d{8}-\d{6}(-\d+)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _newest_state(folder: Path) -> float:
    steps = step_dirs(folder / STATE_DIR)
    return max((p.stat().st_mtime for _, p in steps), default=-1.0)


def find_resumable(path: Path) -> tuple[Path, Path]:
    """The folder of an interrupted run to continue, and the run's final folder name.

    ``path`` is the run's ``output.dir`` (the interrupted run's hidden ``.NAME.partial-PID``
    folder beside it is found), or such a partial folder, or a ``NAME.failed-...`` folder.
    """
    path = Path(os.path.abspath(path.expanduser()))
    for pattern in (_PARTIAL, _FAILED):
        m = pattern.match(path.name)
        if m and path.is_dir():
            if pattern is _PARTIAL and _alive(int(m.group("pid"))):
                raise UserError(
                    f"{path}: the run is still going (process {m.group('pid')} is alive)"
                )
            if _newest_state(path) < 0:
                raise UserError(
                    f"{path}: no training-state checkpoint in {path / 'state'} (the run stopped "
                    "before its first one); nothing to resume, start it again"
                )
            return path, path.parent / m.group("name")
    candidates, running = [], []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            m = _PARTIAL.match(sibling.name) or _FAILED.match(sibling.name)
            if not m or m.group("name") != path.name or not sibling.is_dir():
                continue
            if "pid" in m.groupdict() and _alive(int(m.group("pid"))):
                running.append(m.group("pid"))
            elif _newest_state(sibling) >= 0:
                candidates.append(sibling)
    run_json = path / "run.json"
    if run_json.is_file():  # a run that completed since: older interrupted attempts are stale
        candidates = [c for c in candidates if _newest_state(c) > run_json.stat().st_mtime]
    if candidates:
        return max(candidates, key=_newest_state), path
    if running:
        raise UserError(f"{path}: the run is still going (process {running[0]} is alive)")
    if run_json.is_file():
        try:
            status = json.loads(run_json.read_text()).get("status")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            status = None
        if status == "completed":
            raise UserError(f"{path} is a completed run: nothing to resume")
    if path.is_dir():
        raise UserError(
            f"{path}: no training-state checkpoint in {path / 'state'} and no interrupted run "
            "beside it; nothing to resume"
        )
    raise UserError(
        f"no run to resume at {path}: neither it nor an interrupted .{path.name}.partial-* "
        "folder beside it exists"
    )


def read_history(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of ``history.jsonl``; a truncated or corrupt line is skipped with a warning."""
    path = run_dir / "history.jsonl"
    records: list[dict[str, Any]] = []
    warnings: list[str] = []
    if not path.is_file():
        return records, [f"{path}: no history"]
    for number, line in enumerate(
        path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.append(f"{path}: line {number} is truncated or corrupt; skipped")
            continue
        if not isinstance(record, dict) or not {"name", "value"} <= set(record):
            warnings.append(f"{path}: line {number} is not a history record; skipped")
            continue
        records.append(record)
    return records, warnings


@dataclass
class RunContext:
    """What lifecycle hooks see about the current run."""

    config: Any
    run_dir: Path
    final_dir: Path
    task: str
    problem: str
    classes: list[Any] | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    trial: int | None = None
    started: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
