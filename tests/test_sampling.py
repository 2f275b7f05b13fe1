"""Training samplers: deterministic from (seed, epoch), weighted, length-grouped, shardable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler

from tuneforge.config import TrainerConfig
from tuneforge.data import WeightedExamples
from tuneforge.errors import ConfigError
from tuneforge.sampling import (
    LengthGroupedBatchSampler,
    ShuffleSampler,
    WeightedSampler,
    check_prepared,
    dataset_lengths,
    find_sampler,
    set_epoch,
)


def test_shuffle_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a, b = ShuffleSampler(50, seed=3), ShuffleSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50))
    assert first == list(b) == list(a)  # iterating again does not move on by itself
    a.set_epoch(1)
    second = list(a)
    assert sorted(second) == list(range(50)) and second != first
    assert list(ShuffleSampler(50, seed=4)) != first
    b.load_state_dict(a.state_dict())
    assert list(b) == second  # the whole state is (seed, epoch): an exact resume recomputes it


def test_weighted_sampler_draws_classes_about_equally() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    sampler = WeightedSampler(weights, seed=0)
    drawn = np.array(list(sampler))
    assert len(drawn) == len(labels) == len(sampler)
    share = (labels[drawn] == 1).mean()
    assert 0.45 < share < 0.55  # 10% of the rows, half of the draws
    sampler.set_epoch(1)
    assert not np.array_equal(np.array(list(sampler)), drawn)
    sampler.set_epoch(0)
    assert np.array_equal(np.array(list(sampler)), drawn)
    assert len(list(WeightedSampler(weights, seed=0, num_samples=10))) == 10


@pytest.mark.parametrize("weights", [[], [0.0, 0.0], [1.0, float("nan")], [1.0, -1.0]])
def test_weighted_sampler_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        WeightedSampler(weights, seed=0)


def _padding(batches: list[list[int]], lengths: np.ndarray) -> int:
    return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)


def test_length_grouping_covers_every_row_once_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(2.0, 12.5, size=1000).astype(int) + 4, 4, 128)
    grouped = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1, megabatch_mult=8)
    batches = list(grouped)
    assert len(batches) == len(grouped) == 63
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 1000 % 16
    assert lengths[batches[0]].max() == lengths.max()  # an out-of-memory shows at step 1
    shuffled = list(BatchSampler(list(ShuffleSampler(1000, seed=1)), 16, drop_last=False))
    assert _padding(batches, lengths) < 0.25 * _padding(shuffled, lengths)
    grouped.set_epoch(1)
    again = list(grouped)
    assert again != batches and sorted(i for b in again for i in b) == list(range(1000))


def test_length_grouping_over_a_weighted_draw() -> None:
    lengths = np.arange(200) % 50 + 3
    base = WeightedSampler(np.where(np.arange(200) < 20, 9.0, 1.0), seed=5)
    grouped = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5, base=base)
    grouped.set_epoch(2)
    drawn = sorted(i for b in grouped for i in b)
    assert drawn == sorted(base.indices().tolist())  # same draw, only regrouped
    assert base.epoch == 2


def test_two_processes_see_the_one_process_batches_split_in_two() -> None:
    """World size 2, batch 8 shards what world size 1, batch 16 draws, step by step."""
    lengths = (np.arange(96) * 7) % 61 + 2
    one = LengthGroupedBatchSampler(lengths, batch_size=16, seed=2, world_size=1)
    two = LengthGroupedBatchSampler(lengths, batch_size=8, seed=2, world_size=2)
    ones, twos = list(one), list(two)
    for k, batch in enumerate(ones):  # Accelerate hands batch 2k to rank 0, 2k + 1 to rank 1
        assert sorted(batch) == sorted(twos[2 * k] + twos[2 * k + 1])


class _Rows:
    def __init__(self, n: int) -> None:
        self.n = n
        self.lengths = [i % 9 + 1 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"idx": i, "labels": i % 2}


def _collate(rows: list[dict[str, int]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def test_dataset_lengths_look_through_wrappers() -> None:
    rows = _Rows(12)
    wrapped = WeightedExamples(rows, np.ones(12, dtype=np.float32))
    assert dataset_lengths(wrapped).tolist() == rows.lengths
    assert dataset_lengths(torch.utils.data.Subset(rows, [3, 1])).tolist() == [4, 2]
    assert dataset_lengths([1, 2, 3]) is None


def test_trainer_loader_keeps_its_sampler_through_accelerate(tmp_path) -> None:
    from tuneforge.trainer import Trainer

    trainer = Trainer(TrainerConfig(batch_size=4, seed=9, group_by_length=True, device="cpu"))
    assert trainer.num_workers == 0  # auto on CPU
    dl = trainer._loader(_Rows(30), _collate, 4, True, np.ones(30))
    sampler = find_sampler(dl)
    assert isinstance(sampler, LengthGroupedBatchSampler)
    assert isinstance(sampler.base, WeightedSampler)
    prepared = trainer.accelerator.prepare(dl)
    check_prepared(prepared, sampler, 1)
    set_epoch(prepared, sampler, 3)
    got = [b["idx"].tolist() for b in prepared]
    assert got == list(sampler) and sampler.epoch == 3
    with pytest.raises(RuntimeError, match="sharded 0 times"):
        check_prepared(prepared, sampler, 2)  # a 2-process run must shard exactly once
    with pytest.raises(RuntimeError, match="replaced"):
        check_prepared(prepared, ShuffleSampler(30, 0), 1)
    plain = trainer._loader([{"labels": 0}] * 5, _collate, 2, False)
    assert find_sampler(plain) is None  # evaluation keeps its order


def test_group_by_length_needs_lengths() -> None:
    from tuneforge.trainer import Trainer

    trainer = Trainer(TrainerConfig(group_by_length=True, device="cpu"))
    with pytest.raises(ConfigError, match="trainer.group_by_length"):
        trainer._loader([{"labels": 0}] * 5, _collate, 2, True)


def test_speed_switches_reach_accelerate() -> None:
    from tuneforge.trainer import Trainer

    compiled = Trainer(TrainerConfig(compile=True, device="cpu")).accelerator
    assert compiled.state.dynamo_plugin.backend.value.lower() == "inductor"
    plain = Trainer(TrainerConfig(device="cpu", num_workers=2, prefetch_factor=3))
    assert plain.accelerator.state.dynamo_plugin.backend.value.lower() == "no"
    dl = plain._loader(_Rows(8), _collate, 4, True)
    assert dl.num_workers == 2 and dl.persistent_workers and dl.prefetch_factor == 3


def test_bad_trainer_speed_keys_are_one_line_errors(project) -> None:
    from conftest import one_line_error, run_cli

    cfg = project.config(trainer={"num_workers": -1})
    line = one_line_error(run_cli("run", str(cfg), cwd=project.root))
    assert "trainer.num_workers" in line
    cfg = project.config(trainer={"compile": "sometimes"})
    assert "trainer.compile" in one_line_error(run_cli("run", str(cfg), cwd=project.root))


# -- the last batch ----------------------------------------------------------------------------
def _sizes(batches) -> list[int]:
    return [len(b) for b in batches]


@pytest.mark.parametrize("kind", ["shuffle", "weighted", "length-grouped"])
def test_a_last_batch_of_one_example_is_merged_into_the_one_before(kind: str) -> None:
    from tuneforge.sampling import EpochBatchSampler

    def batches(n: int, world_size: int = 1) -> EpochBatchSampler:
        base = WeightedSampler(np.ones(n), seed=1) if kind == "weighted" else ShuffleSampler(n, 1)
        if kind == "length-grouped":
            lengths = np.arange(n) % 7 + 1
            return LengthGroupedBatchSampler(lengths, 16, 1, world_size=world_size, base=base)
        return EpochBatchSampler(base, 16, world_size=world_size)

    merged = batches(33)
    assert merged.merges_last and len(merged) == 2
    assert sorted(_sizes(merged)) == [16, 17]
    assert sorted(i for b in merged for i in b) == sorted(merged.base.indices().tolist())
    merged.set_epoch(1)
    assert sorted(_sizes(merged)) == [16, 17] and merged.base.epoch == 1
    for n, sizes in [(34, [2, 16, 16]), (32, [16, 16]), (17, [17]), (1, [1]), (16, [16])]:
        plain = batches(n)
        assert sorted(_sizes(plain)) == sizes and len(plain) == len(sizes)
        assert plain.merges_last == (n == 17)  # 17 = 16 + 1: one batch of 17
    # Under sharding, batches stay of batch_size: Accelerate's even_batches fills the last
    # step's with the epoch's first examples, so no process ever gets a batch of one.
    assert not batches(33, world_size=2).merges_last
    assert sorted(_sizes(batches(33, world_size=2))) == [1, 16, 16]


def test_two_processes_get_full_batches_when_n_is_one_more_than_a_multiple() -> None:
    from accelerate.data_loader import BatchSamplerShard

    from tuneforge.sampling import EpochBatchSampler

    for n in (33, 17, 49):
        sampler = EpochBatchSampler(ShuffleSampler(n, 4), 8, world_size=2)
        shards = [list(BatchSamplerShard(sampler, 2, rank, even_batches=True)) for rank in (0, 1)]
        assert all(len(b) == 8 for shard in shards for b in shard), (n, shards)
        assert len(shards[0]) == len(shards[1])
        seen = {i for shard in shards for b in shard for i in b}
        assert seen == set(range(n))  # every example, the padding drawn from the first ones
