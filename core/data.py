"""Modality-agnostic data containers and table readers."""

from __future__ import annotations

import os
import random
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.errors import DataError, UserError, short

TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


_FILE_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words (``"a FIFO (named pipe)"``, ``"a folder"``...)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def path_problem(path: Path | str, folder_ok: bool = False) -> str:
    """Why ``path`` cannot be read as data (``""`` when it can): checked with :func:`os.stat`,
    without opening it.

    Only a regular file passes (a folder too with ``folder_ok``): a FIFO would block the
    reader forever, and a device such as ``/dev/zero`` never ends. Symbolic links are followed.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "not found"
    except NotADirectoryError:
        return "not found (a folder above it is a file)"
    except PermissionError:
        return "cannot be read: permission denied"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return ""
    expected = "a regular file or a folder" if folder_ok else "a regular file"
    return f"is {file_kind(mode)}, not {expected}"


def check_data_path(path: Path, what: str = "data file", folder_ok: bool = False) -> bool:
    """Refuse anything but a regular file (or, with ``folder_ok``, a folder) before it is opened,
    with a one-line :class:`DataError` naming ``path`` and what it is; returns whether ``path``
    is a folder."""
    problem = path_problem(path, folder_ok)
    if problem == "not found":
        raise DataError(f"{what} not found: {path}")
    if problem:
        raise DataError(f"{path}: {what} {problem}")
    return path.is_dir()


_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _encoding_problem(path: Path, encoding: str, exc: UnicodeDecodeError) -> str:
    """Which line is not in ``encoding``, and what the file looks like instead."""
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
        where = ""
    except UnicodeDecodeError as full:
        line = raw[: full.start].count(b"\n") + 1
        where = f" line {line} (byte {raw[full.start]:#04x})"
    except LookupError:
        return f"{path}: unknown encoding {encoding!r} in data.read_options.encoding"
    guess = ""
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(raw).best()
        if best is not None and best.encoding.lower().replace("_", "-") != encoding.lower():
            guess = f"; it looks like {best.encoding}: set data.read_options: {{encoding: {best.encoding}}}"
    except ImportError:  # optional helper; the line number is still given
        pass
    if not guess:
        guess = "; set data.read_options: {encoding: ...} to the file's encoding"
    return f"{path}:{where} is not valid {encoding}{guess}"


def infer_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r}; set data.format to one of "
            f"{', '.join(TABLE_FORMATS)}"
        ) from None


def read_table(
    path: Path, fmt: str = "auto", options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read a CSV/TSV/JSONL/Parquet file into a DataFrame whose index is the 0-based data row."""
    options = dict(options or {})
    if path.is_dir():
        raise DataError(f"data path is a folder, expected a file: {path}")
    check_data_path(path, "data file")  # a FIFO or a device is never opened
    fmt = infer_format(path, fmt)
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, **options)
        elif fmt == "tsv":
            options.setdefault("sep", "\t")
            frame = pd.read_csv(path, **options)
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, **options)
        elif fmt == "parquet":
            frame = pd.read_parquet(path, **options)
        else:
            raise DataError(
                f"{path}: unknown format {fmt!r}; use one of {', '.join(TABLE_FORMATS)}"
            )
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(_encoding_problem(path, options.get("encoding", "utf-8"), exc)) from None
    except pd.errors.ParserError as exc:
        ragged = _RAGGED.search(str(exc))
        if ragged:
            want, line, got = ragged.groups()
            raise DataError(
                f"{path}: line {line} has {got} fields where the header has {want} (a ragged row: "
                "an unquoted separator?)"
            ) from None
        raise DataError(
            f"{path}: cannot read as {fmt}: {str(exc).strip().splitlines()[0]}"
        ) from None
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {first}") from exc
    except Exception as exc:  # pyarrow raises its own types
        raise DataError(f"{path}: cannot read as {fmt}: {type(exc).__name__}: {exc}") from exc
    frame = frame.reset_index(drop=True)
    return frame


#: What a table of predictions can be written as, by the output's suffix.
OUTPUT_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def check_output_file(path: Path, key: str = "--output", source: Path | None = None) -> list[Path]:
    """Refuse, before any work is done, an output table that could not be written: an unknown
    suffix, a folder, something other than a regular file (``/dev/null`` would be replaced),
    the input file itself (``source``), a parent that is a file, or a folder this process
    cannot create files in (a read-only mount, ``/proc``). Returns the missing parent folders,
    outermost first, for :func:`write_table` to create (and remove again on failure).
    """
    problem = path_problem(path)
    if problem == "is a folder, not a regular file":
        raise UserError(f"{key} {path}: is a folder; name a file, e.g. {path / 'predictions.csv'}")
    if problem.startswith("is "):
        raise UserError(f"{key} {path}: {problem}; predictions are written to a regular file")
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        what = f"unknown suffix {short(suffix)}" if suffix else "no suffix"
        raise UserError(
            f"{key} {path}: {what}; name a file ending in one of "
            f"{', '.join(sorted(OUTPUT_SUFFIXES))}"
        )
    if not problem and source is not None:
        try:
            same = os.path.samefile(path, source)
        except OSError:
            same = False
        if same:
            raise UserError(
                f"{key} {path}: is the input file; the predictions would replace the data, "
                "name another file"
            )
    missing: list[Path] = []
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.insert(0, folder)
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"{key} {path}: {folder} is a file, not a folder")
    try:  # a real probe: root passes os.access on read-only pseudo file systems
        fd, probe = tempfile.mkstemp(prefix=".tuneforge-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{key} {path}: cannot create files in {folder}: {reason}") from None
    return missing


def write_table(frame: pd.DataFrame, path: Path, key: str = "--output") -> None:
    """Write ``frame`` as CSV/TSV/JSONL/Parquet (by the suffix) atomically: readers see the old
    file or the whole new one, never a part. A file-system failure (a full disk, a read-only
    mount) is a one-line :class:`UserError`, and the folders made for it are removed again."""
    import io

    from tuneforge.run import atomic_write_bytes

    missing = check_output_file(path, key)
    fmt = OUTPUT_SUFFIXES[path.suffix.lower()]
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf)
        data = buf.getvalue()
    elif fmt == "jsonl":
        data = frame.to_json(orient="records", lines=True).encode("utf-8")
    else:
        data = frame.to_csv(index=False, sep="\t" if fmt == "tsv" else ",").encode("utf-8")
    try:
        for folder in missing:
            folder.mkdir(exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        for folder in reversed(missing):
            try:
                folder.rmdir()
            except OSError:
                break
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{key} {path}: cannot write it: {reason}") from None


class WorkerRandom:
    """The ``random.Random`` a dataset draws its augmentation from, reseeded in each
    DataLoader worker process from the worker's own seed (torch gives each worker a different
    one per epoch); without it every worker would repeat the same draws."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._worker: int | None = None

    def get(self) -> random.Random:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self._rng = random.Random(info.seed)
        return self._rng


def class_list(values: Any) -> list[Any]:
    """The distinct labels in ``values`` (NaN skipped) as plain Python values, in a stable order."""
    plain = {v.item() if hasattr(v, "item") else v for v in pd.Series(values).dropna().unique()}
    return sorted(plain, key=lambda v: (str(type(v)), v))


def resolve_classes(
    frame: pd.DataFrame, label: str, declared: list[Any] | None, path: Path
) -> list[Any]:
    """The classes of a classification dataset: ``declared`` (``data.classes``) when given, every
    label then checked against it, else the distinct labels; at least two."""
    classes = class_list(frame[label])
    if declared:
        declared = list(declared)
        undeclared = frame.index[frame[label].notna() & ~frame[label].isin(declared)]
        if len(undeclared):
            row = int(undeclared[0])
            raise DataError(
                f"{path}: row {row}: label {frame.loc[row, label]!r} is not in data.classes "
                f"{declared} ({len(undeclared)} rows in all)"
            )
        classes = declared
    if len(classes) < 2:
        only = f" (only {classes[0]!r})" if classes else ""
        raise DataError(
            f"{path}: label column {label!r} has {len(classes)} class{only}; "
            "classification needs at least two"
        )
    return classes


def require_columns(frame: pd.DataFrame, columns: dict[str, str], path: Path) -> None:
    """Fail with the config key and the available columns when a column is missing."""
    for key, col in columns.items():
        if col not in frame.columns:
            avail = ", ".join(map(str, frame.columns))
            raise DataError(f"{path}: column {col!r} (from {key}) not found; columns are: {avail}")


@dataclass
class TaskData:
    """Loaded data: a frame whose index is the row number in the source, plus its roles.

    :param frame: one row per example; the index is the 0-based data row in ``source``.
    :param inputs: input role -> column name (e.g. ``{"text": "sentence"}``).
    :param target: the label/target column.
    :param classes: class names in label-id order (classification), or None.
    :param source: where the data came from (for messages).
    :param modalities: input role -> modality (``"text"``, ``"image"``, ``"tabular"``).
    """

    frame: pd.DataFrame
    inputs: dict[str, str]
    target: str | None
    classes: list[Any] | None = None
    source: str = ""
    problem: str = "classification"
    modalities: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, keep: pd.Index | np.ndarray) -> TaskData:
        return TaskData(
            frame=self.frame.loc[keep],
            inputs=self.inputs,
            target=self.target,
            classes=self.classes,
            source=self.source,
            problem=self.problem,
            modalities=self.modalities,
        )

    def label_ids(self) -> np.ndarray:
        """Class ids (classification) aligned with ``frame`` rows."""
        if self.classes is None or self.target is None:
            raise ValueError("label_ids() needs a classification target")
        lookup = {c: i for i, c in enumerate(self.classes)}
        return self.frame[self.target].map(lookup).to_numpy(dtype=np.int64)


class WeightedExamples:
    """A dataset whose examples carry a per-row loss weight (``sample_weight``).

    Used for rows that a validator with policy ``down-weight`` doubts (likely label noise):
    the trainer multiplies their loss by the weight.
    """

    def __init__(self, dataset: Any, weights: np.ndarray) -> None:
        if len(weights) != len(dataset):
            raise ValueError(f"{len(weights)} weights for {len(dataset)} examples")
        self.dataset, self.weights = dataset, weights

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "sample_weight": float(self.weights[i])}

    @staticmethod
    def collate(inner: Any) -> Any:
        """Wrap a collate function: weights (when present) become a float tensor."""

        def collate(features: list[dict[str, Any]]) -> Any:
            import torch

            if not features or "sample_weight" not in features[0]:
                return inner(features)
            weights = [f["sample_weight"] for f in features]
            batch = inner([{k: v for k, v in f.items() if k != "sample_weight"} for f in features])
            batch["sample_weight"] = torch.tensor(weights, dtype=torch.float32)
            return batch

        return collate


def concat_task_data(parts: dict[str, TaskData]) -> tuple[TaskData, pd.Series]:
    """One :class:`TaskData` from several read by the same task (a training file and its given
    validation and test files): the frames one after another, renumbered so that each row has
    its own index (the first part keeps its row numbers; each next part's rows follow the
    previous part's last), plus the name of the part each row came from (a Series indexed like
    the merged frame). The first part's roles, classes and problem are the merged data's; the
    other parts must have the same inputs and target (they are read with the first part's
    classes, :meth:`tuneforge.components.Task.load_labelled`).
    """
    names = list(parts)
    first = parts[names[0]]
    frames, origin = [], []
    start = 0
    for name in names:
        part = parts[name]
        if part.inputs != first.inputs or part.target != first.target:
            raise DataError(
                f"{part.source}: its inputs {part.inputs} / target {part.target!r} differ from "
                f"{first.source}'s ({first.inputs} / {first.target!r})"
            )
        frame = part.frame.copy()
        offset = start if name != names[0] else 0
        frame.index = pd.RangeIndex(len(frame)) + offset if name != names[0] else frame.index
        start = max(start, int(frame.index.max()) + 1 if len(frame) else start)
        frames.append(frame)
        origin.append(pd.Series(name, index=frame.index, dtype=object))
    merged = TaskData(
        frame=pd.concat(frames),
        inputs=first.inputs,
        target=first.target,
        classes=first.classes,
        source=first.source,
        problem=first.problem,
        modalities=first.modalities,
    )
    return merged, pd.concat(origin)
