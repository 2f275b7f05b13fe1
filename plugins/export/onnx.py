"""``tuneforge export RUN --format onnx [--output DIR] [--quantize int8] [--opset N]``.

The run's best checkpoint is loaded through the task (``Task.load_artifacts``, the loading path
``predict`` and ``evaluate`` use) and exported with ``torch.onnx.export`` (the torch.export-based
exporter; the TorchScript one as a fallback), its inputs the tensors the task's ``collate_fn``
gives the model, the batch axis (and a text's sequence axis: :meth:`Task.export_axes`) dynamic,
its one output the logits. The folder also holds what predicting needs beside the model
(:meth:`Task.export_preprocessing`: tokenizer files, transform or feature parameters,
calibration and thresholds), the run's ``labels.json`` and ``config.yaml``, and ``export.json``.

Before anything is written the command checks the export on the run's test split: the logits
of onnxruntime (CPU) against PyTorch's (CPU, float32), their largest absolute difference and the
share of predictions that agree; beyond tolerance it is an error and nothing is left behind
(the folder is written under a temporary name and renamed at the end). An int8 model
(``--quantize int8``, onnxruntime's dynamic quantization) is checked too and its figures
reported, without failing the command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import Command
from tuneforge.errors import UserError
from tuneforge.onnx_engine import (
    EXPORT_FILE,
    MODEL_FILES,
    checkpoint_digest,
    default_dir,
    make_session,
    session_logits,
)

FORMATS = ("onnx",)
QUANTIZE = ("int8",)
#: fp32 parity: the largest absolute logit difference allowed, and the least agreement.
TOLERANCE, MIN_AGREEMENT = 1e-3, 0.999
#: The opset used unless ``--opset`` says (the torch.export-based exporter's own).
DEFAULT_OPSET = 18
#: Rows of the example batch the model is traced with (two at least: a batch of one would fix
#: the batch axis).
SAMPLE_ROWS = 8


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class ExportCommand(Command):
    help: ClassVar[str] = "export a finished run's model to ONNX, checked against PyTorch"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN", help="a completed run folder")
        parser.add_argument(
            "--format", default="onnx", metavar="FORMAT", help="the export format: onnx"
        )
        parser.add_argument(
            "--output",
            "-o",
            type=Path,
            default=None,
            metavar="DIR",
            help="the export folder (default RUN/onnx); an earlier export there is replaced",
        )
        parser.add_argument(
            "--quantize",
            default=None,
            metavar="int8",
            help="also write model.int8.onnx (onnxruntime dynamic quantization), its parity "
            "reported separately",
        )
        parser.add_argument(
            "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
        )
        parser.add_argument(
            "--tolerance",
            type=float,
            default=TOLERANCE,
            help=f"largest absolute logit difference the fp32 parity check allows (default {TOLERANCE:g})",
        )
        parser.add_argument(
            "--parity-input",
            type=Path,
            default=None,
            metavar="FILE",
            help="check parity on this input file instead of the run's test split (when the "
            "training data is no longer where the run read it)",
        )

    def run(self, args: Any) -> int:
        from tuneforge.console import Console

        export_onnx(
            args.run_dir,
            args.output,
            fmt=args.format,
            quantize=args.quantize,
            opset=args.opset,
            tolerance=args.tolerance,
            parity_input=args.parity_input,
            log=Console(),
            disable=args.disable_plugin,
            local=args.plugin,
        )
        return 0


# -- checks before any work -------------------------------------------------------------------


def check_arguments(fmt: str, quantize: str | None, opset: int, tolerance: float) -> None:
    import numpy as np

    if fmt not in FORMATS:
        raise UserError(
            f"--format {fmt}: unknown export format; the formats are: {', '.join(FORMATS)}"
        )
    if quantize is not None and quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize}: unknown; the choices are: {', '.join(QUANTIZE)}")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise UserError(f"--opset {opset}: must be between 13 and {newest} (this onnx)")
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise UserError(f"--tolerance {tolerance}: must be a finite number >= 0")


def check_output(out: Path, run_dir: Path) -> None:
    """Refuse an output that is a file, a folder holding something other than an earlier
    export, or a folder inside the run's checkpoint."""
    ckpt = (run_dir / "checkpoint").resolve()
    resolved = out.resolve()
    if resolved == ckpt or ckpt in resolved.parents:
        raise UserError(f"--output {out}: inside the run's checkpoint folder; choose another")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"--output {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
            raise UserError(
                f"--output {out}: a folder that is not empty and holds no earlier export "
                f"({EXPORT_FILE}); choose a new or empty folder"
            )


# -- the export -------------------------------------------------------------------------------


def export_onnx(
    run_dir: Path,
    output: Path | None,
    fmt: str = "onnx",
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = TOLERANCE,
    parity_input: Path | None = None,
    log: Any = print,
    disable: list[str] = (),
    local: list[str] = (),
) -> dict[str, Any]:
    """Export a completed run's model to ONNX in ``output`` (default ``RUN/onnx``) after a
    parity check; returns what ``export.json`` holds. Bad input is refused, and a failed check
    leaves nothing, before anything is written."""
    from tuneforge.evaluate import completed_run
    from tuneforge.predict import best_checkpoint, bound_run, read_labels, read_members

    run_dir = Path(run_dir)
    check_arguments(fmt, quantize, opset, tolerance)
    completed_run(run_dir)  # a run folder that completed, with a checkpoint
    if read_members(run_dir) is not None:
        raise UserError(
            f"{run_dir} is a repeated run (an ensemble of its members): export one member's "
            "folder instead"
        )
    out = default_dir(run_dir) if output is None else Path(output)
    check_output(out, run_dir)
    if parity_input is not None and not parity_input.exists():
        raise UserError(f"--parity-input {parity_input}: file not found")

    cfg, task, _ = bound_run(run_dir, list(disable), list(local))
    labels = read_labels(run_dir / "labels.json")
    ckpt = best_checkpoint(run_dir, warn=False)
    digest = checkpoint_digest(ckpt)
    model = task.load_artifacts(ckpt)
    model = model.float().cpu().eval()
    dataset, split = parity_dataset(run_dir, cfg, task, labels, parity_input)

    parent = out.parent
    made = _make_parents(parent)
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    old = parent / f".{out.name}.old-{os.getpid()}"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        record = _build(
            tmp,
            run_dir,
            ckpt,
            digest,
            cfg,
            task,
            model,
            dataset,
            split,
            opset,
            quantize,
            tolerance,
            log,
        )
        from tuneforge.run import follow_umask

        follow_umask(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)  # the earlier export stays
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
    log(f"export folder: {out}")
    return record


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and its missing parents; the ones created, outermost first."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output: cannot create {parent} ({exc.strerror or exc})") from None
    return list(reversed(missing))


def parity_dataset(
    run_dir: Path, cfg: Any, task: Any, labels: dict[str, Any], parity_input: Path | None
) -> tuple[Any, str]:
    """The dataset the parity check predicts, and what it is: ``--parity-input`` (read as
    ``predict`` reads inputs), else the run's test split (``data.test_path``, or the rows of
    ``data.path`` that ``split.json`` names; its validation rows when the test split is
    empty)."""
    import numpy as np

    if parity_input is not None:
        frame = task.load_inputs(parity_input, cfg.data)
        if len(frame) == 0:
            raise UserError(f"--parity-input {parity_input}: no data rows")
        return task.predict_dataset(frame, cfg.data), f"{len(frame)} rows of {parity_input}"
    how = "; give a file to check on with --parity-input"
    try:
        if cfg.data.test_path is not None:
            data = task.load_labelled(cfg.data, run_dir, Path(cfg.data.test_path), labels)
            rows = data.frame.index.to_numpy()
            name = f"test split ({cfg.data.test_path})"
        else:
            split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
            part = "test" if split.get("test") else "val"
            rows = np.asarray([int(r) for r in split.get(part) or []], dtype=np.int64)
            data = task.load_labelled(cfg.data, run_dir, Path(cfg.data.path), labels)
            if not np.isin(rows, data.frame.index).all():
                raise UserError(
                    f"{cfg.data.path} no longer holds the {part} rows split.json names "
                    "(changed since the run?)"
                )
            name = f"{part} split"
    except (OSError, ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(
            f"{run_dir}: the parity check cannot read the run's test split ({_first_line(exc)}){how}"
        ) from None
    if len(rows) == 0:
        raise UserError(
            f"{run_dir}: the run has no test or validation rows to check parity on{how}"
        )
    dataset = task.make_dataset(data, rows, [], cfg.trainer.seed)
    return dataset, f"{len(rows)} rows of the {name}"


class _Logits:
    """Makes the module the exporter traces: the task's model called with the batch's tensors
    by name, returning its logits (a tensor, or an output's ``.logits``)."""

    @staticmethod
    def wrap(model: Any, names: list[str]) -> Any:
        import torch

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *inputs: Any) -> Any:
                out = self.model(**dict(zip(names, inputs, strict=True)))
                # the forward's return value (a tensor or a transformers ModelOutput)
                return out.logits if hasattr(out, "logits") else out

        return Logits().eval()


def sample_batch(dataset: Any, collate: Any) -> dict[str, Any]:
    """A collated batch of a few examples (at least two: repeated when there is one), without
    ``labels`` and ``sample_weight``: what the model is traced with."""
    n = len(dataset)
    picks = list(range(min(n, SAMPLE_ROWS)))
    if len(picks) < 2:
        picks = [0, 0]
    batch = collate([dataset[i] for i in picks])
    return {k: v for k, v in batch.items() if k not in ("labels", "sample_weight")}


def _axis_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in str(name))
    return cleaned if cleaned and not cleaned[0].isdigit() else f"d_{cleaned}"


def torch_export(
    model: Any, batch: dict[str, Any], axes: dict[str, dict[int, str]], path: Path, opset: int
) -> str:
    """Write ``model`` as ONNX to ``path``; returns the exporter used. The torch.export-based
    exporter first (exact for transformers' attention masks), the TorchScript-based one
    (``dynamic_axes``) when it fails; weights inside the file unless over 1.5 GB."""
    import torch

    names = list(batch)
    unknown = sorted(set(axes) - set(names))
    if unknown:
        raise UserError(f"the task's export axes name inputs its batches lack: {unknown}")
    wrapper = _Logits.wrap(model, names)
    args = tuple(batch[n] for n in names)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    big = size > 1.5e9
    dims: dict[str, Any] = {}
    shapes = tuple(
        {d: dims.setdefault(a, torch.export.Dim(_axis_name(a))) for d, a in axes.get(n, {}).items()}
        for n in names
    )
    noise = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(noise):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                args,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=(shapes,),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            program.save(str(path), external_data=big)
        return "torch.onnx.export(dynamo=True)"
    except Exception as first:
        dynamo_error = _first_line(first)
    dynamic = {n: {d: _axis_name(a) for d, a in axes.get(n, {}).items()} for n in names}
    dynamic["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(noise):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
        return "torch.onnx.export(dynamo=False)"
    except Exception as second:
        raise UserError(
            f"the model cannot be exported to ONNX opset {opset}: {dynamo_error} (and with the "
            f"TorchScript exporter: {_first_line(second)})"
        ) from None


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantization of the weights of ``source`` into ``target``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its advice to pre-process, logged on the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    except Exception as exc:
        raise UserError(f"int8 quantization failed ({_first_line(exc)})") from None
    finally:
        logging.disable(logging.NOTSET)


def agreement(task: Any, reference: Any, other: Any) -> float:
    """The share of rows whose prediction (:meth:`Task.predictions`, calibration and thresholds
    applied) is the same from ``other`` logits as from ``reference``; predicted values
    (regression) agree within 1e-3 relative."""
    import numpy as np

    ref, _ = task.predictions(reference)
    got, _ = task.predictions(other)
    ref, got = np.asarray(ref), np.asarray(got)
    if len(ref) == 0:
        return 1.0
    if np.issubdtype(ref.dtype, np.floating):
        same = np.isclose(ref, got, rtol=1e-3, atol=1e-3)
    else:
        same = ref == got
    if same.ndim > 1:
        same = same.reshape(len(same), -1).all(axis=1)
    return float(same.mean())


def _figures(task: Any, reference: Any, logits: Any) -> dict[str, Any]:
    diff = (reference.float() - logits.float()).abs()
    return {
        "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "agreement": agreement(task, reference, logits),
    }


def _build(
    tmp: Path,
    run_dir: Path,
    ckpt: Path,
    digest: str,
    cfg: Any,
    task: Any,
    model: Any,
    dataset: Any,
    split: str,
    opset: int,
    quantize: str | None,
    tolerance: float,
    log: Any,
) -> dict[str, Any]:
    """Write the export into the new folder ``tmp`` and check it; returns ``export.json``."""
    import onnx
    import onnxruntime
    import torch

    from tuneforge.trainer import Trainer

    collate = task.collate_fn(False)
    batch = sample_batch(dataset, collate)
    axes = task.export_axes(batch)
    model_path = tmp / MODEL_FILES["onnx"]
    started = time.monotonic()
    exporter = torch_export(model, batch, axes, model_path, opset)
    log(f"exported {model_path.name} (opset {opset}) in {time.monotonic() - started:.1f}s")

    # PyTorch's reference logits: the trainer's predict, on the CPU in float32.
    trainer = Trainer(cfg.trainer.model_copy(update={"device": "cpu", "precision": "fp32"}))
    reference, _ = trainer.predict(
        trainer.prepare_model(model, local=True), trainer.loader(dataset, collate, local=True)
    )
    batch_size = cfg.trainer.eval_batch_size or cfg.trainer.batch_size * 2
    fp32 = _figures(
        task, reference, session_logits(make_session(model_path), dataset, collate, batch_size)
    )
    passed = fp32["max_abs_diff"] <= tolerance and fp32["agreement"] >= MIN_AGREEMENT
    fp32.update(tolerance=tolerance, min_agreement=MIN_AGREEMENT, passed=passed)
    log(
        f"parity fp32 on {split}: max |logit diff| {fp32['max_abs_diff']:.3g} "
        f"(tolerance {tolerance:g}), predictions agree {100 * fp32['agreement']:.2f}%"
    )
    if not passed:
        raise UserError(
            f"the ONNX export does not match PyTorch on {split}: max |logit diff| "
            f"{fp32['max_abs_diff']:.3g} (tolerance {tolerance:g}), predictions agree "
            f"{100 * fp32['agreement']:.2f}% (at least {100 * MIN_AGREEMENT:.1f}% needed); "
            "nothing was written"
        )
    parity: dict[str, Any] = {"on": split, "fp32": fp32}
    if quantize == "int8":
        int8_path = tmp / MODEL_FILES["onnx-int8"]
        quantize_int8(model_path, int8_path)
        int8 = _figures(
            task, reference, session_logits(make_session(int8_path), dataset, collate, batch_size)
        )
        int8["checked"] = False  # reported only: quantization changes the logits by design
        parity["int8"] = int8
        log(
            f"parity int8 on {split}: max |logit diff| {int8['max_abs_diff']:.3g}, predictions "
            f"agree {100 * int8['agreement']:.2f}% (reported, not checked)"
        )
        if int8["agreement"] < 0.99:
            print(
                f"tuneforge: warning: the int8 model changes {100 * (1 - int8['agreement']):.1f}% "
                f"of the predictions on {split}; prefer model.onnx",
                file=sys.stderr,
                flush=True,
            )

    preprocessing = task.export_preprocessing(ckpt, tmp)
    for name in ("labels.json", "config.yaml"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    inputs = {
        n: {
            "dtype": str(v.dtype).removeprefix("torch."),
            "shape": [axes.get(n, {}).get(d, int(s)) for d, s in enumerate(v.shape)],
        }
        for n, v in batch.items()
    }
    record = {
        "format": "onnx",
        "source_run": str(run_dir.resolve()),
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": digest,
        "task": cfg.task.name,
        "problem": task.problem,
        "opset": opset,
        "exporter": exporter,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "inputs": inputs,
        "outputs": {"logits": {"dtype": "float32", "shape": ["batch", int(reference.shape[-1])]}},
        "models": {
            "fp32": MODEL_FILES["onnx"],
            **({"int8": MODEL_FILES["onnx-int8"]} if quantize else {}),
        },
        "preprocessing": preprocessing,
        "parity": parity,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    record["files"] = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    record["files"].append(EXPORT_FILE)
    (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
