"""Training samplers: deterministic from ``(seed, epoch)``, sharded per process by Accelerate.

Every sampler here yields the *global* order of one epoch, and every process computes the same
order from the same ``(seed, epoch)``. Under ``torchrun`` / ``accelerate launch`` the trainer's
``accelerator.prepare`` wraps the loader's batch sampler in Accelerate's ``BatchSamplerShard``,
which hands global batch ``k`` to process ``k % world_size`` (and pads the last step by cycling
back, so every process runs the same number of steps). So the processes draw disjoint parts of
one global draw ("draw globally, then shard"):

- the union of what the processes see in an epoch is exactly what a one-process run with the
  same seed sees, whatever the number of processes: a 2-GPU run trains on the same examples
  (weighted draw included) as a 1-GPU run, and a run resumed on another number of GPUs keeps
  its meaning;
- the cost is one global draw per process per epoch (``torch.multinomial`` / ``randperm`` over
  the training rows: milliseconds even for 10^6 rows).

The samplers hold no ``generator`` attribute on purpose: Accelerate would otherwise re-seed and
synchronise it; each ``__iter__`` builds its own ``torch.Generator`` from ``(seed, epoch)``.
:func:`check_prepared` verifies after ``prepare`` that Accelerate kept our sampler and shards it
exactly once.

The last batch: training batches come from :class:`EpochBatchSampler` (or its length-grouped
subclass). A last batch of a single example (N = 1 mod batch size) is merged into the batch
before it, so no run fails on it (a BatchNorm layer cannot train on one example: "Expected
more than 1 value per channel when training") and every example is still seen in every epoch
(dropping it would lose that example for the epoch, and the same one again when the order
repeats). That is for one process; under sharding Accelerate's ``even_batches`` already fills
the last step's batches to full size with the epoch's first examples, and it needs batches of
exactly ``batch_size`` there, so nothing is merged.

Exact resume: a sampler's whole state is ``(seed, epoch)``. To continue an epoch after ``k``
batches, set the epoch (``set_epoch``) and skip the first ``k`` batches of this process
(``accelerator.skip_first_batches(loader, k)``): the order is recomputed, not stored.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np


def process_rank() -> int:
    """This process's global rank under ``torchrun`` / ``accelerate launch`` (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)


def process_count() -> int:
    """The number of processes of the launch (1 when not launched for several processes)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """True on the process that writes the run folder and prints (global rank 0)."""
    return process_rank() == 0


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on both ``seed`` and ``epoch`` (no overlap between epochs)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])
    return int(state.generate_state(1, np.uint64)[0] & ((1 << 63) - 1))


class EpochSampler:
    """Base: a sampler whose order is a pure function of ``(seed, epoch)``."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (Accelerate calls it too)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def _rng(self) -> Any:
        import torch

        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))

    def indices(self) -> Any:
        """The epoch's global order as a 1-D ``torch.long`` tensor."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShuffleSampler(EpochSampler):
    """A fresh permutation of ``range(n)`` each epoch (``torch.randperm`` seeded by seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(n, seed)

    def indices(self) -> Any:
        import torch

        return torch.randperm(self.num_samples, generator=self._rng())


class WeightedSampler(EpochSampler):
    """Class-weighted draw with replacement: row ``i`` is drawn with probability ∝ ``weights[i]``.

    ``num_samples`` draws per epoch (default: one per row), the same global draw on every process
    (Accelerate shards its batches); the :class:`BalancePlan` of the ``weighted-sampler``
    balancer supplies the weights.
    """

    def __init__(
        self, weights: Sequence[float] | np.ndarray, seed: int, num_samples: int | None = None
    ):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError("weights must be a non-empty 1-D sequence")
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, >= 0 and not all 0")
        super().__init__(len(w) if num_samples is None else num_samples, seed)
        self.weights = w

    def indices(self) -> Any:
        import torch

        if self.num_samples == 0:
            return torch.empty(0, dtype=torch.long)
        w = torch.as_tensor(self.weights, dtype=torch.double)
        return torch.multinomial(w, self.num_samples, replacement=True, generator=self._rng())


def last_batch_merged(num_samples: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether an epoch's last batch, of one example, joins the one before it: for one process,
    when ``num_samples`` is 1 more than a multiple of ``batch_size`` (and more than a batch)."""
    return (
        world_size == 1
        and batch_size > 1
        and num_samples > batch_size
        and num_samples % batch_size == 1
    )


class EpochBatchSampler(EpochSampler):
    """Batches of ``batch_size`` consecutive examples of a base sampler's epoch order.

    The last batch may be smaller; a last batch of a single example is merged into the one
    before (one process only: see :func:`last_batch_merged` and the module's note on the last
    batch). Accelerate shards these batches like a torch ``BatchSampler`` (``batch_size``,
    ``drop_last``).
    """

    def __init__(self, base: EpochSampler, batch_size: int, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(len(base), base.seed)
        self.base = base
        self.batch_size = int(batch_size)
        self.world_size = max(1, int(world_size))
        self.drop_last = False

    @property
    def merges_last(self) -> bool:
        """True when the epoch's last batch of one example is merged into the one before."""
        return last_batch_merged(self.num_samples, self.batch_size, self.world_size)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self.base.load_state_dict(state)

    def _merge_last(self, batches: list[list[int]]) -> list[list[int]]:
        if self.merges_last and len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        return batches

    def batches(self) -> list[list[int]]:
        """The epoch's batches (global, before sharding)."""
        order = self.base.indices().tolist()
        step = self.batch_size
        return self._merge_last([order[i : i + step] for i in range(0, len(order), step)])

    def indices(self) -> Any:
        import torch

        return torch.as_tensor([i for b in self.batches() for i in b], dtype=torch.long)

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size) - int(self.merges_last)


class LengthGroupedBatchSampler(EpochBatchSampler):
    """Batches of similar lengths (dynamic padding wastes little), still random between epochs.

    As Hugging Face's ``LengthGroupedSampler``: the epoch's order (a shuffle, or a weighted
    draw when ``base`` is given) is cut into megabatches of ``megabatch_mult * batch_size *
    world_size`` examples, each sorted by length (longest first) and cut into batches; the
    megabatches come in random order, and the batch with the longest example goes first so an
    out-of-memory shows at the first step. Consecutive batches have similar lengths, so the
    ``world_size`` batches of one distributed step (Accelerate hands batch ``k`` to process
    ``k % world_size``) pad to similar shapes.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        world_size: int = 1,
        megabatch_mult: int = 50,
        base: EpochSampler | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        super().__init__(
            base if base is not None else ShuffleSampler(len(self.lengths), seed),
            batch_size,
            world_size,
        )
        self.seed = int(seed)
        self.megabatch = max(1, int(megabatch_mult)) * self.batch_size * self.world_size

    def batches(self) -> list[list[int]]:
        """The epoch's batches (global, before sharding)."""
        order = self.base.indices().numpy()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.megabatch):
            mega = order[start : start + self.megabatch]
            # stable sort: equal lengths keep the random order of the base sampler
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            batches += [
                mega[i : i + self.batch_size].tolist() for i in range(0, len(mega), self.batch_size)
            ]
        if len(batches) > 1:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            batches[0], batches[longest] = batches[longest], batches[0]
            # a partial batch stays last (Accelerate shards full batches, then the remainder)
            partial = [i for i, b in enumerate(batches) if len(b) < self.batch_size]
            if partial and partial[0] != len(batches) - 1:
                batches.append(batches.pop(partial[0]))
        return self._merge_last(batches)


def find_sampler(loader: Any) -> Any:
    """The :class:`EpochSampler` a (plain or prepared) loader draws from, or None."""
    seen: set[int] = set()
    todo = [loader]
    while todo:
        obj = todo.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, EpochSampler):
            return obj
        todo += [getattr(obj, a, None) for a in ("batch_sampler", "sampler", "base_dataloader")]
    return None


def shard_depth(loader: Any) -> int:
    """How many Accelerate ``BatchSamplerShard`` wrappers lie between ``loader`` and its sampler."""
    from accelerate.data_loader import BatchSamplerShard

    depth, obj, seen = 0, loader, set()
    while obj is not None and id(obj) not in seen and not isinstance(obj, EpochSampler):
        seen.add(id(obj))
        if isinstance(obj, BatchSamplerShard):
            depth += 1
        nxt = getattr(obj, "batch_sampler", None)
        if nxt is None or nxt is obj:
            nxt = getattr(obj, "sampler", None)
        obj = nxt
    return depth


def check_prepared(loader: Any, sampler: EpochSampler, num_processes: int) -> None:
    """Fail loudly if ``accelerator.prepare`` replaced ``sampler`` or sharded it wrongly."""
    found = find_sampler(loader)
    if found is not sampler:
        raise RuntimeError(
            f"accelerate replaced the training sampler ({type(sampler).__name__} -> "
            f"{type(found).__name__}); the trainer's sampling would be wrong"
        )
    want = 1 if num_processes > 1 else 0
    depth = shard_depth(loader)
    if depth != want:
        raise RuntimeError(
            f"the training sampler is sharded {depth} times over {num_processes} processes "
            f"(expected {want})"
        )


def set_epoch(loader: Any, sampler: EpochSampler | None, epoch: int) -> None:
    """Select ``epoch`` on a prepared loader (Accelerate's counter) and on our sampler."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if sampler is not None:
        sampler.set_epoch(epoch)


def dataset_lengths(dataset: Any) -> np.ndarray | None:
    """Per-example lengths (``dataset.lengths``), looking through wrappers; None if unknown."""
    inner = dataset
    for _ in range(4):
        lengths = getattr(inner, "lengths", None)
        if lengths is not None:
            lengths = np.asarray(lengths, dtype=np.int64)
            return lengths if len(lengths) == len(dataset) else None
        if hasattr(inner, "indices") and hasattr(inner, "dataset"):  # a torch Subset
            sub = dataset_lengths(inner.dataset)
            return None if sub is None else sub[np.asarray(inner.indices)]
        inner = getattr(inner, "dataset", None)  # a wrapper such as WeightedExamples
        if inner is None:
            return None
    return None
