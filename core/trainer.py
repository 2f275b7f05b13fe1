"""The shared trainer: one loop for every modality, on Hugging Face Accelerate.

Accelerate places the model and batches on the GPU when there is one, runs bf16 autocast,
gradient accumulation and (under ``accelerate launch`` / ``torchrun``) distributed data
parallel. The loop keeps the host out of the step: the loss is accumulated on the device and
read back only every ``log_every_n_steps`` steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def _logits(out: Any) -> Any:
    return out.logits if hasattr(out, "logits") else out


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class Trainer:
    """Fits a model; every modality-specific piece (datasets, loss, metrics) is handed in."""

    def __init__(self, config: TrainerConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console if console is not None else Console()
        self.accelerator = self._accelerator()
        from accelerate.utils import set_seed

        set_seed(config.seed)  # before the model is built: its new head is initialised randomly

    # -- setup ----------------------------------------------------------------------------
    def _accelerator(self) -> Any:
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

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
        return Accelerator(
            cpu=use_cpu,
            mixed_precision=mp,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        )

    @property
    def on_cuda(self) -> bool:
        return self.accelerator.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def _loader(
        self,
        dataset: Any,
        collate: Any,
        batch_size: int,
        shuffle: bool,
        sample_weights: np.ndarray | None = None,
    ) -> Any:
        import torch
        from torch.utils.data import DataLoader, WeightedRandomSampler

        sampler = None
        if sample_weights is not None:
            gen = torch.Generator().manual_seed(self.config.seed)
            sampler = WeightedRandomSampler(
                torch.as_tensor(sample_weights, dtype=torch.double),
                len(dataset),
                replacement=True,
                generator=gen,
            )
            shuffle = False
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=self.on_cuda,
            persistent_workers=workers > 0,
        )

    def _optimizer(self, model: Any) -> Any:
        import torch

        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            # No weight decay on biases and normalisation weights (standard practice).
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.config.lr, fused=self.on_cuda or None)

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
    ) -> TrainResult:
        """Train for ``config.epochs`` epochs, evaluating on ``val_set`` after each.

        :param evaluate: ``(logits, labels) -> metrics`` on CPU tensors of the whole split;
            must include ``"loss"``.
        :param monitor: the metric (key of ``evaluate``'s result) that picks the best epoch.
        :param save_best: called with the unwrapped model whenever ``monitor`` improves.
        """
        import torch
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm
        from transformers import get_scheduler

        cfg, acc = self.config, self.accelerator
        set_seed(cfg.seed)
        train_dl = self._loader(train_set, collate, cfg.batch_size, True, sample_weights)
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
        loss_fn = loss_fn.to(acc.device)
        result = TrainResult()
        start = time.perf_counter()
        bad_epochs = 0
        step = 0
        interactive = self.console.interactive and self.is_main
        verbose = self.console.mode == "verbose" and self.is_main
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            running = torch.zeros((), device=acc.device)
            window = torch.zeros((), device=acc.device)
            n_window = 0
            n_batches = 0
            seen = 0
            window_seen, window_start = 0, t0
            bar = tqdm(
                train_dl,
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
                    out = model(**batch)
                    loss = self._loss(loss_fn, _logits(out).float(), labels, weights)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                detached = loss.detach()
                running += detached
                window += detached
                n_window += 1
                n_batches += 1
                seen += labels.shape[0]
                window_seen += labels.shape[0]
                if acc.sync_gradients:
                    step += 1
                    if step % cfg.log_every_n_steps == 0:
                        value = (window / n_window).item()  # one host sync per log interval
                        window.zero_()
                        n_window = 0
                        if not math.isfinite(value):
                            raise UserError(
                                f"training diverged: train loss is {value} at epoch {epoch}, step {step}; "
                                f"lower trainer.lr (now {cfg.lr:g}) or set trainer.max_grad_norm"
                            )
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
            bar.close()
            train_loss = (running / max(n_batches, 1)).item()
            if not math.isfinite(train_loss):
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
                "train.samples_per_s": seen * acc.num_processes / max(train_seconds, 1e-9),
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
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _loss(loss_fn: Any, logits: Any, labels: Any, weights: Any) -> Any:
        """The batch loss; with per-row weights, their weighted mean of per-row losses."""
        if weights is None:
            return loss_fn(logits, labels)
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

        acc = self.accelerator
        model.eval()
        all_logits, all_labels = [], []
        with torch.inference_mode(), acc.autocast():
            for batch in loader:
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                labels = batch.pop("labels", None)
                logits = _logits(model(**batch)).float()
                if labels is not None:
                    logits, labels = acc.gather_for_metrics((logits, labels))
                    all_labels.append(labels)
                else:
                    logits = acc.gather_for_metrics(logits)
                all_logits.append(logits)
        logits = torch.cat(all_logits).cpu()
        labels = torch.cat(all_labels).cpu() if all_labels else None
        return logits, labels

    def loader(self, dataset: Any, collate: Any) -> Any:
        """An evaluation loader for ``dataset`` (prepared for distributed runs)."""
        dl = self._loader(
            dataset, collate, self.config.eval_batch_size or self.config.batch_size * 2, False
        )
        return self.accelerator.prepare(dl)

    def prepare_model(self, model: Any) -> Any:
        return self.accelerator.prepare(model)
