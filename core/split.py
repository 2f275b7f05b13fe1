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
    #: A given split (:func:`given_split`): where each split came from (a file, ``column
    #: split=<value>``, or ``carved from train (...)``); None when the split was made here.
    given: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "train": [int(i) for i in self.train],
            "val": [int(i) for i in self.val],
            "test": [int(i) for i in self.test],
            "notes": self.notes,
            "given": self.given,
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


def _group_strata(strata: np.ndarray | None, group_ids: np.ndarray) -> np.ndarray | None:
    """One stratum per duplicate group (``group_ids``: 0..G-1 per row): the stratum of its
    first row, or for a 0/1 label matrix every label of its rows."""
    if strata is None:
        return None
    s = np.asarray(strata)
    if s.ndim == 2:  # a group holds every label of its rows
        return pd.DataFrame(s).groupby(group_ids).max().to_numpy()
    first = pd.Series(np.arange(len(group_ids))).groupby(group_ids).first().to_numpy()
    return s[first]


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
    g_strat = _group_strata(strata, group_ids)
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


def _carve(
    rows: np.ndarray,
    frac: float,
    seed: int,
    strata: np.ndarray | None,
    groups: np.ndarray | None,
    notes: list[str],
    what: str,
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` split in two, about ``frac`` of their groups on the second side: stratified by
    ``strata`` (one per row, or a 0/1 label matrix), duplicate groups kept on one side, as in
    :func:`make_split`; strata with a single group stay on the first side (a note says so)."""
    n = len(rows)
    group_ids = pd.factorize(pd.Series(groups if groups is not None else np.arange(n)))[0]
    n_groups = int(group_ids.max()) + 1 if n else 0
    gids = np.arange(n_groups)
    g_strat = _group_strata(strata, group_ids)
    kept = np.zeros(n_groups, dtype=bool)
    if g_strat is not None and g_strat.ndim == 1:
        values, counts = np.unique(g_strat, return_counts=True)
        single = values[counts < 2]
        if len(single):
            kept = np.isin(g_strat, single)
            notes.append(
                f"{what}: {len(single)} strata with a single group kept in train only: "
                + ", ".join(map(str, single[:10].tolist()))
            )
    free = gids[~kept]
    strat_free = None if g_strat is None else g_strat[~kept]
    keep_g, out_g = _two_way(free, strat_free, frac, seed, notes, what)
    keep_g = np.concatenate([keep_g, gids[kept]])
    return (
        np.sort(rows[np.isin(group_ids, keep_g)]),
        np.sort(rows[np.isin(group_ids, out_g)]),
    )


def given_split(
    index: pd.Index,
    given: np.ndarray,
    sources: dict[str, str],
    train: float,
    val: float,
    test: float,
    seed: int,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> Split:
    """The split the data gives: ``given`` names each row's split (``"train"``, ``"val"``,
    ``"test"``), ``sources`` where each given split came from (for :attr:`Split.given`).

    A given split is kept as it is (the ``train``/``val``/``test`` fractions do not apply to
    it). A missing val (or test) split is carved from the given train rows like
    :func:`make_split` carves it (stratified by ``strata``, duplicate ``groups`` kept
    together, seeded): ``val / (train + val)`` of them (``test / (train + test)`` for test;
    both missing: :func:`make_split` of the train rows). Notes say what was carved.
    """
    rows = np.asarray(index)
    names = np.asarray(given, dtype=object)
    parts = {name: np.sort(rows[names == name]) for name in ("train", "val", "test")}
    where = {name: sources[name] for name in parts if len(parts[name])}
    notes = [
        "given split: "
        + ", ".join(f"{name} from {src}" for name, src in where.items())
        + "; the split.train/val/test fractions do not apply to given splits"
    ]
    missing = [name for name in ("val", "test") if not len(parts[name])]
    if missing:
        on_train = names == "train"
        sub_strata = None if strata is None else np.asarray(strata)[on_train]
        sub_groups = None if groups is None else np.asarray(groups)[on_train]
        carve_notes: list[str] = []
        if len(missing) == 2:
            made = make_split(
                rows[on_train], train, val, test, seed, strata=sub_strata, groups=sub_groups
            )
            carve_notes += made.notes
            parts = {"train": made.train, "val": made.val, "test": made.test}
            share = f"{val:g} and {test:g} of them"
        else:
            name = missing[0]
            frac = val / (train + val) if name == "val" else test / (train + test)
            parts["train"], parts[name] = _carve(
                rows[on_train],
                frac,
                seed + 1 if name == "val" else seed,
                sub_strata,
                sub_groups,
                carve_notes,
                f"{name} split",
            )
            share = f"{frac:.3g} of them (split.{name} / (split.train + split.{name}))"
        stratified = strata is not None and not any("not stratified" in n for n in carve_notes)
        how = f"{'stratified, ' if stratified else ''}seed {seed}"
        for name in missing:
            where[name] = f"carved from train ({how})"
        notes.append(
            f"no {' and no '.join(missing)} split given: carved from the given train rows, "
            f"{share} ({how}{', duplicates kept together' if groups is not None else ''})"
        )
        notes += carve_notes
    return Split(parts["train"], parts["val"], parts["test"], notes, given=where)


def _fold_of_group(
    n: int, g_strat: np.ndarray | None, k: int, seed: int, notes: list[str]
) -> np.ndarray:
    """Each of ``n`` groups' fold (0..k-1): stratified by ``g_strat`` (1-D strata, or a 0/1
    label matrix by iterative stratification), shuffled with ``seed``; a plain shuffle when
    the strata cannot be spread over ``k`` folds (a note says so)."""
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    fold = np.full(n, -1)
    x = np.zeros((n, 1))
    if g_strat is not None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if g_strat.ndim == 2:
                    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

                    splitter: Any = MultilabelStratifiedKFold(
                        n_splits=k, shuffle=True, random_state=seed
                    )
                else:
                    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
                for j, (_, held) in enumerate(splitter.split(x, g_strat)):
                    fold[held] = j
            for w in caught:  # e.g. a class with fewer examples than folds
                notes.append(f"folds: {str(w.message).strip()}")
            if (np.bincount(fold, minlength=k) > 0).all():
                return fold
            notes.append("folds: stratification left a fold empty; not stratified")
        except ValueError as exc:
            notes.append(f"folds: not stratified ({exc})")
    for j, (_, held) in enumerate(KFold(n_splits=k, shuffle=True, random_state=seed).split(x)):
        fold[held] = j
    return fold


def make_folds(
    index: pd.Index,
    k: int,
    seed: int,
    val_share: float,
    strata: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    holdout: np.ndarray | None = None,
) -> list[Split]:
    """K cross-validation splits of rows ``index``: fold ``j``'s rows are split ``j``'s test;
    its val is carved from the other folds (``val_share`` of them, stratified, seeded, as in
    :func:`make_split`) and train is the rest.

    :param strata: as for :func:`make_split` (1-D strata or a 0/1 label matrix); folds are
        stratified by group (``StratifiedKFold``, or iterative ``MultilabelStratifiedKFold``).
    :param groups: one group key per row; a group's rows share a fold and a split.
    :param holdout: row labels kept out of every fold (a given test split): in no split.
    Raises :class:`ValueError` naming the counts when there are too few groups for ``k``
    folds each with train, val and test rows.
    """
    notes: list[str] = []
    all_rows = np.asarray(index)
    keep = np.ones(len(all_rows), dtype=bool) if holdout is None else ~np.isin(all_rows, holdout)
    rows = all_rows[keep]
    n = len(rows)
    raw_groups = np.asarray(groups)[keep] if groups is not None else np.arange(n)
    group_ids = pd.factorize(pd.Series(raw_groups))[0]
    n_groups = int(group_ids.max()) + 1 if n else 0
    if n_groups < 2 * k:  # each fold's test, and its val and train from the others
        what = f"{n} rows in {n_groups} distinct examples (duplicates stay together)"
        raise ValueError(f"{what} are too few for {k} folds (at least {2 * k} are needed)")
    g_strat = _group_strata(None if strata is None else np.asarray(strata)[keep], group_ids)
    if groups is not None and n_groups < n:
        notes.append(f"{n - n_groups} duplicate rows kept in the fold of their group")
    fold = _fold_of_group(n_groups, g_strat, k, seed, notes)
    gids = np.arange(n_groups)
    out = []
    for j in range(k):
        rest = gids[fold != j]
        strat_rest = None if g_strat is None else g_strat[rest]
        fold_notes = list(notes)
        train_g, val_g = _two_way(rest, strat_rest, val_share, seed + 1, fold_notes, "val split")
        if len(train_g) == 0 or len(val_g) == 0:
            raise ValueError(
                f"fold {j + 1} of {k}: {len(rest)} distinct examples outside it are too few "
                "to carve a validation split from"
            )
        split = Split(
            np.sort(rows[np.isin(group_ids, train_g)]),
            np.sort(rows[np.isin(group_ids, val_g)]),
            np.sort(rows[fold[group_ids] == j]),
            fold_notes + [f"fold {j + 1} of {k}: its rows are this split's test"],
        )
        out.append(split)
    return out
