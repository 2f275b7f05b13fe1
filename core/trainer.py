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
from tuneforge.errors import UserError


@dataclass
class TrainResult:
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradients


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

    def _optimizer(self, model: Any) -> Any:
        import torch

        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            # No weight decay on biases and normalisation weights (standard practice).
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        self._l1_params = decay
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # Fused AdamW (CUDA and CPU): one kernel per step, and it skips a step flagged
        # non-finite on the device (``found_inf``) without a host sync.
        try:
            return torch.optim.AdamW(groups, lr=self.config.lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype the fused kernel lacks
            return torch.optim.AdamW(groups, lr=self.config.lr)

    # -- training -------------------------------------------------------------------------
    def fit(
        self,
        model: Any,
        train_set: Any,
        val_set: Any,
        collate: Any,
        loss_fn: Any,
        evaluate: Callable[[Any, Any], dict[str, float]],
        monitor: str,
        mode: str,
        save_best: Callable[[Any], None],
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        sample_weights: np.ndarray | None = None,
        state_dir: Path | None = None,
        resume: Path | None = None,
        on_checkpoint: Callable[[Path], dict[str, Any]] | None = None,
        on_epoch_start: Callable[[Any, int], None] | None = None,
    ) -> TrainResult:
        """Train for ``config.epochs`` epochs, evaluating on ``val_set`` after each.

        :param evaluate: ``(logits, labels) -> metrics`` on CPU tensors of the whole split;
            must include ``"loss"``.
        :param monitor: the metric (key of ``evaluate``'s result) that picks the best epoch.
        :param save_best: called with the unwrapped model whenever ``monitor`` improves.
        :param state_dir: where training-state checkpoints go (``RUN/state``); ``None``: none.
        :param resume: a checkpoint folder (``state/step-NNNNNN``) to continue from.
        :param on_checkpoint: ``(tmp_dir) -> dict`` called by the main process while a
            checkpoint is written; may add files and returns values kept in its state.
        :param on_epoch_start: ``(unwrapped model, epoch)`` called before each training epoch
            (the pipeline passes :meth:`tuneforge.components.Task.on_epoch_start`), e.g. to
            freeze a backbone for the first epochs.
        """
        import torch
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        from tuneforge.sampling import EpochBatchSampler, check_prepared, find_sampler, set_epoch

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed, deterministic=cfg.deterministic)
        train_dl = self._loader(train_set, collate, cfg.batch_size, True, sample_weights)
        train_sampler = find_sampler(train_dl)  # its order is a function of (seed, epoch)
        merged = isinstance(train_sampler, EpochBatchSampler) and train_sampler.merges_last
        if merged and self.is_main:
            self.console(
                "the last training batch of 1 example is merged into the one before "
                f"(N = {train_sampler.num_samples}, batch size {train_sampler.batch_size})"
            )
        val_dl = self._loader(val_set, collate, cfg.eval_batch_size or cfg.batch_size * 2, False)
        optimizer = self._optimizer(model)
        steps_per_epoch = math.ceil(len(train_dl) / cfg.gradient_accumulation_steps)
        total = steps_per_epoch * cfg.epochs
        schedule = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[
            cfg.schedule
        ]
        scheduler = get_scheduler(
            schedule,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * total),
            num_training_steps=total,
        )
        model, optimizer, train_dl, val_dl, scheduler = acc.prepare(
            model, optimizer, train_dl, val_dl, scheduler
        )
        check_prepared(train_dl, train_sampler, acc.num_processes)  # sharded once, not replaced
        loss_fn = loss_fn.to(acc.device)
        result = TrainResult()
        start = time.perf_counter()
        bad_epochs = 0
        step = 0
        self._init_reliability(optimizer)
        first_epoch, resumed, current_rng = 1, None, None
        if resume is not None:
            # everything checked (files, fit to these objects) before anything is applied
            resumed, epoch_rng_saved = load_checkpoint(acc, resume, model, optimizer, scheduler)
            current_rng = capture_rngs({})  # the process RNGs as Accelerate restored them
            if resumed.get("num_batches") != len(train_dl) or resumed.get("epochs") != cfg.epochs:
                raise UserError(
                    f"{resume}: the checkpoint was written for {resumed.get('num_batches')} batches "
                    f"x {resumed.get('epochs')} epochs, this run has {len(train_dl)} x "
                    f"{cfg.epochs}; the data or config changed since the run started"
                )
            first_epoch, step, bad_epochs = resumed["epoch"], resumed["step"], resumed["bad_epochs"]
            result.history = resumed["history"]
            result.best_value, result.best_epoch = resumed["best_value"], resumed["best_epoch"]
            result.epochs_run = resumed["epochs_run"]
            self._chunks, self.skipped_steps = resumed["chunks"], resumed["skipped_steps"]
            self._nf_run = resumed["nonfinite_run"]
            if self.is_main:
                self.console(
                    f"resuming from {resume} (epoch {first_epoch}, batch "
                    f"{resumed['batches_done']}/{len(train_dl)}, step {step})"
                )
        every = cfg.checkpoint_every_n_steps or 0
        skip_policy = cfg.nonfinite == "skip"

        def loop_state(epoch: int, batches_done: int, epoch_first_step: int) -> dict[str, Any]:
            mid = batches_done > 0
            return {
                "epoch": epoch,
                "batches_done": batches_done,
                "step": step,
                "epoch_first_step": epoch_first_step,
                "num_batches": len(train_dl),
                "epochs": cfg.epochs,
                "epochs_run": result.epochs_run,
                "best_value": result.best_value,
                "best_epoch": result.best_epoch,
                "bad_epochs": bad_epochs,
                "history": result.history,
                "chunks": self._chunks,
                "skipped_steps": self.skipped_steps,
                "nonfinite_run": self._nf_run,
                "sums": [t.item() for t in (running, window, running_n, window_n)] if mid else [],
                "counts": [n_window, n_batches, seen] if mid else [],
            }

        def checkpoint(state: dict[str, Any], rngs: Any) -> None:
            assert state_dir is not None
            saved = save_checkpoint(
                acc, state_dir, step, state, rngs, cfg.keep_checkpoints, on_checkpoint
            )
            if saved is not None and verbose:
                self.console.detail(f"checkpoint {saved.name}")

        interactive = self.console.interactive and self.is_main
        verbose = self.console.mode == "verbose" and self.is_main
        for epoch in range(first_epoch, cfg.epochs + 1):
            if on_epoch_start is not None:
                on_epoch_start(acc.unwrap_model(model), epoch)
            model.train()
            set_epoch(train_dl, train_sampler, epoch)
            first_step = step
            t0 = time.perf_counter()
            running = torch.zeros((), device=acc.device)
            window = torch.zeros((), device=acc.device)
            n_window = 0
            n_batches = 0
            seen = 0
            window_seen, window_start = 0, t0
            running_n = torch.zeros((), device=acc.device)  # finite losses summed (skip policy)
            window_n = torch.zeros((), device=acc.device)
            # The data's own generators (sampler, dataset, augmenters), for checkpoints.
            keep_state = state_dir is not None or resumed is not None
            holders = find_rngs(train_dl, "train_dl") if keep_state else {}
            skip = 0
            if resumed is not None:
                missing = restore_rngs(*epoch_rng_saved, holders)
                if missing and self.is_main:
                    self.console.result(f"warning: resume: no generator at {', '.join(missing)}")
                skip = resumed["batches_done"]
                if skip:
                    first_step = resumed["epoch_first_step"]
                    r, w, rn, wn = resumed["sums"]
                    running.fill_(r), window.fill_(w), running_n.fill_(rn), window_n.fill_(wn)
                    n_window, n_batches, seen = resumed["counts"]
                resumed = None
            epoch_rng = capture_rngs(holders) if state_dir is not None else None
            batches = iter(train_dl)
            # Replay the data up to the checkpoint (loading only, no compute): the sampler,
            # worker and augmentation generators advance exactly as they did; then the
            # process RNGs are set to where the checkpoint left them.
            for _ in range(skip):
                next(batches)
            if skip:
                restore_rngs(*current_rng, {})
            bar = tqdm(
                batches,
                total=len(train_dl),
                initial=skip,
                desc=f"epoch {epoch}/{cfg.epochs}",
                leave=False,
                disable=not interactive,
                dynamic_ncols=True,
                unit="batch",
                file=self.console.stream,
            )
            for batch in bar:
                labels = batch.pop("labels")
                weights = batch.pop("sample_weight", None)
                with acc.accumulate(model):
                    detached = self._train_step(
                        model, batch, labels, weights, loss_fn, optimizer, scheduler, epoch, step
                    )
                if skip_policy:  # skipped steps' losses stay out of the logged means
                    finite = torch.isfinite(detached)
                    detached = torch.where(finite, detached, 0.0)
                    running_n += finite
                    window_n += finite
                running += detached
                window += detached
                n_window += 1
                n_batches += 1
                seen += labels.shape[0]
                window_seen += labels.shape[0]
                if acc.sync_gradients:
                    step += 1
                    if step % cfg.log_every_n_steps == 0:
                        # one host sync per log interval; the mean over processes
                        self._check_nonfinite()
                        mean = window / (window_n if skip_policy else n_window)
                        value = acc.reduce(mean, "mean").item()
                        window.zero_()
                        window_n.zero_()
                        n_window = 0
                        lr = scheduler.get_last_lr()[0]
                        now = time.perf_counter()
                        rate = window_seen * acc.num_processes / max(now - window_start, 1e-9)
                        window_seen, window_start = 0, now
                        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.0f}")
                        if verbose and not interactive:
                            left = (total - step) * (now - start) / step
                            self.console.detail(
                                f"epoch {epoch}/{cfg.epochs} step {step}/{total} loss {value:.4f} "
                                f"lr {lr:.2e} {rate:.0f} samples/s eta {left:.0f}s"
                            )
                        if on_log is not None:
                            on_log(
                                step, {"train.loss": value, "lr": lr, "train.samples_per_s": rate}
                            )
                    if state_dir is not None and every and step % every == 0:
                        self._check_nonfinite()  # never checkpoint a diverged model
                        checkpoint(loop_state(epoch, n_batches, first_step), epoch_rng)
            bar.close()
            self._check_nonfinite()
            mean = running / (running_n if skip_policy else max(n_batches, 1))
            train_loss = acc.reduce(mean, "mean").item()
            if not math.isfinite(train_loss) and not skip_policy:  # skip: the bound decides
                raise UserError(
                    f"training diverged: train loss is {train_loss} in epoch {epoch}; lower trainer.lr "
                    f"(now {cfg.lr:g})"
                )
            train_seconds = time.perf_counter() - t0
            logits, labels = self.predict(model, val_dl)
            metrics = evaluate(logits, labels)
            row = {
                "epoch": float(epoch),
                "train.loss": train_loss,
                # every process runs as many batches (Accelerate evens them out)
                "train.samples_per_s": seen * acc.num_processes / max(train_seconds, 1e-9),
                "train.steps": float(step - first_step),  # optimizer steps in this epoch
            }
            row.update({f"val.{k}": float(v) for k, v in metrics.items()})
            result.history.append(row)
            result.epochs_run = epoch
            value = float(metrics[monitor])
            best = improved(value, result.best_value, mode, cfg.early_stopping_min_delta)
            if best:
                result.best_value, result.best_epoch = value, epoch
                bad_epochs = 0
                acc.wait_for_everyone()
                if self.is_main:
                    save_best(acc.unwrap_model(model))
            else:
                bad_epochs += 1
            if self.is_main:
                self.console.epoch_table(row, train_seconds, best)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
            if not math.isfinite(value):
                result.stopped_early, result.stop_reason = True, f"val.{monitor} is {value}"
                break
            if (
                cfg.early_stopping_patience is not None
                and bad_epochs >= cfg.early_stopping_patience
            ):
                result.stopped_early = True
                result.stop_reason = (
                    f"early stopping: val.{monitor} did not improve for {bad_epochs} epochs"
                )
                if self.is_main:
                    self.console(result.stop_reason)
                break
            if state_dir is not None and epoch < cfg.epochs:
                # The next epoch's start: its generators are the ones in use now.
                checkpoint(
                    loop_state(epoch + 1, 0, step), capture_rngs(find_rngs(train_dl, "train_dl"))
                )
        result.seconds = time.perf_counter() - start
        result.skipped_steps = self.skipped_steps
        return result

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
            out = model(**batch)
            loss = self._loss(loss_fn, _logits(out).float(), labels, weights)
            self._grads_touched = True
            acc.backward(self._penalised(loss))
            return loss.detach()
        total = None
        for part, sub in _row_slices(batch, n, chunks):
            w = None if weights is None else weights[part]
            rows = min(n, part.stop) - part.start
            share = (w.sum() / weights.sum()) if w is not None else rows / n
            out = model(**sub)
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
            self._record_nonfinite(bad, epoch, step + 1, scheduler.get_last_lr()[0])
            if acc.scaler is None:
                if self._mask_on_device:
                    self._inner_optimizer.found_inf = bad
                elif bool(bad):  # host sync: only without fused AdamW
                    optimizer.zero_grad(set_to_none=True)
            window = None
            self._window_micro = 0
        self._window_loss = window
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

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
                    return _logits(model(**batch)).float()
                parts = [_logits(model(**sub)).float() for _, sub in _row_slices(batch, n, chunks)]
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
