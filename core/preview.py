"""``tuneforge validate --show-augmented N``: what the config's augmenters make of N training
examples.

Core draws the examples (seeded with ``trainer.seed``, from the train split the validators and
the split left), gives the task the train-split state training gives it (:meth:`Task.fit`,
:meth:`Task.prepare`) and asks the task to show them (:meth:`Task.preview_augmented`): only
the task knows what its examples look like. Files a task writes (image previews) go into a
folder of their own, never into a run folder: ``--preview-dir DIR`` (a new or empty folder),
or a new temporary folder. They are written into a hidden folder beside ``DIR`` that is renamed
to ``DIR`` once complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.data import TaskData
    from tuneforge.prepare import Prepared
    from tuneforge.split import Split

OPTION = "--show-augmented"
DIR_OPTION = "--preview-dir"


@dataclass
class AugmentedPreview:
    """What :func:`show_augmented` found: the task's lines, notes, and where its files are."""

    augmenters: list[str]
    rows: list[int]
    train_rows: int
    seed: int
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The folder holding the files the task wrote, or None when it wrote none.
    folder: Path | None = None
    files: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The ``augmented`` entry of ``tuneforge validate --json``."""
        return {
            "augmenters": self.augmenters,
            "rows": self.rows,
            "train_rows": self.train_rows,
            "seed": self.seed,
            "lines": self.lines,
            "notes": self.notes,
            "folder": None if self.folder is None else str(self.folder),
            "files": self.files,
        }

    def text(self) -> list[str]:
        """The lines ``tuneforge validate`` prints."""
        if not self.augmenters:
            return [f"augmented: {note}" for note in self.notes]
        out = [
            f"augmented: {len(self.rows)} of {self.train_rows} training rows (trainer.seed "
            f"{self.seed}) through {', '.join(self.augmenters)}"
        ]
        out += [f"  note: {note}" for note in self.notes]
        out += [f"  {line}" for line in self.lines]
        if self.folder is not None:
            out.append(f"  {self.files} files in {self.folder}")
        return out


def check_request(n: int, preview_dir: Path | None, output_dir: Path) -> None:
    """Refuse a bad ``N`` or ``--preview-dir`` before any data is read.

    :param output_dir: the config's ``output.dir``: previews never go into the run folder.
    """
    if n < 1:
        raise UserError(f"{OPTION}: N must be at least 1 (examples to show), got {n}")
    if preview_dir is None:
        return
    target = preview_dir
    try:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise UserError(f"{DIR_OPTION} {target}: not a folder; name a new or empty folder")
        if target.is_dir() and any(target.iterdir()):
            raise UserError(
                f"{DIR_OPTION} {target}: the folder is not empty; name a new or empty folder"
            )
    except OSError as exc:
        raise UserError(f"{DIR_OPTION} {target}: {exc.strerror or type(exc).__name__}") from None
    where, run = target.resolve(), Path(output_dir).resolve()
    if where == run or run in where.parents:
        raise UserError(
            f"{DIR_OPTION} {target}: inside the run folder (output.dir {output_dir}); "
            "previews never go into a run folder: name another folder"
        )
    parent = target.absolute().parent
    if not parent.is_dir():
        raise UserError(f"{DIR_OPTION} {target}: its parent folder {parent} does not exist")


def show_augmented(
    prep: Prepared, data: TaskData, split: Split, n: int, preview_dir: Path | None
) -> AugmentedPreview:
    """Draw ``n`` training rows and let the task show them augmented (see the module doc).

    :param data: the data after validation; ``split`` its split.
    :param n: examples wanted (at least 1, :func:`check_request`); more than the train split
        holds shows all of it, with a note.
    :param preview_dir: ``--preview-dir``, or None for a new temporary folder.
    """
    import numpy as np

    cfg = prep.config
    train = np.asarray(split.train)
    seed = int(cfg.trainer.seed)
    preview = AugmentedPreview([ref.name for ref in cfg.augmenters], [], len(train), seed)
    if not prep.augmenters:
        preview.notes.append(
            "the config has no augmenters (augmenters: []): training sees its examples unchanged"
        )
        return preview
    if n > len(train):
        preview.notes.append(
            f"{OPTION} {n}: the train split has {len(train)} rows; showing all of them"
        )
        n = len(train)
    rows = np.sort(np.random.default_rng(seed).choice(train, size=n, replace=False))
    preview.rows = [int(r) for r in rows]
    task = prep.task
    task.fit(data, split.train)  # train-split state, as training gives it (features, scaler)
    task.prepare()
    staging = _staging(preview_dir)
    try:
        preview.lines = list(task.preview_augmented(data, rows, prep.augmenters, seed, staging))
        preview.files = sum(1 for p in staging.rglob("*") if p.is_file())
        if not preview.files:
            shutil.rmtree(staging)
            if preview_dir is not None:
                preview.notes.append(f"{DIR_OPTION}: the task wrote no files; nothing was created")
        elif preview_dir is None:
            preview.folder = staging
        else:
            if preview_dir.is_dir():
                preview_dir.rmdir()  # empty, as checked; a file put there since fails here
            os.rename(staging, preview_dir)
            preview.folder = preview_dir
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and _names_folder(exc, staging, preview_dir):
            where = staging if preview_dir is None else preview_dir
            raise UserError(
                f"cannot write the augmentation preview into {where}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        raise
    return preview


def _staging(preview_dir: Path | None) -> Path:
    """A new empty folder for the task's files: the temporary folder itself, or a hidden
    folder beside ``preview_dir`` that is renamed to it once complete."""
    try:
        if preview_dir is None:
            return Path(tempfile.mkdtemp(prefix="tuneforge-augmented-"))
        parent = preview_dir.absolute().parent
        staging = Path(tempfile.mkdtemp(prefix=f".{preview_dir.name}.partial-", dir=parent))
        mask = os.umask(0)
        os.umask(mask)
        staging.chmod(0o777 & ~mask)  # as a plain mkdir would make it, not mkdtemp's 0o700
        return staging
    except OSError as exc:
        where = preview_dir if preview_dir is not None else Path(tempfile.gettempdir())
        raise UserError(
            f"cannot write the augmentation preview into {where}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None


def _names_folder(exc: OSError, staging: Path, preview_dir: Path | None) -> bool:
    """Whether ``exc`` is about writing the preview folder (not, say, reading an image)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # full or read-only: no name
        return True
    paths = [p for p in (exc.filename, exc.filename2) if isinstance(p, (str, bytes, os.PathLike))]
    folders = [staging.absolute()] + ([preview_dir.absolute()] if preview_dir else [])
    for raw in paths:
        path = Path(os.fsdecode(raw)).absolute()
        if any(path == f or f in path.parents for f in folders):
            return True
    return False
