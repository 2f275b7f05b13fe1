"""``tuneforge validate --show-augmented N``: what the augmenters make of N training examples,
for text (both roles of a pair), images (PNGs in a preview folder, never in the run folder) and
tables (changed values in their column's units); bad N and bad folders get one-line errors.
And the augmenter contract: the built-in augmenters leave the example they get unchanged."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ok, one_line_error, run_cli
from tinymodels import make_texts, write_csv

# -- text -------------------------------------------------------------------------------------


def _shown_texts(out: str) -> list[tuple[int, str, str, str]]:
    """(row, role, before, after) for each example ``validate --show-augmented`` printed."""
    lines = out.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = re.match(r"^  row (\d+) (text|text_pair):\s+(.*)$", line)
        if m:
            after = re.match(r"^\s+augmented:\s+(.*)$", lines[i + 1])
            assert after, lines[i + 1]
            found.append((int(m.group(1)), m.group(2), m.group(3), after.group(1)))
    return found


def test_text_preview_shows_each_row_before_and_after_its_augmenters(project) -> None:
    cfg = project.config(augmenters=[{"name": "typo", "p": 1.0, "rate": 1.0}])
    out = ok(run_cli("validate", str(cfg), "--show-augmented", "4", cwd=project.root))
    assert "augmented: 4 of " in out and "through typo" in out
    shown = _shown_texts(out)
    assert len(shown) == 4 and all(role == "text" for _, role, _, _ in shown)
    data = pd.read_csv(project.data)
    for row, _, before, after in shown:
        assert before == repr(data.loc[row, "text"])  # the row's own text, before
        assert after != before and after != "(unchanged)"  # every word got a typo
    rows = [row for row, *_ in shown]
    assert rows == sorted(set(rows))
    # Seeded (trainer.seed): the same rows and the same variants every time.
    again = ok(run_cli("validate", str(cfg), "--show-augmented", "4", cwd=project.root))
    assert _shown_texts(again) == shown
    assert not (project.root / "runs").exists()  # validate writes nothing


def test_text_pair_preview_shows_both_roles(project) -> None:
    rows = [
        (a, b, la) for (a, la), (b, _) in zip(make_texts(80, 3), make_texts(80, 4), strict=True)
    ]
    write_csv(project.root / "pairs.csv", rows, header=("first", "second", "label"))
    cfg = project.config(
        data={"path": "pairs.csv", "columns": {"text": "first", "text_pair": "second"}},
        augmenters=[{"name": "word-swap", "p": 1.0, "fraction": 0.5}],
        validators=["schema"],
    )
    shown = _shown_texts(
        ok(run_cli("validate", str(cfg), "--show-augmented", "3", cwd=project.root))
    )
    assert [role for _, role, _, _ in shown] == ["text", "text_pair"] * 3
    data = pd.read_csv(project.root / "pairs.csv")
    for row, role, before, after in shown:
        column = "first" if role == "text" else "second"
        assert before == repr(data.loc[row, column])
        if after != "(unchanged)":  # swapped words: the same words in another order
            assert sorted(after.strip("'").split()) == sorted(before.strip("'").split())
    assert any(after != "(unchanged)" for *_, after in shown)


def test_bad_counts_and_folders_are_one_line_errors(project) -> None:
    cfg = project.config(augmenters=[{"name": "typo", "p": 1.0}])
    for bad in ("0", "-3"):
        line = one_line_error(run_cli("validate", str(cfg), "--show-augmented", bad))
        assert "--show-augmented: N must be at least 1" in line and f"got {bad}" in line
    full = project.root / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    line = one_line_error(
        run_cli("validate", str(cfg), "--show-augmented", "2", "--preview-dir", str(full))
    )
    assert "--preview-dir" in line and "not empty" in line
    assert (full / "keep.txt").read_text() == "mine"
    inside = project.root / "runs" / "run" / "previews"
    line = one_line_error(
        run_cli("validate", str(cfg), "--show-augmented", "2", "--preview-dir", str(inside))
    )
    assert "inside the run folder" in line
    line = one_line_error(run_cli("validate", str(cfg), "--preview-dir", str(project.root / "p")))
    assert "--show-augmented" in line
    assert not (project.root / "runs").exists() and not (project.root / "p").exists()


def test_a_huge_count_shows_every_training_row_with_a_note(project) -> None:
    cfg = project.config(augmenters=[{"name": "word-delete", "p": 0.5}])
    proc = run_cli("validate", str(cfg), "--show-augmented", "1000000000", "--json")
    report = json.loads(ok(proc))
    train = report["split"]["train"]
    aug = report["augmented"]
    assert len(aug["rows"]) == train == aug["train_rows"]
    assert any("1000000000" in n and f"has {train} rows" in n for n in aug["notes"])
    assert len(aug["lines"]) == 2 * train and aug["folder"] is None


def test_a_config_without_augmenters_says_so(project) -> None:
    out = ok(run_cli("validate", str(project.config()), "--show-augmented", "3"))
    assert "augmented: the config has no augmenters" in out


# -- images -----------------------------------------------------------------------------------


def test_image_preview_writes_side_by_side_pngs_into_the_preview_folder(tmp_path: Path) -> None:
    from PIL import Image
    from test_image import make_images, write_config

    make_images(tmp_path / "images", per_class=6, size=32)
    cfg = write_config(
        tmp_path / "config.yaml",
        augmenters=[
            {"name": "albumentations", "transforms": [{"name": "HorizontalFlip", "p": 1.0}]},
            {"name": "mixup"},
        ],
    )
    folder = tmp_path / "previews"
    out = ok(run_cli("validate", str(cfg), "--show-augmented", "3", "--preview-dir", str(folder)))
    assert "mixup/cutmix mixes whole training batches" in out
    assert f"3 files in {folder}" in out
    shown = re.findall(
        r"^  row (\d+): (row-\d+\.png) \(decoded 32x32 \| augmented 32x32 \| "
        r"model input 32x32\)$",
        out,
        flags=re.M,
    )
    assert len(shown) == 3
    assert sorted(p.name for p in folder.iterdir()) == sorted(name for _, name in shown)
    for _, name in shown:
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        assert pixels.shape == (128, 3 * 128 + 2 * 4, 3)  # three panels, 4x, 4-pixel gaps
        decoded, flipped = pixels[:, :128], pixels[:, 132:260]
        assert np.array_equal(flipped, decoded[:, ::-1])  # HorizontalFlip p=1
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "images", "previews"]

    # Without --preview-dir: a new temporary folder, printed.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = ok(run_cli("validate", str(cfg), "--show-augmented", "2", env={"TMPDIR": str(tmp)}))
    (made,) = tmp.iterdir()
    assert made.name.startswith("tuneforge-augmented-") and f"2 files in {made}" in out
    assert len(list(made.glob("row-*.png"))) == 2


# -- tables -----------------------------------------------------------------------------------


def test_tabular_preview_shows_changed_values_in_column_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame(
        {
            "a": rng.normal(50, 10, n).round(2),
            "b": rng.normal(0, 1, n).round(3),
            "c": rng.choice(["x", "y"], n),
        }
    )
    frame["label"] = np.where(frame["a"] > 50, "high", "low")
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = {
        "task": "tabular-classification",
        "data": {"path": "data.csv", "label": "label"},
        "model": {"name": "mlp", "hidden": 8, "layers": 1},
        "augmenters": [
            {"name": "gaussian-noise", "sigma": 0.5, "p": 1.0},
            {"name": "tabular-mixup", "p": 1.0, "alpha": 1.0},
        ],
        "output": {"dir": str(tmp_path / "runs" / "run")},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = ok(run_cli("validate", str(path), "--show-augmented", "5", cwd=tmp_path))
    lines = re.findall(r"^  row (\d+): (.*)$", out, flags=re.M)
    assert len(lines) == 5
    for row, text in lines:
        changes = dict(re.findall(r"(\w+) (-?[\d.e+-]+) -> -?[\d.e+-]+", text))
        assert set(changes) == {"a", "b"}  # noise and mixing: numeric features only
        for col, before in changes.items():  # before: the row's value, in its units
            assert float(before) == pytest.approx(frame.loc[int(row), col], rel=1e-3)

    mixed = re.findall(r"label (high|low) -> ([a-z]+ [\d.]+(?:, [a-z]+ [\d.]+)?)", out)
    assert mixed, out  # rows mixed with a row of the other class
    for before, after in mixed:
        probs = dict(pair.split() for pair in after.split(", "))
        assert float(probs.get(before, 0)) >= 0.5  # the row stays the dominant one
        assert sum(map(float, probs.values())) == pytest.approx(1.0, abs=0.02)
    assert not (tmp_path / "runs").exists()


# -- the augmenter contract: never change the example in place --------------------------------


def _read_only(value: np.ndarray) -> np.ndarray:
    value = value.copy()
    value.setflags(write=False)
    return value


@pytest.mark.parametrize(
    "name, params",
    [
        ("Albumentations", {"transforms": ["HorizontalFlip", {"name": "Rotate", "limit": 30}]}),
        ("Imgaug", {"augmenters": [{"Fliplr": {"p": 1.0}}, {"Affine": {"rotate": [-20, 20]}}]}),
    ],
)
def test_image_augmenters_take_read_only_arrays_and_return_new_ones(name: str, params) -> None:
    from tuneforge.plugins.image import augment

    cls = getattr(augment, name)
    aug = cls(cls.Config(**params))
    image = _read_only(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    example = {"image": image}
    kept = image.copy()
    rng = random.Random(0)
    outs = [aug(example, rng) for _ in range(5)]
    assert example == {"image": image} and np.array_equal(image, kept)
    assert any(not np.array_equal(o["image"], kept) for o in outs)


def test_text_and_tabular_augmenters_leave_their_input_unchanged() -> None:
    from tuneforge.plugins.tabular.augment import GaussianNoise, Mixup
    from tuneforge.plugins.text.augment import TokenNoise, Typo, WordDelete, WordInsert, WordSwap

    text = {"text": "one two three four five six", "text_pair": "seven eight nine ten"}
    for cls in (TokenNoise, Typo, WordDelete, WordInsert, WordSwap):
        aug = cls(cls.Config(p=1.0))
        copy = dict(text)
        out = aug(text, random.Random(1))
        assert text == copy and out is not text and out != text, cls.__name__

    row = {"num": _read_only(np.zeros(3, np.float32)), "cat": _read_only(np.ones(2, np.int64))}
    noisy = GaussianNoise(GaussianNoise.Config(p=1.0))(row, random.Random(0))
    assert not np.any(row["num"]) and np.any(noisy["num"])
    partner = {"num": _read_only(np.full(3, 4.0, np.float32)), "cat": row["cat"]}
    labelled = {**row, "label": _read_only(np.array([1.0, 0.0], np.float32))}
    mixed = Mixup(Mixup.Config(p=1.0))
    out = mixed.mix(
        labelled, {**partner, "label": np.array([0.0, 1.0], np.float32)}, random.Random(0)
    )
    assert not np.any(row["num"]) and np.all(partner["num"] == 4.0) and np.any(out["num"])
