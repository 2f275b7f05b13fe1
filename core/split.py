"""Train/val/test split: seeded, stratified, duplicate groups kept inside one split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd


@dataclass
class Split:
    """Row labels (the data's index values) of each split, plus notes on what was decided."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "train": [int(i) for i in self.train],
            "val": [int(i) for i in self.val],
            "test": [int(i) for i in self.test],
            "notes": self.notes,
        }

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _two_way(
    ids: np.ndarray,
    strat: np.ndarray | None,
    test_frac: float,
    seed: int,
    notes: list[str],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n_test = max(1, int(round(len(ids) * test_frac)))
    if n_test >= len(ids):
        return ids, ids[:0]
    if strat is not None:
        try:
            if strat.ndim == 2:  # rows x labels (0/1): iterative multi-label stratification
                a, b = _multilabel_two_way(ids, strat, n_test, seed)
            else:
                a, b = train_test_split(ids, test_size=n_test, random_state=seed, stratify=strat)
            return np.asarray(a), np.asarray(b)
        except ValueError as exc:
            notes.append(f"{what}: not stratified ({exc})")
    a, b = train_test_split(ids, test_size=n_test, random_state=seed, shuffle=True)
    return np.asarray(a), np.asarray(b)


def _multilabel_two_way(
    ids: np.ndarray, labels: np.ndarray, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Iterative stratification (Sechidis et al., 2011) of ``ids`` by a 0/1 label matrix:
    about ``n_test`` ids on the second side, each label's share kept on both sides."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    a, b = next(splitter.split(np.zeros((len(ids), 1)), labels))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("iterative stratification left one side empty")
    return ids[np.sort(a)], ids[np.sort(b)]


def make_split(
    index: pd.Index,
    train: float,
    val: float,
    test: float,
    seed: int,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> Split:
    """Split rows ``index`` into train/val/test.

    :param strata: one stratum per row (class id, or target bin), or a 0/1 matrix (rows x
        labels) for multi-label data, split by iterative stratification; None for a plain
        shuffle.
    :param groups: one group key per row; rows sharing a key land in the same split.
    Strata with fewer than 3 groups cannot be spread over three splits: they stay in train,
    and a note says so. With a label matrix, each group is stratified as one example
    holding every label of its rows, and labels need no minimum count.
    """
    notes: list[str] = []
    rows = np.asarray(index)
    n = len(rows)
    group_ids = pd.factorize(pd.Series(groups if groups is not None else np.arange(n)))[0]
    n_groups = int(group_ids.max()) + 1 if n else 0
    # One stratum per group: the stratum of its first row.
    first = pd.Series(np.arange(n)).groupby(group_ids).first().to_numpy()
    g_strat = None if strata is None else np.asarray(strata)[first]
    if g_strat is not None and g_strat.ndim == 2:  # a group holds every label of its rows
        g_strat = pd.DataFrame(np.asarray(strata)).groupby(group_ids).max().to_numpy()
    gids = np.arange(n_groups)
    forced_train = np.zeros(n_groups, dtype=bool)
    if g_strat is not None and g_strat.ndim == 1:
        values, counts = np.unique(g_strat, return_counts=True)
        tiny = values[counts < 3]
        if len(tiny):
            forced_train = np.isin(g_strat, tiny)
            notes.append(
                f"{len(tiny)} strata with fewer than 3 groups kept in train only: "
                + ", ".join(map(str, tiny[:10].tolist()))
            )
    if groups is not None and n_groups < n:
        notes.append(f"{n - n_groups} duplicate rows kept in the split of their group")
    free = gids[~forced_train]
    strat_free = None if g_strat is None else g_strat[~forced_train]
    rest, test_g = _two_way(free, strat_free, test, seed, notes, "test split")
    strat_rest = None if g_strat is None else g_strat[rest]
    train_g, val_g = _two_way(rest, strat_rest, val / (train + val), seed + 1, notes, "val split")
    train_g = np.concatenate([train_g, gids[forced_train]])

    def to_rows(gs: np.ndarray) -> np.ndarray:
        return np.sort(rows[np.isin(group_ids, gs)])

    return Split(to_rows(train_g), to_rows(val_g), to_rows(test_g), notes)
