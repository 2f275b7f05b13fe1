"""Training-state checkpoints: written atomically, kept K at a time, loaded without pickle.

A checkpoint is a folder ``state/step-000120/`` inside the run folder. Accelerate's
``save_state`` writes the model (safetensors), optimizer, scheduler, grad scaler and the
process RNG states; this module adds ``trainer_state.json`` (the loop position, early-stopping
state, history, file manifest) and the random-number generators as they were when the epoch's
data iterator was created (``epoch_rng.json`` + ``epoch_rng.safetensors``), so a resumed run
can replay the epoch's data order exactly. Everything is loaded with safetensors, JSON or
``torch.load(weights_only=True)`` (Accelerate's loader), never plain pickle.

The folder is built under a hidden temporary name and renamed when complete: a crash during a
save leaves either the previous checkpoints or the new one, never a half-written one under a
``step-*`` name. ``trainer_state.json`` lists every file with its size; a truncated or
missing file is reported by name when loading.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.errors import UserError

STATE_DIR = "state"
STATE_FILE = "trainer_state.json"
EPOCH_RNG_JSON = "epoch_rng.json"
EPOCH_RNG_TENSORS = "epoch_rng.safetensors"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


# -- random number generators -----------------------------------------------------------------
def find_rngs(root: Any, prefix: str, depth: int = 6) -> dict[str, Any]:
    """Stateful generators reachable from ``root`` through attributes, lists and dicts.

    Finds ``random.Random``, ``numpy.random.RandomState``/``Generator`` and ``torch.Generator``
    objects held by a data loader, its sampler, its dataset and the dataset's augmenters, keyed
    by their attribute path (stable from one process to the next for the same objects).
    """
    import torch

    found: dict[str, Any] = {}
    seen: set[int] = set()
    rng_types = (random.Random, np.random.RandomState, np.random.Generator, torch.Generator)
    leaf_types = (str, bytes, int, float, bool, type(None), np.ndarray, torch.Tensor)

    def walk(obj: Any, path: str, left: int) -> None:
        if id(obj) in seen or isinstance(obj, leaf_types):
            return
        seen.add(id(obj))
        if isinstance(obj, rng_types):
            found[path] = obj
            return
        if left == 0 or isinstance(obj, (torch.nn.Module, type)):
            return
        if isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj[:64]):
                walk(value, f"{path}[{i}]", left - 1)
            return
        if isinstance(obj, dict):
            for key in list(obj)[:64]:
                if isinstance(key, str):
                    walk(obj[key], f"{path}.{key}", left - 1)
            return
        module = type(obj).__module__ or ""
        if module.split(".")[0] in ("pandas", "transformers", "tokenizers", "pyarrow"):
            return
        attrs = getattr(obj, "__dict__", None)
        if not isinstance(attrs, dict):
            return
        for key in sorted(attrs):
            walk(attrs[key], f"{path}.{key}", left - 1)

    walk(root, prefix, depth)
    return found


def capture_rngs(holders: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The global generators' and ``holders``' states: (JSON-able part, tensors part)."""
    import torch

    meta: dict[str, Any] = {
        "python": {"kind": "python", "state": _py_state(random.getstate())},
        "numpy": {"kind": "numpy", "state": _np_state(np.random.get_state())},
        "torch": {"kind": "torch"},
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            meta[f"cuda:{i}"] = {"kind": "cuda", "device": i}
            tensors[f"cuda:{i}"] = state
    for path, gen in holders.items():
        key = f"attr:{path}"
        if isinstance(gen, random.Random):
            meta[key] = {"kind": "python", "state": _py_state(gen.getstate())}
        elif isinstance(gen, np.random.RandomState):
            meta[key] = {"kind": "numpy", "state": _np_state(gen.get_state())}
        elif isinstance(gen, np.random.Generator):
            meta[key] = {"kind": "numpy-generator", "state": gen.bit_generator.state}
        else:
            meta[key] = {"kind": "torch"}
            tensors[key] = gen.get_state()
    return meta, tensors


def restore_rngs(
    meta: dict[str, Any], tensors: dict[str, Any], holders: dict[str, Any]
) -> list[str]:
    """Set the generators back to a captured state; returns the paths it could not find."""
    import torch

    missing = []
    for key, entry in meta.items():
        kind = entry["kind"]
        if not key.startswith("attr:"):
            if key == "python":
                random.setstate(_py_unstate(entry["state"]))
            elif key == "numpy":
                np.random.set_state(_np_unstate(entry["state"]))
            elif key == "torch":
                torch.set_rng_state(tensors["torch"])
            elif (
                kind == "cuda"
                and torch.cuda.is_available()
                and entry["device"] < torch.cuda.device_count()
            ):
                torch.cuda.set_rng_state(tensors[key], entry["device"])
            continue
        gen = holders.get(key[5:])
        if gen is None:
            missing.append(key[5:])
        elif kind == "python":
            gen.setstate(_py_unstate(entry["state"]))
        elif kind == "numpy":
            gen.set_state(_np_unstate(entry["state"]))
        elif kind == "numpy-generator":
            gen.bit_generator.state = entry["state"]
        else:
            gen.set_state(tensors[key])
    return missing


def _py_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_unstate(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _np_state(state: tuple[Any, ...]) -> list[Any]:
    name, keys, pos, has_gauss, cached = state
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _np_unstate(state: list[Any]) -> tuple[Any, ...]:
    name, keys, pos, has_gauss, cached = state
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


# -- saving ------------------------------------------------------------------------------------
def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def step_dirs(state_root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``state_root``, oldest first."""
    if not state_root.is_dir():
        return []
    out = []
    for p in state_root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def save_checkpoint(
    accelerator: Any,
    state_root: Path,
    step: int,
    loop_state: dict[str, Any],
    epoch_rng: tuple[dict[str, Any], dict[str, Any]],
    keep: int,
    extra: Any = None,
) -> Path | None:
    """Write ``state_root/step-NNNNNN`` atomically and keep the newest ``keep`` checkpoints.

    Every process calls this (Accelerate saves each process's RNG state); only the main
    process writes the loop state, renames and prunes.

    :param extra: ``(tmp_dir) -> dict`` run by the main process before the rename: it may add
        files to the checkpoint (the best model) and returns values stored in
        ``trainer_state.json`` under ``"run"``.
    """
    from safetensors.torch import save_file

    name = f"step-{step:06d}"
    final = state_root / name
    tmp = state_root / f".tmp-{name}"
    if accelerator.is_main_process:
        state_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    meta, tensors = epoch_rng
    (tmp / EPOCH_RNG_JSON).write_text(json.dumps(meta), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / EPOCH_RNG_TENSORS))
    run_values = extra(tmp) if extra is not None else {}
    state = {
        "format": FORMAT,
        **loop_state,
        "run": run_values,
        "files": _manifest(tmp),
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, allow_nan=True), encoding="utf-8")
    _fsync_tree(tmp)
    if final.exists():  # the same step saved again (an epoch end right after a periodic save)
        old = state_root / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    for _, path in step_dirs(state_root)[:-keep] if keep > 0 else []:
        # Renamed away first: a crash during the removal leaves no partial step-* folder.
        doomed = state_root / f".old-{path.name}"
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# -- loading -----------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint, after checking that every file is whole."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise UserError(f"{state_file}: missing; the checkpoint is incomplete")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{state_file}: corrupt checkpoint state ({exc.msg if hasattr(exc, 'msg') else exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{state_file}: not a tuneforge checkpoint of format {FORMAT}")
    for rel, size in state.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise UserError(
                f"{f}: missing from the checkpoint; delete {path} to resume from an older one"
            )
        if f.stat().st_size != size:
            raise UserError(
                f"{f}: truncated or changed ({f.stat().st_size} bytes, expected {size}); "
                f"delete {path} to resume from an older one"
            )
    return state


def load_checkpoint(
    accelerator: Any, path: Path
) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]:
    """Restore the prepared objects from ``path``; returns the loop state and the epoch RNGs.

    Accelerate loads the model from safetensors and the rest with
    ``torch.load(weights_only=True)``; a file that does not load is named in the error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = read_checkpoint(path)
    try:
        with warnings.catch_warnings():  # torch's note on a refused pickle's protocol
            warnings.filterwarnings("ignore", module="torch._weights_only_unpickler")
            accelerator.load_state(str(path))
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"{path}: the checkpoint does not load ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from None
    except Exception as exc:  # pickle.UnpicklingError from a weights_only refusal, and others
        raise UserError(
            f"{path}: the checkpoint does not load safely ({type(exc).__name__}); "
            "it holds something other than tensors"
        ) from None
    rng_file = path / EPOCH_RNG_JSON
    try:
        meta = json.loads(rng_file.read_text(encoding="utf-8"))
        tensors = load_file(str(path / EPOCH_RNG_TENSORS))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise UserError(f"{rng_file}: corrupt ({type(exc).__name__})") from None
    return state, (meta, tensors)
