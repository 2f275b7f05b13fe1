"""Run folders (written atomically, locked, confined) and the context handed to lifecycle hooks.

A run folder is built under a hidden ``.NAME.partial-PID`` name beside ``output.dir`` and renamed
into place when the run completes. While it is being built, the run holds an exclusive lock on the
name (``.NAME.lock`` beside it, holding the owner's PID), so a second run or ``--resume`` of the
same ``output.dir`` stops at once with a one-line error naming that process. Nothing that is not a
tuneforge run folder is ever removed or replaced, and components write only inside the run folder
(:data:`RunPath` and :func:`confined`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from tuneforge.checkpoint import STATE_DIR, step_dirs
from tuneforge.errors import ConfigError, UserError, short

try:  # POSIX; elsewhere runs are not locked against each other
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


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


def follow_umask(root: Path) -> None:
    """Give every file and folder under ``root`` the mode a new one gets from the umask.

    Libraries write some files through temporary files (mode ``0600``): a committed run
    folder must read like the rest of the user's files. Symbolic links are not followed.
    """
    mask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                mode = 0o777 & ~mask
            elif stat.S_ISREG(st.st_mode):
                mode = (0o777 if st.st_mode & 0o111 else 0o666) & ~mask
            else:  # links, FIFOs...: left as they are
                continue
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
    if not os.path.islink(root):
        os.chmod(root, 0o777 & ~mask)


#: ``errno`` values that say the file system cannot take more writes, whatever the file.
_FULL_OR_READ_ONLY = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EIO")
    if hasattr(errno, name)
)
#: ``errno`` values that say a path cannot be written (not a bug) when the path is the run's.
_UNWRITABLE = _FULL_OR_READ_ONLY | frozenset(
    getattr(errno, name)
    for name in (
        "EACCES",
        "EPERM",
        "ENOTDIR",
        "EISDIR",
        "EEXIST",
        "ENOENT",
        "ENAMETOOLONG",
        "ELOOP",
        "EMLINK",
        "ENOTEMPTY",
        "EXDEV",
        "EBUSY",
        "ETXTBSY",
        "ESTALE",
    )
    if hasattr(errno, name)
)
_FULL_TEXT = re.compile(
    r"No space left on device|Disk quota exceeded|Read-only file system|os error (28|30|122)\b"
    # torch's zip writer on a short write (a full disk): "[enforce fail at
    # inline_container.cc:672] . unexpected pos 80832 vs 80720"
    r"|inline_container\.cc:\d+\] \. unexpected pos"
)


def _shown(path: object, limit: int = 300) -> str:
    """A path for a message, cut to ``limit`` characters."""
    text = str(path)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _blocking_file(path: Path) -> Path | None:
    """The first existing path at or above ``path`` that is not a folder."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def storage_error(exc: BaseException, where: Path, ours: bool = False) -> UserError | None:
    """A one-line error for a file-system failure while writing the run folder ``where``.

    ``exc`` is an :class:`OSError`, or a library's error carrying an OS error's text (as
    safetensors and torch raise on a full disk). None when it does not look like a
    file-system failure: a full or read-only file system anywhere, or a path that cannot be
    written inside the run folder's parent. ``ours``: the error is known to come from
    writing the run folder (any :class:`OSError` then qualifies).
    """
    if isinstance(exc, UserError):
        return None
    where = Path(where)
    if isinstance(exc, OSError):
        name = exc.filename
        path = Path(os.fsdecode(name)) if isinstance(name, (str, bytes, os.PathLike)) else None
        if path is not None and path.name == f".{where.name}.lock":
            path = path.parent  # the lock file is an implementation detail: name its folder
        inside = path is not None and (path == where.parent or where.parent in path.parents)
        if not (ours or exc.errno in _FULL_OR_READ_ONLY or (inside and exc.errno in _UNWRITABLE)):
            return None
        blocker = (
            _blocking_file(path or where) if exc.errno in (errno.ENOTDIR, errno.EEXIST) else None
        )
        if blocker is not None:
            detail = f"{_shown(blocker)} is a file, not a folder"
        elif path is None or path == where:
            detail = exc.strerror or type(exc).__name__
        else:
            detail = f"{_shown(path)}: {exc.strerror or type(exc).__name__}"
        return UserError(f"cannot write the run folder {_shown(where)}: {detail}")
    match = _FULL_TEXT.search(" ".join(str(exc).split()))
    if match is None:
        return None
    reason = match.group(0)
    if "unexpected pos" in reason:
        reason = "a file could not be written whole (is the disk full?)"
    elif reason.startswith("os error"):
        reason = os.strerror(int(reason.split()[-1]))
    return UserError(
        f"cannot write the run folder {_shown(where)}: {reason} ({type(exc).__name__})"
    )


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2: Any = None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with :class:`FileExistsError` if ``dst`` exists.

    ``os.rename`` silently replaces an empty folder (or a file) at ``dst``; Linux's
    ``renameat2(RENAME_NOREPLACE)`` cannot. Where it is missing (another OS, an old kernel,
    a file system without it) the check and the rename are two steps.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
            func.argtypes += [ctypes.c_uint]
            func.restype = ctypes.c_int
            _renameat2 = func
        except (AttributeError, OSError, TypeError):
            _renameat2 = False
    if _renameat2:
        if (
            _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
            == 0
        ):
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(src), None, str(dst))
    os.rename(src, dst)


class RunLock:
    """An exclusive lock on one run name: ``.NAME.lock`` beside the run folder.

    Taken without waiting: when another process holds it, :class:`UserError` names that
    process (its PID is in the file). The kernel releases the lock when its holder dies,
    SIGKILL included; :meth:`release` also removes the file.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.path = self.final.parent / f".{self.final.name}.lock"
        self._fd: int | None = None
        if fcntl is None:  # pragma: no cover - Windows
            return
        try:
            self._fd = self._acquire()
        except OSError as exc:
            error = storage_error(exc, self.final, ours=True)
            assert error is not None
            raise error from None

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.final}: another tuneforge run ({holder}) is writing this output.dir "
                    "right now; wait for it to end, or choose another output.dir"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder before us may have removed the file it locked: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.unlink(self.path)
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _holder(fd: int) -> str:
        """The PID in the lock file, once it names a live process.

        The holder writes its PID just after locking: until then the file is empty or still
        holds the PID of a killed earlier holder, so a dead PID is read again for a moment.
        """
        text = ""
        for _ in range(100):
            try:
                text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                break
            if text.isdigit() and (int(text) == os.getpid() or _alive(int(text))):
                return f"process {text}"
            time.sleep(0.01)
        return "another process"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the name up (idempotent); the lock file is removed while still locked."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)


# -- paths components write -------------------------------------------------------------------

#: Names at the top of a run folder that tuneforge itself writes: no component may write there.
RUN_FILES = frozenset(
    {
        "config.yaml",
        "findings.json",
        "split.json",
        "labels.json",
        "metrics.json",
        "run.json",
        "history.jsonl",
        "predictions_test.csv",
        "checkpoint",
        STATE_DIR,
        "trials",
        "trials.csv",
        "candidates.csv",
        "best_config.yaml",
        "plots",
        "report.html",
        "evaluations",
        "members",
        "members.json",
        "val_outputs.npz",
    }
)


def inside_problem(value: Any) -> str | None:
    """Why ``value`` is not a path inside the run folder, or None when it is one.

    Checked from the text alone (config time): a relative path that does not climb out with
    ``..``, is not the run folder itself, and names nothing tuneforge writes (:data:`RUN_FILES`).
    """
    if not isinstance(value, (str, os.PathLike)):
        return f"a path inside the run folder is expected, not {short(value, 40)}"
    text = os.fspath(value)
    if isinstance(text, bytes) or "\x00" in text:
        return "not a valid path (it holds a NUL character)"
    shown = short(text, 120)
    if text.startswith("~") or os.path.isabs(text) or PurePosixPath(text).is_absolute():
        return (
            f"{shown} is an absolute path; give a path relative to the run folder "
            "(components write only inside it)"
        )
    parts = [p for p in re.split(r"[\\/]+", text) if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return f"{shown} leaves the run folder ('..'); give a path inside it"
    if depth == 0:
        return f"{shown} is the run folder itself; name a file or folder inside it"
    first = os.path.normpath(text).replace("\\", "/").split("/")[0]
    if first in RUN_FILES:
        return f"{first} belongs to the run folder itself"
    return None


def _check_inside(value: str) -> str:
    problem = inside_problem(value)
    if problem is not None:
        raise PydanticCustomError("run_path", "{problem}", {"problem": problem})
    return value


#: A component parameter naming a file or folder it writes: relative to the run folder and
#: inside it (``file: RunPath = "metrics.csv"``). The error names the key at config time,
#: before anything is written; :func:`confined` checks it again when the file is written.
RunPath = Annotated[str, AfterValidator(_check_inside)]


def confined(run_dir: Path, value: str | os.PathLike[str], key: str) -> Path:
    """``value`` resolved inside ``run_dir``, the path a component writes.

    Refuses (:class:`ConfigError` naming ``key``) an absolute path, a ``..`` that climbs
    out, and a symbolic link inside the run folder that leads out of it.
    """
    problem = inside_problem(value)
    if problem is not None:
        raise ConfigError(key, problem)
    root = Path(os.path.realpath(run_dir))
    target = Path(os.path.realpath(Path(run_dir) / os.fspath(value)))
    if target == root or root not in target.parents:
        raise ConfigError(
            key,
            f"{short(os.fspath(value), 120)} leads outside the run folder {run_dir} "
            f"(through a symbolic link, to {_shown(target)})",
        )
    return target


def is_run_folder(path: Path) -> bool:
    """True when ``path`` is a folder tuneforge wrote: its ``run.json`` has a ``status``.

    A symbolic link, a file, a folder without ``run.json`` or with an unreadable one is not.
    """
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        run_json = path / "run.json"
        if run_json.is_symlink() or not run_json.is_file() or run_json.stat().st_size > 1 << 20:
            return False
        info = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get("status"), str)


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


def _unique_beside(final: Path, label: str) -> Path:
    """A name beside ``final`` for it to be moved to (``.NAME.old-DIGITS``), unused now."""
    for _ in range(1000):
        candidate = final.parent / f".{final.name}.{label}-{time.time_ns()}"
        if not os.path.lexists(candidate):
            return candidate
    raise FileExistsError(errno.EEXIST, "no free name", str(final))


class RunFolder:
    """A run folder built under a hidden ``.NAME.partial-PID`` name and renamed when complete.

    Nothing half-written is left under the final name, and nothing this run does not own is
    removed: the run holds the name's :class:`RunLock` from start to end; ``--overwrite``
    replaces an old tuneforge run only once the new one has succeeded, after checking again
    at that moment what is there; a folder that is not a run (or that appeared during the
    run) is never replaced. A file-system failure (read-only, full, not a folder...) is a
    one-line :class:`UserError` naming the path.
    """

    def __init__(self, final: Path, overwrite: bool = False) -> None:
        self.final = Path(os.path.abspath(Path(final).expanduser())).resolve()
        self.overwrite = overwrite
        self.started = time.time()
        self.training_started = False
        self.resumed = False
        self.committed = False
        self._history: Any = None
        self._done = False
        # The folders this run makes above its own (output.dir's parents), deepest first: an
        # abort removes them again when they are empty, so a refused run leaves nothing.
        self._made = [p for p in (self.final.parent, *self.final.parent.parents) if not p.exists()]
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.final)
        except OSError as exc:
            raise self._os_error(exc) from None
        try:
            self._check_final_at_start()
            self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
            self._refuse_stale(self.path)
            self.path.mkdir()
            try:
                self._write_running()
                self._history = (self.path / "history.jsonl").open("a", encoding="utf-8")
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        except BaseException as exc:
            self._lock.release()
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            raise

    def _check_final_at_start(self) -> None:
        if not os.path.lexists(self.final):
            return
        if not is_run_folder(self.final):
            raise UserError(
                f"{self.final} exists and is not a tuneforge run folder (no readable run.json); "
                "refusing to replace it: choose another output.dir"
            )
        if not self.overwrite:
            raise UserError(
                f"run folder already exists: {self.final} (pass --overwrite to replace it, or "
                "set output.dir)"
            )

    @staticmethod
    def _refuse_stale(path: Path) -> None:
        if os.path.lexists(path):  # a killed run whose PID this process now has
            raise UserError(
                f"{path}: left by an earlier run whose process id this one now has; resume it "
                "with --resume, or move it away"
            )

    def _write_running(self) -> None:
        """``run.json`` of a folder being built: never ``completed`` before the commit."""
        atomic_write_text(
            self.path / "run.json",
            to_json(
                {
                    "status": "running",
                    "pid": os.getpid(),
                    "started": self.started,
                    "overwrite": self.overwrite,
                }
            ),
        )

    def _os_error(self, exc: OSError) -> UserError:
        error = storage_error(exc, self.final, ours=True)
        assert error is not None
        return error

    @classmethod
    def adopt(
        cls, path: Path, final: Path, history_bytes: int | None = None, lock: RunLock | None = None
    ) -> RunFolder:
        """Continue an interrupted run's folder (``--resume``) under this process's name.

        ``history.jsonl`` is cut back to ``history_bytes`` (its size at the checkpoint), so
        the records the killed process logged after it are not repeated. ``lock`` is the
        name's lock if the caller holds it already.
        """
        self = cls.__new__(cls)
        self.final = Path(final).resolve()
        self.training_started = True
        self.resumed = True
        self.committed = False
        self._history = None
        self._done = False
        try:
            self._lock = lock if lock is not None and lock.held else RunLock(self.final)
        except OSError as exc:
            raise self._os_error(exc) from None
        try:
            previous = _read_json_object(path / "run.json")
            self.overwrite = bool(previous.get("overwrite", False))
            started = previous.get("started")
            self.started = float(started) if isinstance(started, (int, float)) else time.time()
            self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
            if Path(path).resolve() != self.path:
                self._refuse_stale(self.path)
                try:
                    rename_noreplace(Path(path), self.path)
                except FileNotFoundError:
                    raise UserError(
                        f"{path}: gone (another process resumed or removed it); see {self.final}"
                    ) from None
            self._write_running()
            history = self.path / "history.jsonl"
            if history_bytes is not None and history.is_file():
                with history.open("r+b") as fh:
                    fh.truncate(min(history_bytes, history.stat().st_size))
            self._history = history.open("a", encoding="utf-8")
        except BaseException as exc:
            self._lock.release()
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            raise
        return self

    def history_size(self) -> int:
        """Bytes of ``history.jsonl`` written so far (stored in training checkpoints)."""
        self._history.flush()
        return self._history.tell()

    def write_text(self, name: str, text: str) -> None:
        """Write the file ``name`` of the run folder atomically."""
        try:
            atomic_write_text(self.path / name, text)
        except OSError as exc:
            raise self._os_error(exc) from None

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, to_json(obj))

    def write_yaml(self, name: str, obj: Any) -> None:
        import yaml

        self.write_text(name, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))

    def log_history(self, record: dict[str, Any]) -> None:
        """Append one record to ``history.jsonl`` (flushed, so a crash keeps what was logged)."""
        try:
            self._history.write(json.dumps(record, default=_json_default) + "\n")
            self._history.flush()
        except OSError as exc:
            raise self._os_error(exc) from None

    def _close_history(self) -> None:
        if self._history is not None:
            with contextlib.suppress(OSError):
                self._history.close()

    def commit(self, info: dict[str, Any] | None = None, keep_lock: bool = False) -> Path:
        """Rename the finished folder to its final name; then write ``info`` as ``run.json``.

        The final name is checked again now: an old tuneforge run there is replaced only with
        ``overwrite`` and only if it is still a run; anything else that appeared there
        meanwhile is left as it is and the run fails (:meth:`fail` keeps it). ``keep_lock``:
        hold the name until :meth:`release` (the run's last hooks write into the folder).
        """
        assert not self._done, "the run folder is closed already"
        try:
            self._history.flush()
        except OSError as exc:
            raise self._os_error(exc) from None
        self._close_history()
        try:
            state = self.path / STATE_DIR
            if state.is_dir():  # training-state checkpoints: a completed run needs none
                doomed = self.path / ".state.old"
                shutil.rmtree(doomed, ignore_errors=True)
                os.replace(state, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
            follow_umask(self.path)
            self._place()
            self._done = self.committed = True
            if info is not None:
                atomic_write_text(self.final / "run.json", to_json(info))
        except OSError as exc:
            raise self._os_error(exc) from None
        if not keep_lock:
            self.release()
        return self.final

    def _place(self) -> None:
        final, old = self.final, None
        if os.path.lexists(final):
            if not is_run_folder(final):
                raise UserError(
                    f"{final}: something that is not a tuneforge run folder appeared there while "
                    "this run trained; it was left untouched, and this run is kept beside it as a "
                    ".failed- folder"
                )
            if not self.overwrite:
                raise UserError(
                    f"{final}: another run was saved there while this run trained; it was kept "
                    "(pass --overwrite to replace it), and this run is kept beside it as a "
                    ".failed- folder"
                )
            old = _unique_beside(final, "old")
            rename_noreplace(final, old)
            if not is_run_folder(old):  # swapped between the check and the rename
                with contextlib.suppress(OSError):
                    rename_noreplace(old, final)
                raise UserError(
                    f"{final} changed while this run was being saved; it was left as it is, and "
                    "this run is kept beside it as a .failed- folder"
                )
        try:
            rename_noreplace(self.path, final)
        except FileExistsError:
            moved = ""
            if old is not None:  # the replaced run must not stay hidden: give it a plain name
                replaced = final.parent / f"{final.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
                with contextlib.suppress(OSError):
                    rename_noreplace(old, replaced)
                    old = replaced
                moved = f" (the run that was there is now {old.name})"
            raise UserError(
                f"{final}: something appeared there while this run was being saved; it was "
                f"left untouched{moved}, and this run is kept beside it as a .failed- folder"
            ) from None
        self.path = final
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def release(self) -> None:
        """Give up the run name's lock (idempotent); called once the run has ended."""
        self._lock.release()

    def abort(self) -> None:
        """Remove the partial folder (a failure before training started: nothing worth keeping).

        A resumed run's folder is kept as it is: it holds the checkpoints to try again from.
        """
        try:
            self._close_history()
            if not self._done and not self.resumed:
                shutil.rmtree(self.path, ignore_errors=True)
            self._done = True
        finally:
            self.release()
        for folder in self._made:  # deepest first; one another run uses now is not empty
            try:
                folder.rmdir()
            except OSError:
                break

    def fail(self, error: BaseException) -> Path:
        """Keep what a run that crashed during training logged, beside (never at) the final name.

        The folder becomes ``NAME.failed-YYYYmmdd-HHMMSS`` with ``run.json`` saying ``failed``
        and why; an existing run at the final name is left as it was. On a file system that
        takes no more writes, the folder is kept as it is (under its partial name if it cannot
        even be renamed). A folder that was committed already stays committed.
        """
        try:
            self._close_history()
            if self._done:
                return self.path
            self._done = True
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            # Half-written temporary folders first (on a full disk, that frees room).
            for leftover in [*self.path.glob(".checkpoint.tmp"), *self.path.glob("state/.tmp-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
            # On a full or read-only disk the folder's name still says what it is.
            with contextlib.suppress(UserError):
                self.write_json(
                    "run.json",
                    {
                        "status": "failed",
                        "error": f"{type(error).__name__}: {message[:1000]}",
                        "started": self.started,
                        "finished": time.time(),
                        "overwrite": self.overwrite,
                    },
                )
            with contextlib.suppress(OSError):
                follow_umask(self.path)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for n in range(1000):
                suffix = f"-{n}" if n else ""
                target = self.final.parent / f"{self.final.name}.failed-{stamp}{suffix}"
                try:
                    rename_noreplace(self.path, target)
                except FileExistsError:
                    continue
                except OSError:
                    return self.path
                self.path = target
                break
            return self.path
        finally:
            self.release()


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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


def _no_state(folder: Path) -> str:
    state = folder / STATE_DIR
    why = "holds no complete checkpoint" if state.is_dir() else "is missing"
    return (
        f"{folder}: the interrupted run's folder exists but has no training-state checkpoint "
        f"({state} {why}: the run stopped before its first one, or it was removed); nothing "
        "to resume, start the run again"
    )


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
                raise UserError(_no_state(path))
            return path, path.parent / m.group("name")
    candidates, running, stateless = [], [], []
    if path.parent.is_dir():
        for sibling in sorted(path.parent.iterdir()):
            m = _PARTIAL.match(sibling.name) or _FAILED.match(sibling.name)
            if not m or m.group("name") != path.name or not sibling.is_dir():
                continue
            if "pid" in m.groupdict() and _alive(int(m.group("pid"))):
                running.append(m.group("pid"))
            elif _newest_state(sibling) >= 0:
                candidates.append(sibling)
            else:
                stateless.append(sibling)
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
    if stateless and not run_json.is_file():
        raise UserError(_no_state(stateless[-1]))
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
    """What lifecycle hooks see about the current run.

    ``run_dir`` is the folder being written (the hidden partial folder); in ``on_run_end`` of a
    completed run it is the committed folder, ``final_dir``.
    """

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
