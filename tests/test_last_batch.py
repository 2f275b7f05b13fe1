"""No run fails on the remainder of N / batch size, whatever the modality.

A train split of 1 more than a multiple of the batch size leaves a last batch of one example,
on which BatchNorm cannot train ("Expected more than 1 value per channel when training"). The
shared loader merges it into the batch before and says so once; through the real CLI, with
models that have BatchNorm layers.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_image import make_images
from test_image import write_config as image_config
from test_tabular import linear_table
from test_tabular import write_config as table_config

from conftest import ok, run_cli

MERGED = "the last training batch of 1 example is merged into the one before"


def train_steps(run: Path) -> list[float]:
    records = map(json.loads, (run / "history.jsonl").read_text().splitlines())
    return [r["value"] for r in records if r["split"] == "train" and r["name"] == "steps"]


def test_a_tabular_mlp_with_batchnorm_trains_on_33_rows_in_batches_of_16(tmp_path: Path) -> None:
    linear_table(47).to_csv(tmp_path / "data.csv", index=False)  # 33 / 7 / 7
    cfg = table_config(
        tmp_path,
        model={"name": "mlp", "hidden": 16, "layers": 2, "dropout": 0.0, "norm": "batch"},
        trainer={"epochs": 2, "batch_size": 16, "gradient_accumulation_steps": 2},
    )
    out = ok(run_cli("run", str(cfg), cwd=tmp_path))
    assert "split {'train': 33," in out, out
    assert out.count(f"{MERGED} (N = 33, batch size 16)") == 1, out
    # 2 loader batches (16 + 17) per epoch, accumulated 2 by 2: one optimizer step each.
    assert train_steps(tmp_path / "runs" / "run") == [1.0, 1.0]


def test_an_image_run_with_a_weighted_draw_trains_on_21_images_in_batches_of_10(
    tmp_path: Path,
) -> None:
    make_images(tmp_path / "images", per_class=10)  # 30 images: 21 / 5 / 4
    cfg = image_config(
        tmp_path / "config.yaml",
        balancer="weighted-sampler",
        trainer={"epochs": 1, "batch_size": 10},
    )
    out = ok(run_cli("run", str(cfg), cwd=tmp_path))
    assert "split {'train': 21," in out, out
    assert out.count(f"{MERGED} (N = 21, batch size 10)") == 1, out
    assert train_steps(tmp_path / "runs" / "run") == [2.0]
    assert json.loads((tmp_path / "runs" / "run" / "run.json").read_text())["status"] == (
        "completed"
    )
