"""The label-noise validator: confident learning (ours vs cleanlab), out-of-fold probabilities,
and the validator through the real CLI on generated data with labels flipped at known rows."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuneforge.data import TaskData
from tuneforge.errors import DataError
from tuneforge.plugins.label_noise import (
    METHODS,
    LabelNoise,
    LabelNoiseError,
    cleanlab_label_issues,
    confident_joint,
    find_label_issues,
    oof_probabilities,
)

from conftest import SHARED_DATA, one_line_error, run_cli
from tinymodels import CLASS_WORDS, make_texts, write_csv

CLASSES = sorted(CLASS_WORDS)


def synthetic(
    seed: int, n: int, k: int, noise: float = 0.1, margin: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities around the true class, and labels with ``noise`` of them flipped."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(margin, margin + 3.5, n)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = true.copy()
    flip = rng.random(n) < noise
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    return labels, probs


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


# -- our confident learning against cleanlab ------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("k", [2, 3, 10])
def test_same_ranked_rows_as_cleanlab_on_synthetic_probabilities(seed: int, k: int) -> None:
    pytest.importorskip("cleanlab")
    labels, probs = synthetic(seed, 300 + 53 * seed, k)
    if seed % 2:  # coarse probabilities: many exact ties in margins and rounding
        probs = np.round(probs, 2) + 1e-9
        probs /= probs.sum(axis=1, keepdims=True)
    for method in METHODS:
        ours = find_label_issues(labels, probs, method)
        theirs = cleanlab_label_issues(labels, probs, method)
        assert jaccard(ours, theirs) == 1.0, method
        np.testing.assert_array_equal(ours, theirs, err_msg=method)  # same rows, same order


def test_same_as_cleanlab_with_absent_and_single_row_classes() -> None:
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(5)
    labels, probs = synthetic(5, 400, 6, noise=0.2)
    labels[labels == 5] = 0  # a class nobody is labelled with
    labels[np.flatnonzero(labels == 4)[1:]] = 1  # a class with a single row
    one_hot = np.eye(6)[rng.integers(0, 6, 400)]  # saturated probabilities
    for p in (probs, one_hot):
        for method in METHODS:
            np.testing.assert_array_equal(
                find_label_issues(labels, p, method), cleanlab_label_issues(labels, p, method)
            )


def test_confident_joint_is_calibrated_to_label_counts() -> None:
    labels, probs = synthetic(1, 500, 4)
    joint = confident_joint(labels, probs)
    np.testing.assert_array_equal(joint.sum(axis=1), np.bincount(labels, minlength=4))
    assert (joint.diagonal() >= 1).all()


def test_flags_flipped_rows_first_and_never_the_argmax_label() -> None:
    labels, probs = synthetic(3, 2000, 4, noise=0.0, margin=2.5)
    true = labels.copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(2000, 100, replace=False)
    labels[flipped] = (labels[flipped] + 1) % 4
    ranked = find_label_issues(labels, probs)
    found = set(ranked.tolist())
    assert len(found & set(flipped.tolist())) / len(found) > 0.8
    assert len(found & set(flipped.tolist())) / len(flipped) > 0.8
    conf = probs[ranked, labels[ranked]]
    assert (np.diff(conf) >= 0).all()  # ranked by self-confidence, lowest first
    assert (probs[ranked].argmax(axis=1) != labels[ranked]).all()
    assert find_label_issues(true, np.eye(4)[true]).size == 0


def test_bad_arguments_are_clear() -> None:
    labels, probs = synthetic(0, 50, 3)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        find_label_issues(labels, probs, "nope")
    with pytest.raises(ValueError, match="one row each"):
        find_label_issues(labels[:10], probs)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        find_label_issues(labels, probs[:, :2])


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "labels_csv", "key"),
    [
        ("mnist", "mnist_test/labels.csv", "index"),
        ("cifar10", "cifar10/test_labels.csv", "test_index"),
    ],
)
def test_same_as_cleanlab_on_published_pred_probs(name: str, labels_csv: str, key: str) -> None:
    pytest.importorskip("cleanlab")
    table = pd.read_csv(SHARED_DATA / labels_csv).sort_values(key)
    assert table[key].tolist() == list(range(10_000))
    labels = table["label"].to_numpy()
    probs = np.load(SHARED_DATA / "pred_probs" / f"{name}_test_cv_pred_probs.npy")
    for method in METHODS:
        ours = find_label_issues(labels, probs, method)
        theirs = cleanlab_label_issues(labels, probs, method)
        np.testing.assert_array_equal(ours, theirs, err_msg=method)
    flagged = len(find_label_issues(labels, probs))
    # A small set: 15 published errors in MNIST test, 54 in CIFAR-10 test.
    assert flagged == {"mnist": 15, "cifar10": 284}[name]


# -- out-of-fold probabilities and the validator in process ---------------------------------


def text_data(rows: list[tuple[str, str]], source: str = "gen.csv") -> TaskData:
    frame = pd.DataFrame(rows, columns=["text", "label"])
    classes = sorted(frame["label"].unique())
    return TaskData(frame, {"text": "text"}, "label", classes, source, modalities={"text": "text"})


def flip(rows: list[tuple[str, str]], rate: float, seed: int) -> tuple[list, set[int]]:
    rng = random.Random(seed)
    picked = set(rng.sample(range(len(rows)), round(rate * len(rows))))
    out = [
        (t, rng.choice([c for c in CLASSES if c != y])) if i in picked else (t, y)
        for i, (t, y) in enumerate(rows)
    ]
    return out, picked


def test_oof_probabilities_are_out_of_fold_and_follow_class_order() -> None:
    rows, _ = flip(make_texts(150, seed=2), 0.1, seed=0)
    data = text_data(rows)
    probs = oof_probabilities(data, folds=3, seed=0)
    assert probs.shape == (150, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    accuracy = (probs.argmax(axis=1) == data.label_ids()).mean()
    assert 0.8 < accuracy < 0.95  # the flipped rows were not seen when predicting them
    np.testing.assert_array_equal(probs, oof_probabilities(data, folds=3, seed=0))


def test_oof_needs_text_inputs_and_enough_rows_per_class() -> None:
    data = text_data(make_texts(30, seed=0))
    image = TaskData(
        data.frame,
        {"image": "text"},
        "label",
        data.classes,
        "img.csv",
        modalities={"image": "image"},
    )
    with pytest.raises(
        LabelNoiseError,
        match=r"text inputs only so far \(these inputs are image\); give the validator pred_probs",
    ):
        oof_probabilities(image)
    small = text_data([("a b", "x"), ("c d", "y"), ("e f", "y")])
    with pytest.raises(
        DataError, match=r"cannot run 5-fold cross-validation on 3 rows \(every class"
    ):
        oof_probabilities(small)
    with pytest.raises(ValueError, match="class 'x' has only 1 row"):
        oof_probabilities(small, folds=2)


def test_down_weight_puts_self_confidence_weights_in_the_finding() -> None:
    rows, picked = flip(make_texts(200, seed=4), 0.1, seed=1)
    config = LabelNoise.Config(policy="down-weight", backend="tuneforge", max_report=3)
    [finding] = LabelNoise(config).check(text_data(rows))
    assert finding.kind == "label-issue" and finding.severity == "warning"
    weights = finding.weights
    assert set(weights) == set(finding.rows) and all(0 <= w < 0.5 for w in weights.values())
    assert list(weights.values()) == sorted(weights.values())
    assert len(finding.details["issues"]) == 3 and finding.details["backend"] == "tuneforge"
    assert "tuneforge backend, 5-fold TF-IDF + logistic regression" in finding.message


def test_pred_probs_rows_follow_the_file_after_other_validators_dropped_rows(tmp_path) -> None:
    rows = make_texts(40, seed=6)
    labels = np.array([CLASSES.index(y) for _, y in rows])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    probs[[7, 30]] = probs[[7, 30]][:, [1, 2, 0]]  # rows 7 and 30: confidently another class
    np.save(tmp_path / "p.npy", probs)
    data = text_data(rows)
    kept = data.subset(data.frame.index.difference([0, 1, 2, 39]))  # dropped upstream
    config = LabelNoise.Config(pred_probs=str(tmp_path / "p.npy"), backend="tuneforge")
    [finding] = LabelNoise(config).check(kept)
    assert sorted(finding.rows) == [7, 30]
    np.save(tmp_path / "p.npy", probs[:39])  # row 38 is there, but 39 rows for a 40-row file
    [finding] = LabelNoise(config).check(kept)
    assert sorted(finding.rows) == [7, 30]
    np.save(tmp_path / "p.npy", probs[:38])
    with pytest.raises(DataError, match=r"has shape \(38, 3\); expected \(at least 39, 3\)"):
        LabelNoise(config).check(kept)


def test_clean_data_reports_that_it_ran() -> None:
    rows = [(f"{w} {w} {w}", c) for c, ws in CLASS_WORDS.items() for w in ws for _ in range(2)]
    [finding] = LabelNoise().check(text_data(rows))
    assert finding.severity == "info" and finding.rows == []
    assert "no likely mislabelled rows among 48" in finding.message


# -- the real CLI -------------------------------------------------------------------------


def plugin_args(tmp_path: Path) -> list[str]:
    """``--plugin`` with a local file that re-exports the module, unless it is installed."""
    if any(ep.name == "label-noise" for ep in entry_points(group="tuneforge")):
        return []
    path = tmp_path / "ln_plugin.py"
    path.write_text(
        "from tuneforge.plugins.label_noise import *  # noqa\n"
        "from tuneforge.plugins.label_noise import register_validators  # noqa\n"
    )
    return ["--plugin", str(path)]


def label_noise_finding(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr
    [found] = [f for f in json.loads(proc.stdout)["findings"] if f["validator"] == "label-noise"]
    return found


def validate(project, tmp_path: Path, validators: list, data: str = "data.csv"):
    cfg = project.config(data={"path": data}, validators=validators)
    return run_cli("validate", str(cfg), "--json", *plugin_args(tmp_path))


@pytest.mark.parametrize("backend", ["cleanlab", "tuneforge"])
def test_cli_finds_flipped_labels_with_precision_and_recall(project, tmp_path, backend) -> None:
    if backend == "cleanlab":
        pytest.importorskip("cleanlab")
    rows, picked = flip(make_texts(400, seed=11), 0.10, seed=3)
    write_csv(tmp_path / "noisy.csv", rows)
    spec = {"name": "label-noise", "backend": backend, "max_report": 5}
    proc = validate(project, tmp_path, ["missing", spec], "noisy.csv")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    [found] = [f for f in report["findings"] if f["validator"] == "label-noise"]
    flagged = set(found["rows"])
    precision = len(flagged & picked) / len(flagged)
    recall = len(flagged & picked) / len(picked)
    # Here 1.00 and 0.90; required: 0.6 each, asserted with margin.
    assert precision >= 0.75 and recall >= 0.75, (precision, recall)
    assert found["action"] == "reported" and report["rows_kept"] == 400
    assert found["details"]["backend"].startswith(backend)
    top = found["details"]["issues"][0]
    assert top["row"] == found["rows"][0] and top["given"] == rows[top["row"]][1]
    assert (
        f"{len(flagged)} likely mislabelled rows (confident learning, {backend}" in found["message"]
    )


def test_cli_drop_policy_removes_flagged_rows(project, tmp_path) -> None:
    rows, _ = flip(make_texts(200, seed=12), 0.10, seed=4)
    write_csv(tmp_path / "noisy.csv", rows)
    spec = {"name": "label-noise", "policy": "drop", "folds": 3}
    proc = validate(project, tmp_path, [spec], "noisy.csv")
    found, report = label_noise_finding(proc), json.loads(proc.stdout)
    assert found["action"] == f"dropped {found['count']} rows"
    assert report["rows_kept"] == 200 - found["count"]


def test_cli_user_supplied_pred_probs(project, tmp_path) -> None:
    rows = make_texts(60, seed=13)
    write_csv(tmp_path / "small.csv", rows)
    labels = np.array([CLASSES.index(y) for _, y in rows])
    probs = np.full((60, 3), 0.05)
    probs[np.arange(60), labels] = 0.9
    wrong = [4, 17, 33]
    for i in wrong:  # confidently another class
        probs[i] = 0.05
        probs[i, (labels[i] + 1) % 3] = 0.9
    np.save(tmp_path / "probs.npy", probs)
    spec = {"name": "label-noise", "pred_probs": str(tmp_path / "probs.npy")}
    found = label_noise_finding(validate(project, tmp_path, [spec], "small.csv"))
    assert sorted(found["rows"]) == wrong
    assert f"probabilities from {tmp_path / 'probs.npy'}" in found["message"]


def test_cli_pred_probs_with_the_wrong_shape_names_the_file(project, tmp_path) -> None:
    write_csv(tmp_path / "small.csv", make_texts(60, seed=13))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((59, 3), 1 / 3))
    spec = {"name": "label-noise", "pred_probs": str(bad)}
    err = one_line_error(validate(project, tmp_path, [spec], "small.csv"))
    assert f"{bad}: label-noise pred_probs has shape (59, 3); expected (60, 3)" in err
    np.save(bad, np.full((60, 2), 0.5))
    err = one_line_error(validate(project, tmp_path, [spec], "small.csv"))
    assert f"{bad}: label-noise pred_probs has shape (60, 2); expected (rows, 3)" in err
    np.save(bad, np.full((60, 3), 0.5))
    err = one_line_error(validate(project, tmp_path, [spec], "small.csv"))
    assert f"{bad}: label-noise pred_probs row 0 is not a probability distribution" in err
    spec["pred_probs"] = str(tmp_path / "missing.npy")
    err = one_line_error(validate(project, tmp_path, [spec], "small.csv"))
    assert "validators[0]: label-noise: pred_probs file not found" in err
    assert "missing.npy" in err


def test_cli_fewer_rows_than_folds(project, tmp_path) -> None:
    with (tmp_path / "tiny.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("text", "label"), ("a b", "x"), ("c d", "y"), ("e f", "y")])
    err = one_line_error(validate(project, tmp_path, ["label-noise"], "tiny.csv"))
    assert "tiny.csv: label-noise: cannot run 5-fold cross-validation on 3 rows" in err


def test_cli_class_smaller_than_folds(project, tmp_path) -> None:
    rows = make_texts(60, seed=14)
    rows += [("late parcel lost", "lost"), ("parcel lost again", "lost"), ("lost box", "lost")]
    write_csv(tmp_path / "small.csv", rows)
    err = one_line_error(validate(project, tmp_path, ["label-noise"], "small.csv"))
    assert (
        "label-noise: cannot run 5-fold cross-validation: class 'lost' has only 3 rows "
        "(set folds: 3 or fewer, or drop the class)"
    ) in err
    proc = validate(project, tmp_path, [{"name": "label-noise", "folds": 3}], "small.csv")
    assert proc.returncode == 0, proc.stderr


def test_cli_unknown_option_names_the_key(project, tmp_path) -> None:
    err = one_line_error(validate(project, tmp_path, [{"name": "label-noise", "fold": 3}]))
    assert "validators[0].fold" in err


def test_listing_with_the_plugin_imports_neither_sklearn_nor_cleanlab(tmp_path) -> None:
    code = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        f"assert main(['components', 'validators', *{plugin_args(tmp_path)!r}]) == 0\n"
        "print('HEAVY', [m for m in ('sklearn', 'cleanlab', 'torch') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "label-noise" in out.stdout and "HEAVY []" in out.stdout, out.stdout
