"""Run folders (written atomically) and the context handed to lifecycle hooks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
        """Remove the partial folder (a failure before training started: nothing worth keeping)."""
        self._history.close()
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
        for leftover in self.path.glob(".checkpoint.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
        os.replace(self.path, target)
        self.path = target
        return target


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
