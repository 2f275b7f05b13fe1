"""The ONNX engine: a run's exported model (``tuneforge export RUN --format onnx``) run with
onnxruntime, for ``tuneforge predict --engine onnx`` and the export's own parity check.

Generic over the task's batches: the task's dataset and ``collate_fn`` make the batches (dicts
of tensors), the session's inputs are taken from them by name as numpy arrays, and the logits
go back to the task's own output methods (``prediction_columns``, ``predictions``), so
calibration and decision thresholds apply exactly as with the torch engine. onnxruntime is
imported only when a session is made.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError

#: The record an export folder holds beside its model(s).
EXPORT_FILE = "export.json"
#: The model file of each ONNX engine of ``tuneforge predict --engine``.
MODEL_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
#: ``--output`` of ``tuneforge export`` and ``--onnx-dir`` of ``predict``: ``RUN/onnx``.
DEFAULT_DIR = "onnx"


def default_dir(run_dir: Path) -> Path:
    """Where ``tuneforge export`` writes a run's ONNX export unless told: ``RUN/onnx``."""
    return Path(run_dir) / DEFAULT_DIR


def checkpoint_digest(folder: Path) -> str:
    """SHA-256 over a checkpoint folder's files (relative names and contents): what an export
    records of its source, so that a stale export (the run's checkpoint replaced since) is
    refused instead of silently used."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_export(onnx_dir: Path, run: str = "RUN") -> dict[str, Any]:
    """``export.json`` of an export folder; a :class:`UserError` when there is none (``run``:
    the run folder the message tells to export)."""
    path = Path(onnx_dir) / EXPORT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"no ONNX export in {onnx_dir} (no {EXPORT_FILE}): run `tuneforge export {run} "
            "--format onnx` first (or give its folder with --onnx-dir)"
        ) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise UserError(f"{path}: unreadable ({reason}); export the run again") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not an export record (a JSON object); export the run again")
    return record


def exported_model(run_dir: Path, onnx_dir: Path | None, engine: str) -> Path:
    """The model file ``engine`` (``onnx``, ``onnx-int8``) runs for the run folder ``run_dir``:
    from ``onnx_dir`` (default ``RUN/onnx``), checked to be an export of the run's current
    checkpoint. Called before any work, so a missing or stale export is a one-line error."""
    from tuneforge.predict import read_members

    if engine not in MODEL_FILES:
        raise UserError(
            f"--engine {engine}: unknown; the engines are torch, {', '.join(MODEL_FILES)}"
        )
    if read_members(run_dir) is not None:
        raise UserError(
            f"{run_dir} is a repeated run (an ensemble of its members): --engine {engine} runs "
            "one exported model; export and predict with one member folder instead"
        )
    folder = default_dir(run_dir) if onnx_dir is None else Path(onnx_dir)
    record = read_export(folder, str(run_dir))
    model = folder / MODEL_FILES[engine]
    if not model.is_file():
        how = " --quantize int8" if engine == "onnx-int8" else ""
        raise UserError(
            f"{folder}: no {model.name}: run `tuneforge export {run_dir} --format onnx{how}` first"
        )
    ckpt = Path(run_dir) / "checkpoint"
    if record.get("checkpoint_sha256") != checkpoint_digest(ckpt):
        raise UserError(
            f"{folder} is not an export of {ckpt} as it is now (made from another run, or the "
            f"checkpoint changed since): run `tuneforge export {run_dir} --format onnx` again"
        )
    return model


def make_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of the model file ``path``: every graph optimisation, and
    ``threads`` intra-op threads (default: torch's, ``torch.get_num_threads()``, so both engines
    use the same cores; ``OMP_NUM_THREADS`` sets both)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(
            "the ONNX engine needs onnxruntime: pip install 'tuneforge[onnx]'"
        ) from None
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"{path}: onnxruntime cannot load it ({first})") from None


def session_logits(
    session: Any, dataset: Any, collate: Callable[[list[Any]], Any], batch_size: int
) -> Any:
    """The session's first output (the logits) over ``dataset``, batched by ``collate``, in the
    dataset's order (a float32 CPU tensor, rows x outputs).

    A dataset that knows its examples' lengths (``dataset.lengths``, text) is batched in order of
    length, so a batch is padded to about its own examples' length; the rows are put back in the
    dataset's order. Each session input is the batch entry of that name as a numpy array;
    ``labels`` and other entries the model does not take are left out.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from tuneforge.sampling import dataset_lengths

    n = len(dataset)
    lengths = dataset_lengths(dataset)
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    names = [i.name for i in session.get_inputs()]
    parts = []
    for batch in loader:
        missing = [name for name in names if name not in batch]
        if missing:
            raise UserError(
                f"the exported model takes {missing} but the task's batches hold only "
                f"{sorted(batch)}: the export does not belong to this run; export it again"
            )
        feed = {name: np.ascontiguousarray(batch[name].numpy()) for name in names}
        parts.append(np.asarray(session.run(None, feed)[0], dtype=np.float32))
    if not parts:
        return torch.zeros((0, 0), dtype=torch.float32)
    stacked = np.concatenate(parts)
    logits = np.empty_like(stacked)
    logits[order] = stacked
    return torch.from_numpy(logits)


def onnx_outputs(
    run_dir: Path, model_file: Path, cfg: Any, task: Any, dataset: Callable[[], Any]
) -> Any:
    """The logits of the exported ``model_file`` (:func:`exported_model`) on a dataset, like
    :func:`tuneforge.predict.model_outputs` gives the torch model's.

    The task's state (tokenizer, feature preprocessing, transform, temperature, thresholds) is
    restored from the run's best checkpoint through ``task.load_artifacts``, the one loading
    path, so the inputs and the outputs are read exactly as with the torch engine; ``dataset``
    (a function of no arguments) is called after that.
    """
    from tuneforge.predict import best_checkpoint

    task.load_artifacts(best_checkpoint(run_dir, warn=False))  # the state; the model is unused
    session = make_session(model_file)
    batch_size = cfg.trainer.eval_batch_size or cfg.trainer.batch_size * 2
    return session_logits(session, dataset(), task.collate_fn(False), batch_size)
