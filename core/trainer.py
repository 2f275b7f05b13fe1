"""The shared trainer: one loop for every modality, on Hugging Face Accelerate.

Accelerate places the model and batches on the GPU when there is one, runs bf16 autocast,
gradient accumulation and (under ``accelerate launch`` / ``torchrun``) distributed data
parallel. The loop keeps the host out of the step: the loss is accumulated on the device and
read back only every ``log_every_n_steps`` steps.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.checkpoint import (
    capture_rngs,
    find_rngs,
    load_checkpoint,
    restore_rngs,
    save_checkpoint,
)
from tuneforge.config import TrainerConfig
from tuneforge.console import Console
from tuneforge.errors import PluginError, UserError


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    best_value: float | None = None  # the best value of the monitored metric
    best_epoch: int | None = None  # the epoch it was reached in (its model went to save_best)
    epochs_run: int = 0
    stopped_early: bool = False
    stop_reason: str = ""  # why the run stopped before ``trainer.epochs`` ("" if it did not)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    seconds: float = 0.0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradients


@dataclass
class FitHooks:
    """The caller's side of :meth:`Trainer.fit`: how the validation split is scored, where the
    best model goes, and what observes the run. Each is called on every process unless said."""

    evaluate: Callable[[Any, Any], dict[str, float]]
    """``(logits, labels) -> metrics`` on CPU tensors of the whole validation split; must
    include ``"loss"`` and the monitored metric."""
    save_best: Callable[[Any], None]
    """Called by the main process with the unwrapped model whenever the monitored metric
    improves."""
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None
    """``(epoch, history row)`` after each epoch's evaluation (the row is also in
    :attr:`TrainResult.history`)."""
    on_log: Callable[[int, dict[str, float]], None] | None = None
    """``(step, {"train.loss", "lr", "train.samples_per_s"})`` every
    ``trainer.log_every_n_steps`` optimizer steps; the loss is the mean since the last log."""
    on_epoch_start: Callable[[Any, int], None] | None = None
    """``(unwrapped model, epoch)`` before each training epoch (the pipeline passes
    :meth:`tuneforge.components.Task.on_epoch_start`), e.g. to freeze a backbone for the first
    epochs."""


@dataclass
class StateOptions:
    """Training-state checkpoints (``trainer.checkpoint_every_n_steps``) and ``--resume``.

    A checkpoint (:mod:`tuneforge.checkpoint`) holds the model, optimizer, scheduler, random
    states and the :class:`LoopState` fields it needs to continue, so a resumed run ends as the
    uninterrupted one would have.
    """

    state_dir: Path | None = None
    """Where checkpoints go (``RUN/state``): every ``trainer.checkpoint_every_n_steps``
    optimizer steps and at the end of each epoch but the last; ``None``: none are written."""
    resume: Path | None = None
    """A checkpoint folder (``state/step-NNNNNN``) to continue from; it is checked in full (files,
    fit to this model, optimizer and data) before anything is applied."""
    on_checkpoint: Callable[[Path], dict[str, Any]] | None = None
    """``(tmp_dir) -> dict`` called by the main process while a checkpoint is written: it may
    add files to ``tmp_dir`` and returns values kept in its ``trainer_state.json``."""


@dataclass
class LoopState:
    """Everything the training loop carries from one batch to the next.

    The position, early-stopping and history fields (and, mid-epoch, the epoch's sums and
    counts) are what a training-state checkpoint stores: :meth:`Trainer._loop_record` writes
    them under the keys of :data:`tuneforge.checkpoint.LOOP_STATE`, :meth:`resume_from` and
    :meth:`resume_epoch` read them back.
    """

    start: float  # time.perf_counter() at set-up: the run's duration and the ETA
    # -- position and early stopping (saved in every checkpoint)
    epoch: int = 1  # the epoch running, or the first to run
    step: int = 0  # optimizer steps done
    epochs_run: int = 0  # epochs trained and evaluated
    best_value: float | None = None  # the best value of the monitored metric so far
    best_epoch: int | None = None
    bad_epochs: int = 0  # evaluations in a row without an improvement (early stopping)
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    stopped_early: bool = False
    stop_reason: str = ""
    # -- the running epoch (saved by a mid-epoch checkpoint)
    first_step: int = 0  # ``step`` when the epoch started
    batches: int = 0  # loader batches done in the epoch
    seen: int = 0  # examples this process trained on in the epoch
    window_batches: int = 0  # loader batches since the last log
    window_seen: int = 0  # examples since the last log (not saved: a rate)
    epoch_start: float = 0.0  # time.perf_counter() at the epoch's start
    window_start: float = 0.0  # ... and at the last log
    # 0-d tensors on the device, summed there (read back only at a log or the epoch's end):
    running: Any = None  # the epoch's batch losses
    window: Any = None  # the batch losses since the last log
    running_n: Any = None  # finite batch losses counted in ``running`` (nonfinite: skip)
    window_n: Any = None  # ... and in ``window``
    # -- generators: the data's (sampler, dataset, augmenters) and the process RNGs
    epoch_rngs: Any = None  # the data's generators as the epoch's iterator was made (saved)
    resumed: dict[str, Any] | None = None  # a resumed checkpoint's state, until its epoch starts
    resumed_rngs: Any = None  # that checkpoint's data generators (its epoch_rng files)
    process_rngs: Any = None  # the process RNGs as that checkpoint left them

    def resume_from(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's loop state (:func:`tuneforge.checkpoint.load_checkpoint`);
        its epoch's sums are restored when that epoch starts (:meth:`resume_epoch`)."""
        self.epoch, self.step, self.bad_epochs = saved["epoch"], saved["step"], saved["bad_epochs"]
        self.history = saved["history"]
        self.best_value, self.best_epoch = saved["best_value"], saved["best_epoch"]
        self.epochs_run = saved["epochs_run"]
        self.resumed = saved

    def begin_epoch(self, epoch: int, device: Any) -> None:
        """Zero the epoch's counters and sums (on ``device``) for ``epoch``."""
        import torch

        self.epoch, self.first_step = epoch, self.step
        self.epoch_start = time.perf_counter()
        self.running = torch.zeros((), device=device)
        self.window = torch.zeros((), device=device)
        self.window_batches = self.batches = self.seen = 0
        self.window_seen, self.window_start = 0, self.epoch_start
        self.running_n = torch.zeros((), device=device)
        self.window_n = torch.zeros((), device=device)

    def resume_epoch(self) -> int:
        """At the start of a resumed checkpoint's epoch: restore the epoch's position, sums and
        counts (mid-epoch) and forget the checkpoint; returns its batches done in the epoch."""
        saved, self.resumed = self.resumed, None
        assert saved is not None
        done = int(saved["batches_done"])
        if done:
            self.first_step = saved["epoch_first_step"]
            r, w, rn, wn = saved["sums"]
            self.running.fill_(r)
            self.window.fill_(w)
            self.running_n.fill_(rn)
            self.window_n.fill_(wn)
            self.window_batches, self.batches, self.seen = saved["counts"]
        return done

    def add(self, loss: Any, rows: int, skip_policy: bool) -> None:
        """Count one loader batch of ``rows`` examples and its detached ``loss``; with the skip
        policy a non-finite loss (a skipped step) stays out of the sums."""
        import torch

        if skip_policy:
            finite = torch.isfinite(loss)
            loss = torch.where(finite, loss, 0.0)
            self.running_n += finite
            self.window_n += finite
        self.running += loss
        self.window += loss
        self.window_batches += 1
        self.batches += 1
        self.seen += rows
        self.window_seen += rows

    def sums(self) -> list[float]:
        """The epoch's sums as a mid-epoch checkpoint stores them (one host sync each)."""
        return [t.item() for t in (self.running, self.window, self.running_n, self.window_n)]

    def counts(self) -> list[int]:
        """The epoch's counts as a mid-epoch checkpoint stores them."""
        return [self.window_batches, self.batches, self.seen]

    def result(self, skipped_steps: int) -> TrainResult:
        """The run's outcome, at its end."""
        return TrainResult(
            best_value=self.best_value,
            best_epoch=self.best_epoch,
            epochs_run=self.epochs_run,
            stopped_early=self.stopped_early,
            stop_reason=self.stop_reason,
            history=self.history,
            seconds=time.perf_counter() - self.start,
            skipped_steps=skipped_steps,
        )


@dataclass
class _Fit:
    """One fit's fixed parts: the caller's records and what :meth:`Trainer._setup` prepared."""

    hooks: FitHooks
    monitor: str  # the key of ``hooks.evaluate``'s result that picks the best epoch
    mode: str  # "min" or "max": whether a lower or a higher ``monitor`` is better
    state: StateOptions
    model: Any = None  # prepared by Accelerate (wrapped under DDP or torch.compile)
    optimizer: Any = None
    scheduler: Any = None
    train_dl: Any = None
    val_dl: Any = None
    sampler: Any = None  # the training loader's sampler: its order is a function of (seed, epoch)
    loss_fn: Any = None  # on the device
    ema: Any = None  # trainer.ema_decay: AveragedModel of the unwrapped model, or None
    total: int = 0  # optimizer steps in the whole run
    interactive: bool = False  # a live progress bar (the main process on a terminal)
    verbose: bool = False  # a line per log and per checkpoint (the main process, verbose mode)


def _forward(model: Any, batch: dict[str, Any]) -> Any:
    """``model(**batch)``; a forward that does not take the task's batch keys is the plugins'
    mismatch (a :class:`~tuneforge.errors.PluginError` naming both), not a tuneforge bug."""
    try:
        return model(**batch)
    except TypeError as exc:
        import inspect

        try:
            inspect.signature(model.forward).bind(**batch)
        except TypeError as why:
            params = ", ".join(inspect.signature(model.forward).parameters)
            raise PluginError(
                f"the model's forward({params}) does not take the task's batch "
                f"{sorted(batch)}: {why}; see docs/plugins.md, 'Writing a model'"
            ) from exc
        raise


def _logits(out: Any) -> Any:
    """The logits tensor of a model's output: a tensor, or an object with ``.logits``.

    The ModelBuilder contract allows both; a transformers ``ModelOutput`` is the second.
    """
    # ``out`` is the forward's return value (a torch tensor or a ModelOutput), not a component.
    return out.logits if hasattr(out, "logits") else out


def _pieces(n: int, chunks: int) -> int:
    """How many micro-batches a batch of ``n`` rows is cut into when ``chunks`` are asked for:
    never a piece of one row from a larger batch (a BatchNorm layer cannot train on one)."""
    return max(1, min(chunks, n // 2))


def _row_slices(batch: dict[str, Any], n: int, chunks: int) -> Any:
    """``(slice, sub-batch)`` for :func:`_pieces` consecutive near-equal pieces of a batch of
    ``n`` rows (sizes differ by at most one, none of one row unless ``n`` is 1); values that
    are not per-row tensors are passed whole to every piece."""
    pieces = _pieces(n, chunks)
    bounds = [n * i // pieces for i in range(pieces + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        part = slice(start, stop)
        yield (
            part,
            {
                # batch values: tensors, or plain values (not components)
                k: v[part] if hasattr(v, "shape") and v.ndim and v.shape[0] == n else v
                for k, v in batch.items()
            },
        )


def improved(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta``; a missing or non-finite value
    never does, and any finite value beats a missing or non-finite best."""
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class Trainer:
    """Fits a model; every modality-specific piece (datasets, loss, metrics) is handed in."""

    def __init__(self, config: TrainerConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console if console is not None else Console()
        if config.deterministic:
            # cuBLAS needs a fixed workspace for reproducible results; set before its first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.accelerator = self._accelerator()
        self._eval_chunks = 1  # evaluation batches run in this many pieces (after an OOM)
        self._l1_params: list[Any] = []  # the weights trainer.l1 penalises (set in fit)
        self._ema: Any = None  # trainer.ema_decay: the weights' AveragedModel (set in fit)
        from accelerate.utils import set_seed

        # before the model is built: its new head is initialised randomly. deterministic: also
        # torch.use_deterministic_algorithms(True) and deterministic cuDNN without benchmarking.
        set_seed(config.seed, deterministic=config.deterministic)
        if config.deterministic:
            import torch

            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    # -- setup ----------------------------------------------------------------------------
    def _accelerator(self) -> Any:
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

        cfg = self.config
        cuda = torch.cuda.is_available()
        if cfg.device == "cuda" and not cuda:
            raise UserError("trainer.device: cuda was requested but no CUDA GPU is available")
        use_cpu = cfg.device == "cpu" or not cuda
        if cfg.precision == "auto":
            mp = "bf16" if (not use_cpu and torch.cuda.is_bf16_supported()) else "no"
        elif cfg.precision == "fp16":
            if use_cpu:
                raise UserError("trainer.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
            mp = "fp16"
        else:
            mp = {"fp32": "no", "bf16": "bf16"}[cfg.precision]
        # Each fit (a tuner runs several) gets a fresh state with its own precision.
        AcceleratorState._reset_state()
        # Batches go to the GPU from pinned memory without blocking the host; prepare() shards
        # the training batches over processes (see tuneforge.sampling), padding the last step.
        loader_cfg = DataLoaderConfiguration(non_blocking=not use_cpu, even_batches=True)
        # torch.compile through Accelerate: prepare() compiles after the DDP wrap and
        # unwrap_model() returns the plain module for saving.
        dynamo = TorchDynamoPlugin(backend="inductor" if cfg.compile else "no")
        return Accelerator(
            cpu=use_cpu,
            mixed_precision=mp,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            dataloader_config=loader_cfg,
            dynamo_plugin=dynamo,
        )

    @property
    def on_cuda(self) -> bool:
        return self.accelerator.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def num_workers(self) -> int:
        """Loader worker processes: ``auto`` is min(4, CPUs per process) on CUDA, 0 on CPU."""
        workers = self.config.num_workers
        if workers != "auto":
            return int(workers)
        if not self.on_cuda:
            return 0  # on CPU, workers compete with the compute threads for the same cores
        per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        return max(1, min(4, per_process))

    def _loader(
        self,
        dataset: Any,
        collate: Any,
        batch_size: int,
        shuffle: bool,
        sample_weights: np.ndarray | None = None,
    ) -> Any:
        """A DataLoader; a training one draws from a :mod:`tuneforge.sampling` batch sampler.

        Training order: a seeded shuffle, or a class-weighted draw (``sample_weights``), and
        with ``trainer.group_by_length`` length-grouped batches; all are the same global order
        on every process for a given (seed, epoch), sharded by ``accelerator.prepare``. In a
        one-process run a last training batch of one example is merged into the one before
        (:class:`~tuneforge.sampling.EpochBatchSampler`).
        """
        from torch.utils.data import DataLoader

        from tuneforge.errors import ConfigError
        from tuneforge.sampling import (
            EpochBatchSampler,
            LengthGroupedBatchSampler,
            ShuffleSampler,
            WeightedSampler,
            dataset_lengths,
        )

        cfg = self.config
        sampler: Any = None
        batch_sampler: Any = None
        if shuffle or sample_weights is not None:
            if sample_weights is not None:
                sampler = WeightedSampler(sample_weights, cfg.seed, num_samples=len(dataset))
            else:
                sampler = ShuffleSampler(len(dataset), cfg.seed)
            world = self.accelerator.num_processes
            if not cfg.group_by_length:
                batch_sampler = EpochBatchSampler(sampler, batch_size, world_size=world)
            else:
                lengths = dataset_lengths(dataset)
                if lengths is None:
                    raise ConfigError(
                        "trainer.group_by_length",
                        f"the task's dataset ({type(dataset).__name__}) has no example lengths; "
                        "grouping by length is for text tasks",
                    )
                batch_sampler = LengthGroupedBatchSampler(
                    lengths, batch_size, cfg.seed, world_size=world, base=sampler
                )
            sampler = None
        workers = self.num_workers
        extra: dict[str, Any] = {}
        if workers > 0:
            extra["persistent_workers"] = True
            if cfg.prefetch_factor is not None:
                extra["prefetch_factor"] = cfg.prefetch_factor
        if batch_sampler is not None:
            extra["batch_sampler"] = batch_sampler
        else:
            extra.update(batch_size=batch_size, sampler=sampler, shuffle=False)
        return DataLoader(
            dataset,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.on_cuda,
            **extra,
        )

    def _optimizer(self, model: Any, depths: dict[str, int] | None = None) -> Any:
        """AdamW over the trainable parameters: weight decay except on biases and norms; with
        ``trainer.layer_decay`` one group per (depth, decayed?) whose lr is
        ``lr * layer_decay ** (D - depth)``, ``D`` the largest depth (the head's)."""
        import torch

        from tuneforge.errors import ConfigError

        cfg = self.config
        rate = cfg.layer_decay
        if rate is not None and not depths:
            raise ConfigError(
                "trainer.layer_decay",
                f"the model ({type(model).__name__}) has no layer structure (its builder "
                "gives no parameter depths); set it to null",
            )
        top = max(depths.values()) if rate is not None and depths else 0
        by_group: dict[tuple[int, bool], list[Any]] = {}
        decay: list[Any] = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            # No weight decay on biases and normalisation weights (standard practice).
            decayed = not (p.ndim < 2 or "norm" in name.lower())
            if decayed:
                decay.append(p)
            # a name the builder's map lacks trains like the head (full lr)
            depth = depths.get(name, top) if rate is not None and depths else 0
            by_group.setdefault((depth, decayed), []).append(p)
        self._l1_params = decay
        if rate is None:
            groups = [
                {"params": by_group.get((0, True), []), "weight_decay": cfg.weight_decay},
                {"params": by_group.get((0, False), []), "weight_decay": 0.0},
            ]
        else:
            groups = [
                {
                    "params": params,
                    "weight_decay": cfg.weight_decay if decayed else 0.0,
                    "lr": cfg.lr * rate ** (top - depth),
                    "layer_depth": depth,
                }
                for (depth, decayed), params in sorted(by_group.items())
            ]
            if self.is_main and groups:
                lrs = [g["lr"] for g in groups]
                used = sorted({g["layer_depth"] for g in groups})
                self.console(
                    f"layer-wise lr decay {rate:g}: {len(used)} depths (0..{top}), lr "
                    f"{min(lrs):.3g} (depth {used[0]}) to {max(lrs):.3g} (depth {used[-1]})"
                )
        # Fused AdamW (CUDA and CPU): one kernel per step, and it skips a step flagged
        # non-finite on the device (``found_inf``) without a host sync.
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernel lacks
            return torch.optim.AdamW(groups, lr=cfg.lr)

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        model: Any,
        train_set: Any,
        val_set: Any,
        collate: Any,
        loss_fn: Any,
        hooks: FitHooks,
        *,
        monitor: str,
        mode: str,
        sample_weights: np.ndarray | None = None,
        state: StateOptions | None = None,
        parameter_depths: dict[str, int] | None = None,
    ) -> TrainResult:
        """Train for ``config.epochs`` epochs, evaluating on ``val_set`` after each.

        The loop, over one :class:`LoopState`: :meth:`_setup` (loaders, optimizer, schedule,
        Accelerate), :meth:`_start` (fresh, or from ``state.resume``); per epoch
        :meth:`_train_epoch` (each batch :meth:`_batch`: :meth:`_train_step`, :meth:`_log`, the
        periodic :meth:`_checkpoint`), :meth:`_evaluate`, :meth:`_should_stop` and the epoch-end
        checkpoint; the :class:`TrainResult` at the end.

        :param model: the torch model; called as ``model(**batch)`` without ``"labels"`` and
            ``"sample_weight"``, it returns logits or an object with ``.logits``.
        :param train_set: the training Dataset: items are dicts with ``"labels"``.
        :param val_set: the validation Dataset, evaluated after each epoch.
        :param collate: the loaders' ``collate_fn`` (a dict of tensors per batch).
        :param loss_fn: a torch loss module, ``(logits, labels) -> loss``.
        :param hooks: evaluation, the best model's saving and the run's observers.
        :param monitor: the metric (key of ``hooks.evaluate``'s result) that picks the best epoch.
        :param mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        :param sample_weights: per-example draw weights of the training set (a weighted
            sampler); ``None``: a seeded shuffle.
        :param state: training-state checkpoints and resume; ``None``: neither.
        :param parameter_depths: parameter name -> depth
            (:meth:`tuneforge.components.ModelBuilder.parameter_depths`) for
            ``trainer.layer_decay``; ``None``: the model has no layer structure.

        With ``trainer.ema_decay`` an exponential moving average of the weights is kept: each
        epoch's validation and the best model use it, and at the end it is copied into
        ``model``.
        """
        fit = _Fit(hooks, monitor, mode, state if state is not None else StateOptions())
        self._setup(
            fit, model, train_set, val_set, collate, loss_fn, sample_weights, parameter_depths
        )
        loop = self._start(fit)
        for epoch in range(loop.epoch, self.config.epochs + 1):
            train_loss, seconds = self._train_epoch(fit, loop, epoch)
            value = self._evaluate(fit, loop, train_loss, seconds)
            if self._should_stop(fit, loop, value):
                break
            if fit.state.state_dir is not None and epoch < self.config.epochs:
                self._checkpoint(fit, loop, at_epoch_end=True)
        if fit.ema is not None:  # the run keeps the averaged weights
            self.accelerator.unwrap_model(fit.model).load_state_dict(fit.ema.module.state_dict())
        return loop.result(self.skipped_steps)

    def _setup(
        self,
        fit: _Fit,
        model: Any,
        train_set: Any,
        val_set: Any,
        collate: Any,
        loss_fn: Any,
        sample_weights: np.ndarray | None,
        depths: dict[str, int] | None = None,
    ) -> None:
        """Build the loaders, optimizer and schedule, and prepare them with Accelerate; with
        ``trainer.ema_decay`` the weights' moving average (:meth:`_make_ema`)."""
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from tuneforge.sampling import EpochBatchSampler, check_prepared, find_sampler

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed, deterministic=cfg.deterministic)
        train_dl = self._loader(train_set, collate, cfg.batch_size, True, sample_weights)
        sampler = find_sampler(train_dl)  # its order is a function of (seed, epoch)
        if isinstance(sampler, EpochBatchSampler) and sampler.merges_last and self.is_main:
            self.console(
                "the last training batch of 1 example is merged into the one before "
                f"(N = {sampler.num_samples}, batch size {sampler.batch_size})"
            )
        val_dl = self._loader(val_set, collate, cfg.eval_batch_size or cfg.batch_size * 2, False)
        optimizer = self._optimizer(model, depths)
        steps_per_epoch = math.ceil(len(train_dl) / cfg.gradient_accumulation_steps)
        fit.total = steps_per_epoch * cfg.epochs
        schedule = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[
            cfg.schedule
        ]
        scheduler = get_scheduler(
            schedule,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * fit.total),
            num_training_steps=fit.total,
        )
        fit.model, fit.optimizer, fit.train_dl, fit.val_dl, fit.scheduler = acc.prepare(
            model, optimizer, train_dl, val_dl, scheduler
        )
        check_prepared(fit.train_dl, sampler, acc.num_processes)  # sharded once, not replaced
        fit.sampler = sampler
        fit.loss_fn = loss_fn.to(acc.device)
        fit.ema = self._ema = self._make_ema(acc.unwrap_model(fit.model))
        fit.interactive = self.console.interactive and self.is_main
        fit.verbose = self.console.mode == "verbose" and self.is_main

    def _start(self, fit: _Fit) -> LoopState:
        """The loop state at the run's start: fresh, or with ``state.resume`` the checkpoint's
        (everything checked, files and fit to these objects, before anything is applied)."""
        loop = LoopState(start=time.perf_counter())
        self._init_reliability(fit.optimizer)
        resume = fit.state.resume
        if resume is None:
            return loop
        cfg, acc = self.config, self.accelerator
        saved, loop.resumed_rngs = load_checkpoint(
            acc, resume, fit.model, fit.optimizer, fit.scheduler, ema=fit.ema
        )
        loop.process_rngs = capture_rngs({})  # the process RNGs as Accelerate restored them
        batches = len(fit.train_dl)
        if saved.get("num_batches") != batches or saved.get("epochs") != cfg.epochs:
            raise UserError(
                f"{resume}: the checkpoint was written for {saved.get('num_batches')} batches "
                f"x {saved.get('epochs')} epochs, this run has {batches} x "
                f"{cfg.epochs}; the data or config changed since the run started"
            )
        loop.resume_from(saved)
        self._chunks, self.skipped_steps = saved["chunks"], saved["skipped_steps"]
        self._nf_run = saved["nonfinite_run"]
        if self.is_main:
            self.console(
                f"resuming from {resume} (epoch {loop.epoch}, batch "
                f"{saved['batches_done']}/{batches}, step {loop.step})"
            )
        return loop

    def _train_epoch(self, fit: _Fit, loop: LoopState, epoch: int) -> tuple[float, float]:
        """Train one epoch; returns its mean training loss and its duration in seconds.

        A resumed checkpoint's epoch replays the data up to the checkpoint (loading only, no
        compute): the sampler, worker and augmentation generators advance exactly as they did;
        then the process RNGs are set to where the checkpoint left them.
        """
        from tqdm.auto import tqdm

        from tuneforge.sampling import set_epoch

        cfg, acc = self.config, self.accelerator
        if fit.hooks.on_epoch_start is not None:
            fit.hooks.on_epoch_start(acc.unwrap_model(fit.model), epoch)
        fit.model.train()
        set_epoch(fit.train_dl, fit.sampler, epoch)
        loop.begin_epoch(epoch, acc.device)
        skip = self._epoch_rngs(fit, loop)
        batches = iter(fit.train_dl)
        for _ in range(skip):
            next(batches)
        if skip:
            restore_rngs(*loop.process_rngs, {})
        bar = tqdm(
            batches,
            total=len(fit.train_dl),
            initial=skip,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=not fit.interactive,
            dynamic_ncols=True,
            unit="batch",
            file=self.console.stream,
        )
        for batch in bar:
            self._batch(fit, loop, batch, bar)
        bar.close()
        self._check_nonfinite()
        skip_policy = cfg.nonfinite == "skip"
        mean = loop.running / (loop.running_n if skip_policy else max(loop.batches, 1))
        train_loss = acc.reduce(mean, "mean").item()
        if not math.isfinite(train_loss) and not skip_policy:  # skip: the bound decides
            raise UserError(
                f"training diverged: train loss is {train_loss} in epoch {epoch}; lower trainer.lr "
                f"(now {cfg.lr:g})"
            )
        return train_loss, time.perf_counter() - loop.epoch_start

    def _epoch_rngs(self, fit: _Fit, loop: LoopState) -> int:
        """The data's own generators (sampler, dataset, augmenters) at an epoch's start, kept
        for its checkpoints; in a resumed checkpoint's epoch first set back to where they were
        when that epoch began. Returns the batches to replay (the checkpoint's, or 0)."""
        keep_state = fit.state.state_dir is not None or loop.resumed is not None
        holders = find_rngs(fit.train_dl, "train_dl") if keep_state else {}
        skip = 0
        if loop.resumed is not None:
            missing = restore_rngs(*loop.resumed_rngs, holders)
            if missing and self.is_main:
                self.console.result(f"warning: resume: no generator at {', '.join(missing)}")
            skip = loop.resume_epoch()
        loop.epoch_rngs = capture_rngs(holders) if fit.state.state_dir is not None else None
        return skip

    def _batch(self, fit: _Fit, loop: LoopState, batch: dict[str, Any], bar: Any) -> None:
        """One loader batch (:meth:`_train_step`); after an optimizer step, the log every
        ``trainer.log_every_n_steps`` steps and the checkpoint every
        ``trainer.checkpoint_every_n_steps``."""
        cfg, acc = self.config, self.accelerator
        labels = batch.pop("labels")
        weights = batch.pop("sample_weight", None)
        with acc.accumulate(fit.model):
            detached = self._train_step(
                fit.model,
                batch,
                labels,
                weights,
                fit.loss_fn,
                fit.optimizer,
                fit.scheduler,
                loop.epoch,
                loop.step,
            )
        # with the skip policy, skipped steps' losses stay out of the logged means
        loop.add(detached, labels.shape[0], cfg.nonfinite == "skip")
        if not acc.sync_gradients:
            return
        loop.step += 1
        if loop.step % cfg.log_every_n_steps == 0:
            self._log(fit, loop, bar)
        every = cfg.checkpoint_every_n_steps or 0
        if fit.state.state_dir is not None and every and loop.step % every == 0:
            self._check_nonfinite()  # never checkpoint a diverged model
            self._checkpoint(fit, loop, at_epoch_end=False)

    def _log(self, fit: _Fit, loop: LoopState, bar: Any) -> None:
        """The mean training loss since the last log (one host sync per log interval; the mean
        over processes) to the progress bar, the verbose console and ``hooks.on_log``."""
        cfg, acc = self.config, self.accelerator
        self._check_nonfinite()
        mean = loop.window / (loop.window_n if cfg.nonfinite == "skip" else loop.window_batches)
        value = acc.reduce(mean, "mean").item()
        loop.window.zero_()
        loop.window_n.zero_()
        loop.window_batches = 0
        lr = max(fit.scheduler.get_last_lr())  # the head's (trainer.layer_decay: the top group)
        now = time.perf_counter()
        rate = loop.window_seen * acc.num_processes / max(now - loop.window_start, 1e-9)
        loop.window_seen, loop.window_start = 0, now
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.0f}")
        if fit.verbose and not fit.interactive:
            left = (fit.total - loop.step) * (now - loop.start) / loop.step
            self.console.detail(
                f"epoch {loop.epoch}/{cfg.epochs} step {loop.step}/{fit.total} loss {value:.4f} "
                f"lr {lr:.2e} {rate:.0f} samples/s eta {left:.0f}s"
            )
        if fit.hooks.on_log is not None:
            fit.hooks.on_log(
                loop.step, {"train.loss": value, "lr": lr, "train.samples_per_s": rate}
            )

    def _evaluate(self, fit: _Fit, loop: LoopState, train_loss: float, seconds: float) -> float:
        """Score the validation split after an epoch: its history row, the best model saved on
        an improvement, the epoch table, ``hooks.on_epoch_end``; returns the monitored value."""
        acc = self.accelerator
        # with trainer.ema_decay the averaged weights are the ones scored and kept
        scored = fit.model if fit.ema is None else fit.ema.module
        logits, labels = self.predict(scored, fit.val_dl)
        metrics = fit.hooks.evaluate(logits, labels)
        row = {
            "epoch": float(loop.epoch),
            "train.loss": train_loss,
            # every process runs as many batches (Accelerate evens them out)
            "train.samples_per_s": loop.seen * acc.num_processes / max(seconds, 1e-9),
            "train.steps": float(loop.step - loop.first_step),  # optimizer steps in this epoch
        }
        row.update({f"val.{k}": float(v) for k, v in metrics.items()})
        loop.history.append(row)
        loop.epochs_run = loop.epoch
        value = float(metrics[fit.monitor])
        best = improved(value, loop.best_value, fit.mode, self.config.early_stopping_min_delta)
        if best:
            loop.best_value, loop.best_epoch = value, loop.epoch
            loop.bad_epochs = 0
            acc.wait_for_everyone()
            if self.is_main:
                fit.hooks.save_best(
                    acc.unwrap_model(fit.model) if fit.ema is None else fit.ema.module
                )
        else:
            loop.bad_epochs += 1
        if self.is_main:
            self.console.epoch_table(row, seconds, best)
        if fit.hooks.on_epoch_end is not None:
            fit.hooks.on_epoch_end(loop.epoch, row)
        return value

    def _should_stop(self, fit: _Fit, loop: LoopState, value: float) -> bool:
        """Whether the run ends after this epoch: a non-finite monitored value, or
        ``trainer.early_stopping_patience`` epochs without an improvement."""
        if not math.isfinite(value):
            loop.stopped_early, loop.stop_reason = True, f"val.{fit.monitor} is {value}"
            return True
        patience = self.config.early_stopping_patience
        if patience is None or loop.bad_epochs < patience:
            return False
        loop.stopped_early = True
        loop.stop_reason = (
            f"early stopping: val.{fit.monitor} did not improve for {loop.bad_epochs} epochs"
        )
        if self.is_main:
            self.console(loop.stop_reason)
        return True

    def _checkpoint(self, fit: _Fit, loop: LoopState, at_epoch_end: bool) -> None:
        """Write a training-state checkpoint at ``loop.step``: mid-epoch with the data's
        generators as the epoch's iterator was made (a resume replays the epoch to here), or
        ``at_epoch_end`` as the next epoch's start, whose generators are the ones in use now."""
        assert fit.state.state_dir is not None
        record = self._loop_record(fit, loop, at_epoch_end)
        if at_epoch_end:
            rngs = capture_rngs(find_rngs(fit.train_dl, "train_dl"))
        else:
            rngs = loop.epoch_rngs
        saved = save_checkpoint(
            self.accelerator,
            fit.state.state_dir,
            loop.step,
            record,
            rngs,
            self.config.keep_checkpoints,
            fit.state.on_checkpoint,
            ema=fit.ema,
        )
        if saved is not None and fit.verbose:
            self.console.detail(f"checkpoint {saved.name}")

    def _loop_record(self, fit: _Fit, loop: LoopState, at_epoch_end: bool) -> dict[str, Any]:
        """The loop state as ``trainer_state.json`` stores it (the keys of
        :data:`tuneforge.checkpoint.LOOP_STATE`, in this order): mid-epoch, or the next
        epoch's start (no sums or counts)."""
        mid = not at_epoch_end
        return {
            "epoch": loop.epoch if mid else loop.epoch + 1,
            "batches_done": loop.batches if mid else 0,
            "step": loop.step,
            "epoch_first_step": loop.first_step if mid else loop.step,
            "num_batches": len(fit.train_dl),
            "epochs": self.config.epochs,
            "epochs_run": loop.epochs_run,
            "best_value": loop.best_value,
            "best_epoch": loop.best_epoch,
            "bad_epochs": loop.bad_epochs,
            "history": loop.history,
            "chunks": self._chunks,
            "skipped_steps": self.skipped_steps,
            "nonfinite_run": self._nf_run,
            "sums": loop.sums() if mid else [],
            "counts": loop.counts() if mid else [],
        }

    # -- reliability: OOM retry, non-finite steps, checkpoints ------------------------------
    def _init_reliability(self, optimizer: Any) -> None:
        import torch

        cfg, acc = self.config, self.accelerator
        self._chunks = 1  # each loader batch runs as this many micro-batches (after an OOM)
        self._window_micro = 0  # micro-batches so far in the current accumulation window
        self._grads_touched = False
        self._poisoned = False  # an OOM mid-window left partial gradients: skip that update
        self._auto_batch = self.on_cuda if cfg.auto_batch_size is None else cfg.auto_batch_size
        # Processes must split their batches alike (DDP's collectives): one process's OOM
        # cannot change its split alone, so the retry is for one-process runs.
        self._auto_batch = self._auto_batch and acc.num_processes == 1
        # accelerate's AcceleratedOptimizer wraps the torch optimizer as ``.optimizer``
        inner = getattr(optimizer, "optimizer", optimizer)
        # Fused AdamW skips a step on the device when ``found_inf`` is set: no host sync.
        self._mask_on_device = bool(inner.defaults.get("fused")) and acc.scaler is None
        self._inner_optimizer = inner
        self._window_loss: Any = None  # the accumulation window's summed loss
        self._nf_flags = torch.zeros(cfg.log_every_n_steps + 1, device=acc.device)  # 1.0: bad
        self._nf_n = 0  # steps recorded in _nf_flags since the last check
        self._nf_steps: list[tuple[int, int, float]] = []  # (epoch, step, lr) of those steps
        self._nf_run = 0  # non-finite steps in a row, carried across checks
        self.skipped_steps = 0

    @staticmethod
    def _is_oom(exc: BaseException) -> bool:
        import torch
        from accelerate.utils.memory import should_reduce_batch_size

        return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)

    def _forward_backward(
        self, model: Any, batch: dict[str, Any], labels: Any, weights: Any, loss_fn: Any
    ) -> Any:
        """Forward and backward of one loader batch; on out-of-memory, split it and retry.

        The batch is cut into ``self._chunks`` micro-batches whose losses are weighted by their
        share of the batch, so the gradient is that of the whole batch (the effective batch
        size does not change). The split stays for the rest of the run.
        """
        import gc

        import torch

        while True:
            try:
                return self._chunked(model, batch, labels, weights, loss_fn, self._chunks)
            except Exception as exc:
                if not self._is_oom(exc):
                    raise
                n = int(labels.shape[0])
                pieces = _pieces(n, self._chunks)
                micro = math.ceil(n / pieces)
                where = (
                    "CUDA out of memory" if self.on_cuda or "CUDA" in str(exc) else "out of memory"
                )
                if not self._auto_batch:
                    raise UserError(
                        f"{where} at batch {micro}: lower trainer.batch_size (now "
                        f"{self.config.batch_size}) or set trainer.auto_batch_size: true"
                    ) from None
                if pieces >= max(1, n // 2):  # no smaller pieces: they would be of one row
                    raise UserError(
                        f"{where} even at batch {micro}: the model does not fit this device; use "
                        "a smaller model, trainer.precision: bf16, or a larger GPU"
                    ) from None
            # Outside the except block: the traceback (and the activations it holds) is gone.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if self._grads_touched:
                if self._window_micro == 0:  # no earlier micro-batch: the gradients can go
                    self._inner_optimizer.zero_grad(set_to_none=True)
                else:  # earlier micro-batches' gradients are mixed with partial ones
                    self._poisoned = True
            self._chunks *= 2
            pieces = _pieces(n, self._chunks)
            self.console.result(
                f"warning: {where} at batch {micro}: retrying with {math.ceil(n / pieces)} x "
                f"{pieces * self.config.gradient_accumulation_steps} accumulation"
            )

    def _chunked(
        self,
        model: Any,
        batch: dict[str, Any],
        labels: Any,
        weights: Any,
        loss_fn: Any,
        chunks: int,
    ) -> Any:
        from contextlib import nullcontext

        acc = self.accelerator
        self._grads_touched = False
        n = int(labels.shape[0])
        if chunks == 1:
            out = _forward(model, batch)
            loss = self._loss(loss_fn, _logits(out).float(), labels, weights)
            self._grads_touched = True
            acc.backward(self._penalised(loss))
            return loss.detach()
        total = None
        for part, sub in _row_slices(batch, n, chunks):
            w = None if weights is None else weights[part]
            rows = min(n, part.stop) - part.start
            share = (w.sum() / weights.sum()) if w is not None else rows / n
            out = _forward(model, sub)
            loss = self._loss(loss_fn, _logits(out).float(), labels[part], w) * share
            self._grads_touched = True
            with nullcontext() if part.stop >= n else acc.no_sync(model):
                acc.backward(self._penalised(loss, share))
            total = loss.detach() if total is None else total + loss.detach()
        return total

    def _train_step(
        self,
        model: Any,
        batch: dict[str, Any],
        labels: Any,
        weights: Any,
        loss_fn: Any,
        optimizer: Any,
        scheduler: Any,
        epoch: int,
        step: int,
    ) -> Any:
        """One micro-batch inside ``accelerator.accumulate``; returns its detached loss.

        At the end of an accumulation window the update is applied only when the window's
        losses and the gradient norm are finite; with fused AdamW the check stays on the
        device (``found_inf``), otherwise it costs one host sync per optimizer step.
        """
        import torch

        cfg, acc = self.config, self.accelerator
        loss = self._forward_backward(model, batch, labels, weights, loss_fn)
        window = loss if self._window_loss is None else self._window_loss + loss
        self._window_micro += 1
        if acc.sync_gradients and self._poisoned:
            # An out-of-memory retry inside this window left partial gradients behind: drop
            # the window's update. Not a non-finite step (the retry's warning said what
            # happened), so nonfinite: stop does not end the run for it.
            self._poisoned = False
            self._window_loss, self._window_micro = None, 0
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            return loss
        bad = None
        if acc.sync_gradients:
            norm = None
            if cfg.max_grad_norm:
                norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            elif acc.scaler is None:
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads) if grads else None
            # With fp16 the grad scaler skips steps with inf/NaN gradients (overflow is
            # expected while it calibrates); only the loss counts then.
            if norm is not None and acc.scaler is None:
                window = window + norm.to(window.device)
            # 0.0 when finite, 1.0 when NaN/inf (inf * 0 is NaN): the fused kernel's found_inf
            bad = (window * 0).nan_to_num_(nan=1.0)
            self._record_nonfinite(bad, epoch, step + 1, max(scheduler.get_last_lr()))
            if acc.scaler is None:
                if self._mask_on_device:
                    self._inner_optimizer.found_inf = bad
                elif bool(bad):  # host sync: only without fused AdamW
                    optimizer.zero_grad(set_to_none=True)
            window = None
            self._window_micro = 0
        self._window_loss = window
        optimizer.step()
        if self._ema is not None and acc.sync_gradients:
            self._update_ema(model, bad)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    # -- EMA of the weights (trainer.ema_decay) -------------------------------------------
    def _make_ema(self, unwrapped: Any) -> Any:
        """``AveragedModel`` of the unwrapped model (a copy on its device; under DDP every
        process keeps its own, updated alike), or None without ``trainer.ema_decay``."""
        decay = self.config.ema_decay
        if decay is None:
            return None
        import torch
        from torch.optim.swa_utils import AveragedModel

        # 0-d tensor on the device: (1 - decay) after an applied step, 0 after a skipped one,
        # so a step skipped on the device (fused AdamW's found_inf) leaves the average as is.
        self._ema_weight = torch.zeros((), device=self.accelerator.device)

        @torch.no_grad()
        def ema_update(averaged: list[Any], current: list[Any], _n: Any) -> None:
            # torch's get_ema_multi_avg_fn(decay) with the step's weight as a device tensor
            if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
                w = self._ema_weight.to(averaged[0].dtype)
                delta = torch._foreach_sub(current, averaged)
                torch._foreach_mul_(delta, w)
                torch._foreach_add_(averaged, delta)
            else:  # integer buffers (step counters, position ids) are copied, not averaged
                for a, c in zip(averaged, current, strict=True):
                    a.copy_(c)

        ema = AveragedModel(unwrapped, multi_avg_fn=ema_update, use_buffers=True)
        ema.requires_grad_(False)
        return ema

    def _update_ema(self, model: Any, bad: Any) -> None:
        """Move the average towards the weights after an optimizer step; ``bad`` (a 0-d
        tensor, 1.0 for a non-finite step that was not applied) or the grad scaler's skip
        leaves it unchanged."""
        acc = self.accelerator
        rate = 1.0 - float(self.config.ema_decay or 0.0)
        if acc.scaler is not None:  # fp16: the scaler skipped the step or not (host value)
            if acc.optimizer_step_was_skipped:
                return
            self._ema_weight.fill_(rate)
        elif bad is None:
            self._ema_weight.fill_(rate)
        else:
            self._ema_weight.copy_((1.0 - bad) * rate)
        self._ema.update_parameters(acc.unwrap_model(model))

    def _forward_eval(self, model: Any, batch: dict[str, Any]) -> Any:
        """Float32 logits of an evaluation batch; on out-of-memory, in smaller pieces."""
        import gc

        import torch

        cfg = self.config
        auto = self.on_cuda if cfg.auto_batch_size is None else cfg.auto_batch_size
        while True:
            chunks = self._eval_chunks
            # batch values: tensors, or plain values (not components)
            sizes = [v.shape[0] for v in batch.values() if hasattr(v, "shape") and v.ndim]
            n = sizes[0] if sizes else 1
            try:
                if chunks == 1:
                    return _logits(_forward(model, batch)).float()
                parts = [
                    _logits(_forward(model, sub)).float()
                    for _, sub in _row_slices(batch, n, chunks)
                ]
                return torch.cat(parts)
            except Exception as exc:
                if not self._is_oom(exc):
                    raise
                pieces = _pieces(n, chunks)
                micro = math.ceil(n / pieces)
                if not auto or pieces >= max(1, n // 2):  # smaller pieces would be of one row
                    raise UserError(
                        f"out of memory evaluating a batch of {micro}: lower "
                        "trainer.eval_batch_size or set trainer.auto_batch_size: true"
                    ) from None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._eval_chunks = chunks * 2
            self.console.result(
                f"warning: out of memory evaluating a batch of {micro}: "
                f"retrying in pieces of {math.ceil(n / _pieces(n, self._eval_chunks))}"
            )

    def _record_nonfinite(self, bad: Any, epoch: int, step: int, lr: float) -> None:
        if self._nf_n == len(self._nf_flags):
            self._check_nonfinite()
        self._nf_flags[self._nf_n] = bad
        self._nf_steps.append((epoch, step, lr))
        self._nf_n += 1

    def _check_nonfinite(self) -> None:
        """Read the steps' non-finite flags (one host sync) and act on ``trainer.nonfinite``."""
        if self._nf_n == 0:
            return
        cfg = self.config
        flags = self._nf_flags[: self._nf_n].tolist()
        steps, self._nf_steps, self._nf_n = self._nf_steps, [], 0
        bad = [s for s, f in zip(steps, flags, strict=True) if f]
        for f in flags:
            self._nf_run = self._nf_run + 1 if f else 0
            if cfg.nonfinite == "skip" and self._nf_run > cfg.nonfinite_max_consecutive:
                epoch, step, lr = bad[0]
                raise UserError(
                    f"training diverged: {self._nf_run} optimizer steps in a row had a non-finite "
                    f"loss or gradients (epoch {epoch}, from step {step}, lr {lr:.3g}; "
                    f"{self.skipped_steps + len(bad)} skipped in all); lower trainer.lr (now "
                    f"{cfg.lr:g}), set trainer.max_grad_norm, or check the data for NaN/inf values"
                )
        if not bad:
            return
        epoch, step, lr = bad[0]
        if cfg.nonfinite == "stop":
            raise UserError(
                f"training diverged: NaN/inf loss or gradients at epoch {epoch}, step {step} "
                f"(lr {lr:.3g}); that update was not applied; lower trainer.lr (now {cfg.lr:g}), "
                "set trainer.max_grad_norm, check the data for NaN/inf values, or set "
                "trainer.nonfinite: skip"
            )
        self.skipped_steps += len(bad)
        if self.is_main:
            self.console.result(
                f"warning: skipped {len(bad)} optimizer step{'s' if len(bad) > 1 else ''} with a "
                f"non-finite loss or gradients (epoch {epoch}, first at step {step}, lr {lr:.3g}); "
                f"{self.skipped_steps} so far"
            )

    def _penalised(self, loss: Any, share: Any = 1.0) -> Any:
        """``loss`` plus ``share`` of the L1 penalty (``trainer.l1``) on the decayed weights."""
        l1 = self.config.l1
        params = self._l1_params
        if not l1 or not params:
            return loss
        import torch

        norm = torch.stack([p.abs().sum() for p in params]).sum()
        return loss + (l1 * share) * norm.to(loss.dtype)

    @staticmethod
    def _loss(loss_fn: Any, logits: Any, labels: Any, weights: Any) -> Any:
        """The batch loss; with per-row weights, their weighted mean of per-row losses."""
        if weights is None:
            return loss_fn(logits, labels)
        # the task's loss is a torch loss module; torch's own losses carry ``reduction``
        if not hasattr(loss_fn, "reduction"):
            raise UserError(
                "the task's loss cannot weight rows (no 'reduction'); policy down-weight"
            )
        reduction, loss_fn.reduction = loss_fn.reduction, "none"
        try:
            per_row = loss_fn(logits, labels)
        finally:
            loss_fn.reduction = reduction
        return (per_row * weights).sum() / weights.sum().clamp_min(1e-12)

    def predict(self, model: Any, loader: Any) -> tuple[Any, Any]:
        """Logits (float32, CPU) and labels (or None) over a prepared or plain loader."""
        import torch
        from accelerate.data_loader import DataLoaderAdapter

        acc = self.accelerator
        # A prepared loader gives each process a shard: gather the shards (duplicates dropped).
        # A plain one (``loader(local=True)``) has everything here already.
        gather = isinstance(loader, DataLoaderAdapter)
        model.eval()
        all_logits, all_labels = [], []
        with torch.inference_mode(), acc.autocast():
            for batch in loader:
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                labels = batch.pop("labels", None)
                logits = self._forward_eval(model, batch)
                if labels is not None:
                    if gather:
                        logits, labels = acc.gather_for_metrics((logits, labels))
                    all_labels.append(labels)
                elif gather:
                    logits = acc.gather_for_metrics(logits)
                all_logits.append(logits)
        logits = torch.cat(all_logits).cpu()
        labels = torch.cat(all_labels).cpu() if all_labels else None
        return logits, labels

    def loader(self, dataset: Any, collate: Any, local: bool = False) -> Any:
        """An evaluation loader for ``dataset``: sharded over the processes of a distributed
        run, or with ``local`` all of it in this process (no collective calls)."""
        dl = self._loader(
            dataset, collate, self.config.eval_batch_size or self.config.batch_size * 2, False
        )
        return dl if local else self.accelerator.prepare(dl)

    def prepare_model(self, model: Any, local: bool = False) -> Any:
        """The model prepared by Accelerate, or with ``local`` only moved to this device."""
        return model.to(self.accelerator.device) if local else self.accelerator.prepare(model)
