from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.split import make_split


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(min_value=3, max_value=400),
    n_classes=st.integers(min_value=1, max_value=6),
    dup_rate=st.floats(min_value=0, max_value=0.5),
    seed=st.integers(0, 10_000),
)
def test_split_is_a_partition_that_keeps_groups_together(
    n: int, n_classes: int, dup_rate: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    index = pd.Index(rng.permutation(n * 3)[:n])  # arbitrary, non-contiguous row labels
    strata = rng.integers(0, n_classes, size=n)
    groups = np.arange(n)
    dups = rng.random(n) < dup_rate
    groups[dups] = rng.integers(0, max(1, n // 4), size=int(dups.sum()))
    # Duplicates share the label of their group (as exact duplicates do).
    first_label = pd.Series(strata).groupby(groups).transform("first").to_numpy()
    s = make_split(index, 0.7, 0.15, 0.15, seed, strata=first_label, groups=groups)
    all_rows = np.concatenate([s.train, s.val, s.test])
    assert sorted(all_rows.tolist()) == sorted(index.tolist())  # complete, no repeats
    where = {}
    for name in ("train", "val", "test"):
        for row in getattr(s, name):
            where[int(row)] = name
    pos = {int(r): i for i, r in enumerate(index)}
    for g in np.unique(groups):
        members = [int(index[i]) for i in np.flatnonzero(groups == g)]
        assert len({where[m] for m in members}) == 1, "a duplicate group straddles splits"
    assert len(pos) == n


def test_proportions_and_stratification() -> None:
    n = 2000
    strata = np.repeat([0, 1, 2], [1200, 600, 200])
    s = make_split(pd.RangeIndex(n), 0.7, 0.15, 0.15, 0, strata=strata)
    sizes = s.sizes()
    assert (
        abs(sizes["train"] - 1400) <= 2
        and abs(sizes["val"] - 300) <= 2
        and abs(sizes["test"] - 300) <= 2
    )
    for part in (s.train, s.val, s.test):
        share = np.bincount(strata[part], minlength=3) / len(part)
        assert np.allclose(share, [0.6, 0.3, 0.1], atol=0.01)


def test_seeded_and_reproducible() -> None:
    strata = np.arange(100) % 2
    a = make_split(pd.RangeIndex(100), 0.7, 0.15, 0.15, 3, strata=strata)
    b = make_split(pd.RangeIndex(100), 0.7, 0.15, 0.15, 3, strata=strata)
    c = make_split(pd.RangeIndex(100), 0.7, 0.15, 0.15, 4, strata=strata)
    assert (a.test == b.test).all() and not (a.test == c.test).all()


def test_tiny_classes_stay_in_train_with_a_note() -> None:
    strata = np.array([0] * 50 + [1] * 50 + [2] * 2)
    s = make_split(pd.RangeIndex(102), 0.7, 0.15, 0.15, 0, strata=strata)
    assert {100, 101} <= set(s.train.tolist())
    assert any("fewer than 3 groups" in note for note in s.notes)
