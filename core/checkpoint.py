"""Training-state checkpoints: written atomically, kept K at a time, loaded without pickle.

A checkpoint is a folder ``state/step-000120/`` inside the run folder. Accelerate's
``save_state`` writes the model (safetensors), optimizer, scheduler, grad scaler and the
process RNG states; this module adds ``trainer_state.json`` (the loop position, early-stopping
state, history, file manifest) and the random-number generators as they were when the epoch's
data iterator was created (``epoch_rng.json`` + ``epoch_rng.safetensors``), so a resumed run
can replay the epoch's data order exactly, and with ``trainer.ema_decay`` the weights' moving
average (``ema.safetensors``). Everything is loaded with safetensors, JSON or
``torch.load(weights_only=True)`` (Accelerate's loader), never plain pickle.

The folder is built under a hidden temporary name and renamed when complete: a crash during a
save leaves either the previous checkpoints or the new one, never a half-written one under a
``step-*`` name.

Integrity (format 2): ``trainer_state.json`` lists every file of the checkpoint with its size and
SHA-256, and carries the SHA-256 of its own content (``checksum``). :func:`read_checkpoint`
checks all of it, and that every part decodes with the loader that will read it, before anything
is applied or moved: a missing, extra, truncated, replaced or zeroed file is a one-line error
naming the file. :func:`load_checkpoint` then also checks that the parts fit the run's model and
optimizer, and afterwards that Accelerate really restored the random states (its
``load_state`` logs "Could not load random states" at info level and goes on). Format-1
checkpoints (sizes only, from older versions) cannot be verified and are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError, short

STATE_DIR = "state"
STATE_FILE = "trainer_state.json"
EPOCH_RNG_JSON = "epoch_rng.json"
EPOCH_RNG_TENSORS = "epoch_rng.safetensors"
EMA_FILE = "ema.safetensors"  # trainer.ema_decay: the weights' moving average (AveragedModel)
FORMAT = 2
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_STATE_BYTES = 256 << 20  # trainer_state.json holds the history: generous, but bounded

# The loop state the trainer stores in ``trainer_state.json``: key -> the JSON types it may have.
LOOP_STATE: dict[str, tuple[type, ...]] = {
    "epoch": (int,),
    "batches_done": (int,),
    "step": (int,),
    "epoch_first_step": (int,),
    "num_batches": (int,),
    "epochs": (int,),
    "epochs_run": (int,),
    "best_value": (int, float, type(None)),
    "best_epoch": (int, type(None)),
    "bad_epochs": (int,),
    "history": (list,),
    "chunks": (int,),
    "skipped_steps": (int,),
    "nonfinite_run": (int,),
    "sums": (list,),
    "counts": (list,),
}


# -- random number generators -----------------------------------------------------------------
def find_rngs(root: Any, prefix: str, depth: int = 6) -> dict[str, Any]:
    """Stateful generators reachable from ``root`` through attributes, lists and dicts.

    Finds ``random.Random``, ``numpy.random.RandomState``/``Generator`` and ``torch.Generator``
    objects held by a data loader, its sampler, its dataset and the dataset's augmenters, keyed
    by their attribute path (stable from one process to the next for the same objects).
    """
    import numpy as np
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
    import numpy as np
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
    import numpy as np
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
    import numpy as np

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / STATE_FILE
    }


def _checksum(state: dict[str, Any]) -> str:
    """SHA-256 of ``state`` without its ``checksum`` key, in a canonical JSON form."""
    body = {k: v for k, v in state.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    ema: Any = None,
) -> Path | None:
    """Write ``state_root/step-NNNNNN`` atomically and keep the newest ``keep`` checkpoints.

    Every process calls this (Accelerate saves each process's RNG state); only the main
    process writes the loop state, renames and prunes.

    :param loop_state: the trainer's position and counters, with exactly the keys of
        :data:`LOOP_STATE`.
    :param extra: ``(tmp_dir) -> dict`` run by the main process before the rename: it may add
        files to the checkpoint (the best model) and returns values stored in
        ``trainer_state.json`` under ``"run"``.
    :param ema: the trainer's ``AveragedModel`` (``trainer.ema_decay``), saved as
        :data:`EMA_FILE` (its weights, buffers and ``n_averaged``); None: no EMA.
    """
    from safetensors.torch import save_file, save_model

    if set(loop_state) != set(LOOP_STATE):
        raise ValueError(f"loop state keys {sorted(loop_state)} != {sorted(LOOP_STATE)}")
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
    if ema is not None:
        save_model(ema, str(tmp / EMA_FILE))  # tied weights once
    run_values = extra(tmp) if extra is not None else {}
    state = {
        "format": FORMAT,
        **loop_state,
        "run": run_values,
        "files": _manifest(tmp),
    }
    state["checksum"] = _checksum(state)
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


# -- verifying ---------------------------------------------------------------------------------
def _way_out(path: Path) -> str:
    """What the user can do about a damaged checkpoint ``path`` (or a folder inside it)."""
    path = next((p for p in (path, *path.parents) if _STEP_DIR.match(p.name)), path)
    older = [p for _, p in step_dirs(path.parent) if p.name < path.name]
    if older:
        return f"delete {path} to resume from {older[-1].name}"
    return "it is the run's only checkpoint: start the run again"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:160]}" if line else type(exc).__name__


def _read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json``, parsed, its checksum and every field's type checked."""
    state_file = path / STATE_FILE
    try:
        info = state_file.lstat()
    except OSError:
        raise UserError(
            f"{state_file}: missing; the checkpoint is incomplete; {_way_out(path)}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{state_file}: not a regular file; {_way_out(path)}")
    if info.st_size > _MAX_STATE_BYTES:
        raise UserError(
            f"{state_file}: {info.st_size} bytes, too large for a checkpoint state; "
            f"{_way_out(path)}"
        )
    try:
        state = json.loads(state_file.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{state_file}: corrupt checkpoint state ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno}); {_way_out(path)}"
        ) from None
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{state_file}: corrupt checkpoint state (not UTF-8 text: byte {exc.start}); "
            f"{_way_out(path)}"
        ) from None
    except (RecursionError, ValueError) as exc:  # nested too deeply, a 5000-digit number
        raise UserError(
            f"{state_file}: corrupt checkpoint state ({_first_line(exc)}); {_way_out(path)}"
        ) from None
    except OSError as exc:
        raise UserError(f"{state_file}: cannot be read ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("format"), int):
        raise UserError(f"{state_file}: not a tuneforge checkpoint state; {_way_out(path)}")
    if state["format"] == 1:
        raise UserError(
            f"{state_file}: written by an older tuneforge (checkpoint format 1: file sizes, no "
            "checksums), so it cannot be verified; start the run again"
        )
    if state["format"] != FORMAT:
        raise UserError(
            f"{state_file}: checkpoint format {short(state['format'])} is not the format "
            f"{FORMAT} this tuneforge reads; resume it with the version that wrote it"
        )
    if state.get("checksum") != _checksum(state):
        raise UserError(
            f"{state_file}: damaged or edited (its content does not match its checksum); "
            f"{_way_out(path)}"
        )
    fields: dict[str, tuple[type, ...]] = {**LOOP_STATE, "run": (dict,), "files": (dict,)}
    for key, types in fields.items():
        value = state.get(key)
        if key not in state or not isinstance(value, types) or isinstance(value, bool):
            raise UserError(
                f"{state_file}: malformed ({key}: {short(value, 40)}, expected "
                f"{' or '.join(t.__name__ for t in types)})"
            )
    if state["batches_done"] > 0 and (len(state["sums"]), len(state["counts"])) != (4, 3):
        raise UserError(f"{state_file}: malformed (sums and counts of a mid-epoch checkpoint)")
    for rel, entry in state["files"].items():
        parts = Path(rel).parts
        if (
            not parts
            or Path(rel).is_absolute()
            or ".." in parts
            or not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not isinstance(entry.get("sha256"), str)
            or not _SHA256.match(entry["sha256"])
        ):
            raise UserError(f"{state_file}: malformed (files: {short(rel, 60)})")
    return state


def _entries(path: Path) -> dict[str, Path]:
    """Everything in the checkpoint folder that is not a folder, by relative path (symbolic
    links, to folders too, are entries: a checkpoint never holds one)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(path, followlinks=False):
        base = Path(root)
        for name in [*files, *(d for d in dirs if (base / d).is_symlink())]:
            found[str((base / name).relative_to(path))] = base / name
    return found


def _verify_files(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every file of the manifest is there, whole and unchanged; nothing else is there."""
    entries = _entries(path)
    for rel, entry in sorted(files.items()):
        f = path / rel
        try:
            info = f.lstat()
        except OSError:
            raise UserError(f"{f}: missing from the checkpoint; {_way_out(path)}") from None
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{f}: not a regular file; {_way_out(path)}")
        if info.st_size != entry["size"]:
            raise UserError(
                f"{f}: truncated or changed ({info.st_size} bytes, expected {entry['size']}); "
                f"{_way_out(path)}"
            )
        try:
            digest = _sha256(f)
        except OSError as exc:
            raise UserError(f"{f}: cannot be read ({_first_line(exc)})") from None
        if digest != entry["sha256"]:
            raise UserError(
                f"{f}: damaged or replaced (its SHA-256 differs from the one recorded when the "
                f"checkpoint was written); {_way_out(path)}"
            )
    for rel in sorted(set(entries) - set(files) - {STATE_FILE}):
        raise UserError(
            f"{entries[rel]}: not part of the checkpoint (absent from its manifest); remove it, "
            f"or {_way_out(path)}"
        )


def _torch_load(f: Path) -> Any:
    """A ``.bin``/``.pt``/``.pkl`` part through Accelerate's loader (``weights_only=True``)."""
    import zipfile

    from accelerate.utils import load

    if not zipfile.is_zipfile(f):  # torch.save writes zip archives (which mmap needs)
        raise UserError(
            f"{f}: the checkpoint part does not load (not a file torch.save wrote); "
            f"{_way_out(f.parent)}"
        )
    with _loading(f, "checkpoint part"):
        return load(str(f), map_location="cpu", mmap=True)


@contextlib.contextmanager
def _loading(where: Path, what: str, *errors: type[BaseException]) -> Iterator[None]:
    """Load tensors (``torch.load(weights_only=True)`` underneath) with every failure a
    :class:`UserError` naming ``where``; a pickle that holds more than tensors is refused, not run."""
    try:
        with warnings.catch_warnings():  # torch's note on a refused pickle's protocol
            warnings.filterwarnings("ignore", module="torch._weights_only_unpickler")
            yield
    except (*errors, RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UserError(f"{where}: the {what} does not load ({_first_line(exc)})") from None
    except Exception as exc:  # pickle.UnpicklingError from a weights_only refusal, and others
        raise UserError(
            f"{where}: the {what} does not load safely ({type(exc).__name__}); it holds "
            "something other than tensors (refused, not run)"
        ) from None


def _safetensors_shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """The tensors of a safetensors file and their shapes (its header; the bytes are hashed)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), "pt") as fh:
            names = fh.keys()  # a safe_open handle is not iterable
            return {k: tuple(fh.get_slice(k).get_shape()) for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{f}: the checkpoint part does not load ({_first_line(exc)})") from None


def _check_random_states(f: Path, states: Any) -> None:
    """``random_states_N.pkl`` holds what Accelerate saved: each generator takes its state."""
    import numpy as np
    import torch

    try:
        if not isinstance(states, dict):
            raise TypeError(f"a {type(states).__name__}, not a dict")
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
        cuda = states.get("torch_cuda_manual_seed", [])
        if not isinstance(cuda, list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1 for t in cuda
        ):
            raise TypeError("torch_cuda_manual_seed is not a list of byte tensors")
    except (TypeError, ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise UserError(
            f"{f}: does not hold usable random states ({_first_line(exc)}); {_way_out(f.parent)}"
        ) from None


def _check_epoch_rngs(path: Path, meta: Any, tensors: dict[str, Any]) -> None:
    """``epoch_rng.json`` + ``.safetensors`` hold generator states of the kinds captured."""
    import numpy as np
    import torch

    json_file, tensor_file = path / EPOCH_RNG_JSON, path / EPOCH_RNG_TENSORS
    if not isinstance(meta, dict):
        raise UserError(f"{json_file}: not a generator-state table; {_way_out(path)}")
    bit_generators = {
        "PCG64": np.random.PCG64,
        "PCG64DXSM": np.random.PCG64DXSM,
        "MT19937": np.random.MT19937,
        "Philox": np.random.Philox,
        "SFC64": np.random.SFC64,
    }
    for key, entry in meta.items():
        try:
            kind = entry["kind"]
            if kind == "python":
                random.Random().setstate(_py_unstate(entry["state"]))
            elif kind == "numpy":
                np.random.RandomState().set_state(_np_unstate(entry["state"]))
            elif kind == "numpy-generator":
                bit_generators[entry["state"]["bit_generator"]]().state = entry["state"]
            elif kind in ("torch", "cuda"):
                if key not in tensors:
                    raise UserError(
                        f"{tensor_file}: no state for {short(key, 60)}; {_way_out(path)}"
                    )
                if kind == "torch":
                    torch.Generator().set_state(tensors[key])
                elif not isinstance(entry["device"], int) or tensors[key].dtype != torch.uint8:
                    raise ValueError("not a CUDA generator state")
            else:
                raise ValueError(f"unknown kind {short(kind, 40)}")
        except UserError:
            raise
        except (TypeError, ValueError, KeyError, RuntimeError, IndexError) as exc:
            where = tensor_file if kind in ("torch", "cuda") else json_file
            raise UserError(
                f"{where}: unusable generator state {short(key, 60)} ({_first_line(exc)}); "
                f"{_way_out(path)}"
            ) from None


def _load_epoch_rngs(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_file, tensor_file = path / EPOCH_RNG_JSON, path / EPOCH_RNG_TENSORS
    try:
        meta = json.loads(json_file.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # JSON, UTF-8, digits
        raise UserError(f"{json_file}: corrupt ({_first_line(exc)}); {_way_out(path)}") from None
    try:
        tensors = load_file(str(tensor_file))
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"{tensor_file}: corrupt ({_first_line(exc)}); {_way_out(path)}") from None
    _check_epoch_rngs(path, meta, tensors)
    return meta, tensors


_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


def _check_parts(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every part decodes with the loader that will read it (nothing is applied)."""
    if EPOCH_RNG_JSON not in files or EPOCH_RNG_TENSORS not in files:
        missing = EPOCH_RNG_JSON if EPOCH_RNG_JSON not in files else EPOCH_RNG_TENSORS
        raise UserError(f"{path / missing}: missing from the checkpoint; {_way_out(path)}")
    if not any(re.fullmatch(r"random_states_\d+\.pkl", rel) for rel in files):
        raise UserError(
            f"{path / 'random_states_0.pkl'}: missing from the checkpoint; {_way_out(path)}"
        )
    for rel in sorted(files):
        f = path / rel
        if f.suffix == ".safetensors":
            _safetensors_shapes(f)
        elif f.suffix == ".json" and rel != EPOCH_RNG_JSON:
            try:
                json.loads(f.read_bytes().decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # JSON, UTF-8, digits
                raise UserError(f"{f}: corrupt ({_first_line(exc)}); {_way_out(path)}") from None
        elif f.suffix in _TORCH_SUFFIXES:
            loaded = _torch_load(f)
            if re.fullmatch(r"random_states_\d+\.pkl", rel):
                _check_random_states(f, loaded)
            del loaded
    _load_epoch_rngs(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of the checkpoint ``path``, once all of it is checked.

    Checked, in this order, before anything is applied or moved: the state file (JSON, format,
    its own checksum, every field's type), every file of the manifest (present, a regular
    file, its size, its SHA-256), that no other file is there, and that every part decodes
    with the loader that will read it. Any failure is a :class:`UserError` naming the file.
    """
    state = _read_state(path)
    _verify_files(path, state["files"])
    _check_parts(path, state["files"])
    return state


# -- loading -----------------------------------------------------------------------------------
def _check_fits(path: Path, model: Any, optimizer: Any, scheduler: Any) -> None:
    """The checkpoint's model, optimizer and scheduler states fit this run's objects."""
    import torch

    hint = "the model or trainer config changed since the run started"
    weights = path / "model.safetensors"
    if model is not None and weights.is_file():
        shapes = _safetensors_shapes(weights)
        own = model.state_dict()
        for key, shape in shapes.items():
            if key not in own:
                raise UserError(
                    f"{weights}: holds {short(key, 60)}, which this run's model lacks; {hint}"
                )
            if tuple(own[key].shape) != shape:
                raise UserError(
                    f"{weights}: {short(key, 60)} has shape {list(shape)}, this run's model "
                    f"{list(own[key].shape)}; {hint}"
                )
        stored = {
            own[k].untyped_storage().data_ptr() for k in shapes if own[k].numel()
        }  # tied weights are saved once
        for key, tensor in own.items():
            shared = tensor.numel() and tensor.untyped_storage().data_ptr() in stored
            if key not in shapes and not shared:
                raise UserError(f"{weights}: has no {short(key, 60)}; {hint}")
    opt_file = path / "optimizer.bin"
    if optimizer is not None and opt_file.is_file():
        saved = _torch_load(opt_file)
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        states = saved.get("state") if isinstance(saved, dict) else None
        if not isinstance(groups, list) or not isinstance(states, dict):
            raise UserError(f"{opt_file}: not an optimizer state; {_way_out(path)}")
        if len(groups) != len(optimizer.param_groups):
            raise UserError(
                f"{opt_file}: {len(groups)} parameter groups, this run's optimizer "
                f"{len(optimizer.param_groups)}; {hint}"
            )
        for i, (group, own_group) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
            ids = group.get("params") if isinstance(group, dict) else None
            if not isinstance(ids, list) or len(ids) != len(own_group["params"]):
                raise UserError(
                    f"{opt_file}: parameter group {i} does not match this run's optimizer; {hint}"
                )
            for pid, param in zip(ids, own_group["params"], strict=True):
                entry = states.get(pid, {})
                for name, value in entry.items() if isinstance(entry, dict) else ():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.ndim
                        and value.shape != param.shape
                    ):
                        raise UserError(
                            f"{opt_file}: {short(name, 30)} of a parameter has shape "
                            f"{list(value.shape)}, the parameter {list(param.shape)}; {hint}"
                        )
        del saved
    sched_file = path / "scheduler.bin"
    if scheduler is not None and optimizer is not None and sched_file.is_file():
        saved = _torch_load(sched_file)
        base = saved.get("base_lrs") if isinstance(saved, dict) else None
        if not isinstance(base, list) or not isinstance(saved.get("last_epoch"), int):
            raise UserError(f"{sched_file}: not a learning-rate scheduler state; {_way_out(path)}")
        if len(base) != len(optimizer.param_groups):
            raise UserError(
                f"{sched_file}: schedules {len(base)} parameter groups, this run's optimizer has "
                f"{len(optimizer.param_groups)}; {hint}"
            )


def _check_ema(path: Path, files: dict[str, Any], ema: Any) -> None:
    """The checkpoint has an EMA of the weights exactly when the run keeps one, of the same
    tensors."""
    from tuneforge.errors import ConfigError

    has = EMA_FILE in files
    if has != (ema is not None):
        held = "an EMA of the weights" if has else "no EMA of the weights"
        run = "this run keeps none (null)" if ema is None else "this run keeps one"
        raise ConfigError(
            "trainer.ema_decay",
            f"{path} holds {held} but {run}; resume with the trainer.ema_decay the run "
            "started with",
        )
    if ema is None:
        return
    f = path / EMA_FILE
    shapes = _safetensors_shapes(f)
    own = ema.state_dict()
    for key, tensor in own.items():
        if key in shapes and tuple(tensor.shape) != shapes[key]:
            raise UserError(
                f"{f}: {short(key, 60)} has shape {list(shapes[key])}, this run's model "
                f"{list(tensor.shape)}; the model or trainer config changed since the run started"
            )
    extra = sorted(set(shapes) - set(own))
    if extra:
        raise UserError(
            f"{f}: holds {short(extra[0], 60)}, which this run's model lacks; the model or "
            "trainer config changed since the run started"
        )


def _check_restored(f: Path, states: dict[str, Any]) -> None:
    """The process generators hold the states of ``random_states_N.pkl`` (Accelerate's
    ``load_state`` only logs at info level when it could not set them)."""
    import numpy as np
    import torch

    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    want = states["numpy_random_seed"]
    same = (
        py == tuple(states["random_state"])
        and name == want[0]
        and np.array_equal(keys, want[1])
        and (pos, has_gauss, cached) == tuple(want[2:5])
        and torch.equal(torch.get_rng_state(), states["torch_manual_seed"])
    )
    cuda = states.get("torch_cuda_manual_seed", [])
    if same and cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        now = torch.cuda.get_rng_state_all()
        same = all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(now, cuda, strict=False))
    if not same:
        raise UserError(
            f"{f}: Accelerate did not restore the random states it holds, so the resumed run "
            f"would not repeat the interrupted one; {_way_out(f.parent)}"
        )


def load_checkpoint(
    accelerator: Any,
    path: Path,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    ema: Any = None,
) -> tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]:
    """Restore the prepared objects from ``path``; returns the loop state and the epoch RNGs.

    Everything is checked first (:func:`read_checkpoint`, and that the parts fit ``model``,
    ``optimizer`` and ``scheduler`` when given), then Accelerate loads the model from
    safetensors and the rest with ``torch.load(weights_only=True)``, and the process random
    states are checked to be the checkpoint's. A part that does not load is named in the error.

    :param ema: the run's ``AveragedModel`` (``trainer.ema_decay``), restored from
        :data:`EMA_FILE`; a checkpoint with an EMA for a run without one, or the reverse, is a
        ConfigError naming ``trainer.ema_decay``.
    """
    from safetensors import SafetensorError

    state = read_checkpoint(path)
    _check_fits(path, model, optimizer, scheduler)
    _check_ema(path, state["files"], ema)
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        raise UserError(f"{rng_file}: missing from the checkpoint; {_way_out(path)}")
    rng_states = _torch_load(rng_file)
    _check_random_states(rng_file, rng_states)
    epoch_rngs = _load_epoch_rngs(path)
    with _loading(path, "checkpoint", SafetensorError):
        accelerator.load_state(str(path))
    if ema is not None:
        from safetensors.torch import load_model

        with _loading(path / EMA_FILE, "EMA weights", SafetensorError):
            load_model(ema, str(path / EMA_FILE), device=str(next(ema.parameters()).device))
    _check_restored(rng_file, rng_states)
    return state, epoch_rngs
