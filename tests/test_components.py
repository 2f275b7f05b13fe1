"""Built-in validators, balancers, augmenters and metrics on generated data (in process)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from tuneforge.data import TaskData
from tuneforge.plugins.balancers import ClassWeights, NoBalance, Oversample, Undersample
from tuneforge.plugins.metrics import METRICS
from tuneforge.plugins.text.augment import TokenNoise
from tuneforge.plugins.text.preprocess import TextNormalize
from tuneforge.plugins.text.task import TextClassificationTask
from tuneforge.plugins.validators import (
    ClassSize,
    ConflictingLabels,
    Duplicates,
    EmptyText,
    Missing,
    Schema,
)


def text_data(texts: list, labels: list) -> TaskData:
    frame = pd.DataFrame({"text": texts, "label": labels})
    classes = sorted({x for x in labels if x is not None and x == x}, key=str)
    return TaskData(
        frame, {"text": "text"}, "label", classes, "gen.csv", modalities={"text": "text"}
    )


TASK = TextClassificationTask()


def test_duplicates_and_conflicts_use_normalised_text() -> None:
    data = text_data(
        ["Hello world", "hello, WORLD!", "other", "bye", "Bye"], ["a", "a", "b", "a", "b"]
    )
    [dup] = Duplicates().check(data, TASK)
    assert dup.rows == [0, 1] and dup.drop == [1]
    [conf] = ConflictingLabels().check(data, TASK)
    assert conf.rows == [3, 4] and "different labels" in conf.message


def test_missing_and_empty() -> None:
    data = text_data(["ok", None, "  ", "fine"], ["a", "b", "a", None])
    found = {(f.kind, tuple(f.rows)) for f in Missing().check(data)}
    assert found == {("missing-value", (1,)), ("missing-value", (3,))}
    [empty] = EmptyText().check(data)
    assert empty.rows == [2]


def test_schema_flags_non_text_and_mixed_labels() -> None:
    data = text_data(["ok", 5, "x"], ["a", 1, "a"])
    kinds = {f.kind for f in Schema().check(data)}
    assert kinds == {"non-text-value", "mixed-label-types"}


def test_class_size_reports_small_classes_and_imbalance() -> None:
    labels = ["big"] * 40 + ["tiny"] * 2
    data = text_data([f"t{i}" for i in range(42)], labels)
    findings = ClassSize(ClassSize.Config(min_count=5)).check(data)
    small = next(f for f in findings if f.kind == "small-class")
    assert small.rows == [40, 41] and small.details == {"class": "tiny", "count": 2}
    assert any(f.kind == "imbalance" for f in findings)


def _imbalanced() -> tuple[TaskData, np.ndarray]:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    data = text_data([f"t{i}" for i in range(100)], labels)
    return data, np.arange(100)


def test_oversample_and_undersample_reach_balance() -> None:
    data, rows = _imbalanced()
    rng = np.random.default_rng(0)
    plan = Oversample().plan(data, rows, rng)
    counts = np.bincount(data.label_ids()[plan.indices])
    assert counts.tolist() == [60, 60, 60]
    plan = Oversample(Oversample.Config(ratio=0.5)).plan(data, rows, rng)
    assert np.bincount(data.label_ids()[plan.indices]).tolist() == [60, 30, 30]
    plan = Undersample().plan(data, rows, rng)
    assert np.bincount(data.label_ids()[plan.indices]).tolist() == [10, 10, 10]
    assert len(set(plan.indices.tolist())) == 30  # without replacement
    assert NoBalance().plan(data, rows, rng).indices is None


def test_class_weights_are_sklearn_balanced() -> None:
    data, rows = _imbalanced()
    plan = ClassWeights().plan(data, rows, np.random.default_rng(0))
    assert np.allclose(plan.class_weights, [100 / (3 * 60), 100 / (3 * 30), 100 / (3 * 10)])
    assert np.allclose(
        ClassWeights(ClassWeights.Config(power=0)).plan(data, rows, None).class_weights, 1
    )


def test_balancers_only_see_the_rows_they_are_given() -> None:
    data, _ = _imbalanced()
    train_rows = np.arange(50)  # only class "a"
    plan = ClassWeights().plan(
        data.subset(data.frame.index[:100]), train_rows, np.random.default_rng(0)
    )
    assert plan.class_weights.tolist() == [1.0, 1.0, 1.0]


def test_token_noise_is_seeded_and_changes_text() -> None:
    aug = TokenNoise(TokenNoise.Config(p=1.0, delete=0.2, swaps=0.2))
    text = "one two three four five six seven eight nine ten"
    a = aug({"text": text}, random.Random(1))["text"]
    b = aug({"text": text}, random.Random(1))["text"]
    assert a == b and a != text
    assert set(a.split()) <= set(text.split())
    assert aug({"text": "too short"}, random.Random(1))["text"] == "too short"
    assert TokenNoise(TokenNoise.Config(p=0.0))({"text": text}, random.Random(1))["text"] == text
    with pytest.raises(ValueError, match="would do nothing"):
        TokenNoise.Config(delete=0, swaps=0)


def test_text_normalize() -> None:
    pre = TextNormalize(TextNormalize.Config(lowercase=True))
    assert pre("  Ｆｕｌｌ\u00a0Width   TEXT ") == "full width text"


def test_metrics_match_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    assert METRICS["f1_macro"]()(y_true, y_pred, None) == pytest.approx(
        f1_score(y_true, y_pred, average="macro")
    )
    assert METRICS["balanced_accuracy"]()(y_true, y_pred, None) == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )
    assert METRICS["accuracy"]()(y_true, y_true, None) == 1.0


def test_augmented_dataset_varies_per_access_and_plain_one_does_not(tiny_models) -> None:
    from tuneforge.plugins.text.hf import HFTokenizer

    tok = HFTokenizer(HFTokenizer.Config(checkpoint=str(tiny_models["bert"])))
    tok.setup(None)
    data = text_data(
        ["refund invoice charged payment card price vat coupon"] * 4, ["a", "a", "b", "b"]
    )
    aug = TokenNoise(TokenNoise.Config(p=1.0, delete=0.3))
    TASK.bind(tok, None, [])
    train = TASK.make_dataset(data, data.frame.index.to_numpy(), [aug], seed=0)
    val = TASK.make_dataset(data, data.frame.index.to_numpy(), [], seed=0)
    seen = {tuple(train[0]["input_ids"]) for _ in range(20)}
    assert len(seen) > 1
    assert len({tuple(val[0]["input_ids"]) for _ in range(5)}) == 1
    assert train[2]["labels"] == 1
