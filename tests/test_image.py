"""Image fine-tuning: folder/table data, timm models and weights, augmenters, validators,
metrics, checkpoints that timm loads, and one-line errors for bad input.

Tiny random-init timm models (``test_efficientnet``) on generated images: seconds each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tuneforge.components import ModelSpec

from conftest import SHARED_DATA, ok, one_line_error, run_cli

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


def _spec(n: int) -> ModelSpec:
    """A model spec of ``n`` classes (names "0".."n-1"), as the image tasks make one."""
    return ModelSpec("classification", n, [str(i) for i in range(n)], {"channels": 3})


def make_images(
    root: Path, per_class: int = 14, size: int = 24, mode: str = "RGB", seed: int = 0
) -> Path:
    """``root/<colour>/<i>.png``: noisy images of one colour per class (easy to learn)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(colour, 35, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root


def write_config(path: Path, **sections) -> Path:
    cfg = {
        "task": "image-classification",
        "data": {"path": "images"},
        "model": {"name": "timm", "architecture": "test_efficientnet"},
        "tokenizer": {"name": "timm-transforms", "input_size": 32},
        "trainer": {
            "epochs": 3,
            "batch_size": 8,
            "lr": 0.01,
            "monitor": "accuracy",
            "early_stopping_patience": None,
        },
        "output": {"dir": str(path.parent / "runs" / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# -- end to end -------------------------------------------------------------------------------


def test_folder_run_trains_saves_a_timm_checkpoint_and_predicts(tmp_path: Path) -> None:
    import timm
    import torch

    make_images(tmp_path / "images")
    cfg = write_config(
        tmp_path / "config.yaml",
        model={"freeze_epochs": 1, "drop_rate": 0.1},
        augmenters=[
            {"name": "albumentations", "transforms": ["HorizontalFlip", {"Rotate": {"limit": 10}}]},
            {"name": "mixup", "mixup_alpha": 0.2, "cutmix_alpha": 0.0},
        ],
        trainer={"epochs": 4},
    )
    out = ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    assert f"run folder: {run}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.8, metrics
    assert metrics["test"]["top5_accuracy"] == 1.0  # 3 classes: k is capped
    per_class = pd.read_csv(run / "per_class_test.csv")
    assert list(per_class["class"]) == ["blue", "green", "red"]
    assert per_class["support"].sum() == len(json.loads((run / "split.json").read_text())["test"])
    cm = pd.read_csv(run / "confusion_matrix_test.csv", index_col=0)
    assert cm.to_numpy().sum() == per_class["support"].sum()
    assert (run / "plots" / "confusion_matrix.png").is_file()

    # The checkpoint is timm's own format: plain timm loads it, both ways.
    ckpt = run / "checkpoint"
    plain = timm.create_model(
        "test_efficientnet", num_classes=3, checkpoint_path=str(ckpt / "model.safetensors")
    ).eval()
    local = timm.create_model(f"local-dir:{ckpt}", pretrained=True).eval()
    assert local.pretrained_cfg["input_size"] == [3, 32, 32] or tuple(
        local.pretrained_cfg["input_size"]
    ) == (3, 32, 32)
    assert json.loads((ckpt / "config.json").read_text())["label_names"] == [
        "blue",
        "green",
        "red",
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), local(x))

    # tuneforge predict on a folder of images and on a CSV of relative paths.
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "images" / "red")))
    preds = pd.read_csv(run / "predictions" / "red.csv")
    assert len(preds) == 14 and (preds["prediction"] == "red").mean() >= 0.8
    pd.DataFrame({"path": ["images/green/0.png", "images/blue/1.png"]}).to_csv(
        tmp_path / "new.csv", index=False
    )
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "new.csv")))
    preds = pd.read_csv(run / "predictions" / "new.csv")
    assert list(preds["prediction"]) == ["green", "blue"]


def test_csv_of_grayscale_images_with_relative_paths(tmp_path: Path) -> None:
    make_images(tmp_path / "data" / "img", per_class=12, mode="L")
    rows = [(f"img/{c}/{i}.png", c) for c in COLOURS for i in range(12)]  # relative to the table
    pd.DataFrame(rows, columns=["file", "colour"]).to_parquet(tmp_path / "data" / "table.parquet")
    cfg = write_config(
        tmp_path / "config.yaml",
        data={"path": "data/table.parquet", "columns": {"image": "file"}, "label": "colour"},
        augmenters=[
            {
                "name": "imgaug",
                "augmenters": [{"Fliplr": {"p": 0.5}}, {"Affine": {"rotate": [-8, 8]}}],
            }
        ],
        trainer={"epochs": 5, "num_workers": 2},  # imgaug (NumPy 2 shim) in loader workers
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    findings = json.loads((run / "findings.json").read_text())["findings"]
    assert not [f for f in findings if f["severity"] == "error"], findings
    # Gray images of three colours still differ in brightness: learnable.
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] >= 0.6


# -- model plugin -----------------------------------------------------------------------------


def _builder(**cfg):
    from tuneforge.plugins.image.timm_model import TimmModel

    return TimmModel(TimmModel.Config(**cfg))


def test_efficientnet_lite0_package_weights_recognise_a_photo() -> None:
    """The named weights package, remapped by order and shape, knows ImageNet: sklearn's
    sample photo of a Chinese temple is a palace / bell cote / church."""
    import torch
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    from tuneforge.plugins.image.transforms import TimmTransforms

    builder = _builder(architecture="efficientnet_lite0", weights="efficientnet-lite0")
    model = builder.build(_spec(1000)).eval()
    transforms = TimmTransforms()
    transforms.setup(builder.data_config())
    x = transforms.eval_transform()(Image.fromarray(load_sample_image("china.jpg")))
    with torch.no_grad():
        top = model(x[None]).softmax(-1)[0].topk(3).indices.tolist()
    names = [ImageNetInfo().index_to_description(i) for i in top]
    assert {"palace", "bell cote, bell cot", "church, church building"} & set(names), names
    assert names[0] in ("palace", "bell cote, bell cot", "church, church building"), names


def test_weights_by_name_with_a_new_head_and_shape_mismatch_errors(tmp_path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    from tuneforge.errors import ConfigError

    source = timm.create_model("test_efficientnet", num_classes=7)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = _builder(architecture="test_efficientnet", weights=str(tmp_path / "w.safetensors"))
    built = model.build(_spec(3)).model
    for key, value in built.state_dict().items():
        if key.startswith("classifier."):
            assert value.shape[0] == 3  # new head
        else:
            assert torch.equal(value, source.state_dict()[key]), key
    # Renamed keys (another naming scheme, same order/shapes) load by order and shape.
    renamed = {f"net.layer{i}": v for i, v in enumerate(source.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    built = _builder(architecture="test_efficientnet", weights=str(tmp_path / "renamed.pth"))
    stem = built.build(_spec(3)).model.conv_stem.weight
    assert torch.equal(stem, source.conv_stem.weight)
    # A narrower model's weights: the first mismatching tensor is named with both shapes,
    # when the config is read (before any run folder exists).
    narrow = timm.create_model("mobilenetv3_small_050", num_classes=7)
    save_file(narrow.state_dict(), str(tmp_path / "narrow.safetensors"))
    with pytest.raises(
        ConfigError,
        match=r"model\.weights: .*tensor 'blocks\.0\.0\.conv_pw\.weight' has shape \[8, 16, 1, 1\]",
    ):
        _builder(architecture="mobilenetv3_small_075", weights=str(tmp_path / "narrow.safetensors"))
    # Weights of a shallower model: the first tensor they lack is named.
    save_file(timm.create_model("efficientnet_b0").state_dict(), str(tmp_path / "b0.safetensors"))
    with pytest.raises(
        ConfigError, match=r"lacks 148 of the model's tensors \(first: 'blocks\.0\.1"
    ):
        _builder(architecture="efficientnet_b1", weights=str(tmp_path / "b0.safetensors"))
    # strict: false is partial loading: what matches is loaded.
    deeper = _builder(
        architecture="efficientnet_b1", weights=str(tmp_path / "b0.safetensors"), strict=False
    )
    assert torch.equal(deeper.build(_spec(3)).model.conv_stem.weight, timm_b0_stem(tmp_path))


def timm_b0_stem(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "b0.safetensors"))["conv_stem.weight"]


def test_grayscale_model_adapts_pretrained_stem() -> None:
    builder = _builder(architecture="efficientnet_lite0", weights="efficientnet-lite0", in_chans=1)
    model = builder.build(_spec(4)).model
    assert model.conv_stem.weight.shape[1] == 1
    assert builder.data_config()["input_size"][0] == 1


def test_freeze_epochs_trains_only_the_head_then_everything() -> None:
    import torch

    wrapper = _builder(architecture="test_efficientnet", freeze_epochs=1).build(_spec(3))
    opt = torch.optim.AdamW(wrapper.parameters(), lr=0.1, weight_decay=0.1)
    before = {k: v.clone() for k, v in wrapper.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])

    def step() -> None:
        wrapper.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(wrapper(pixel_values=x), y).backward()
        opt.step()

    wrapper.on_epoch_start(1)
    step()
    after = wrapper.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"model.classifier.weight", "model.classifier.bias"}, changed
    wrapper.on_epoch_start(2)
    step()
    assert not torch.equal(before["model.conv_stem.weight"], wrapper.model.conv_stem.weight)


# -- augmenters, metrics, label noise ---------------------------------------------------------


def test_augmenters_albumentations_imgaug_timm_and_errors() -> None:
    import random

    from tuneforge.plugins.image.augment import Albumentations, Imgaug, StepError, TimmAugment

    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    alb = Albumentations(Albumentations.Config(transforms=[{"name": "HorizontalFlip", "p": 1.0}]))
    assert np.array_equal(alb({"image": image}, random.Random(0))["image"], image[:, ::-1])
    gray = image[..., 0]
    iaa = Imgaug(
        Imgaug.Config(augmenters=[{"Fliplr": {"p": 1.0}}, {"Affine": {"rotate": [-5, 5]}}])
    )
    assert iaa({"image": gray}, random.Random(0))["image"].shape == gray.shape
    with pytest.raises(
        StepError,
        match=r"transforms\[0\]: unknown albumentations transform "
        r"'Rotat'; did you mean Rotate.*valid: .*HorizontalFlip",
    ):
        Albumentations(Albumentations.Config(transforms=["Rotat"]))
    with pytest.raises(
        StepError,
        match=r"transforms\[0\]\.limt: unknown parameter of Rotate; "
        r"did you mean 'limit'",
    ):
        Albumentations(Albumentations.Config(transforms=[{"name": "Rotate", "limt": 3}]))
    with pytest.raises(StepError, match=r"augmenters\[0\]: imgaug's ElasticTransformation fails"):
        Imgaug(Imgaug.Config(augmenters=[{"ElasticTransformation": {"alpha": 5, "sigma": 1}}]))
    with pytest.raises(StepError, match="auto_augment"):
        TimmAugment(TimmAugment.Config(auto_augment="bogus-m9"))


def test_mixup_batches_have_soft_targets_and_the_loss_takes_them() -> None:
    import torch

    from tuneforge.plugins.image.augment import MixupCutmix
    from tuneforge.plugins.image.task import ImageClassificationTask, ImageCollate

    params = MixupCutmix(MixupCutmix.Config(cutmix_alpha=0.0)).params(3)
    items = [
        {"pixel_values": torch.full((3, 4, 4), float(i)), "labels": i % 3, "mixup": params}
        for i in range(4)
    ]
    batch = ImageCollate(on_cuda=False)(items)
    assert batch["labels"].shape == (4, 3)
    assert torch.allclose(batch["labels"].sum(1), torch.ones(4))
    loss = ImageClassificationTask().loss_fn(None)
    value = loss(torch.randn(4, 3), batch["labels"])
    assert torch.isfinite(value)
    odd = ImageCollate(on_cuda=False)(items[:3])  # odd batch: smoothed targets, not mixed
    assert odd["labels"].shape == (3, 3)


def test_top5_accuracy() -> None:
    from tuneforge.plugins.image.checks import TopKAccuracy

    scores = np.eye(8)[[0, 1, 2, 3]] + np.linspace(0, 0.5, 8)  # class 7 scores high everywhere
    metric = TopKAccuracy()
    assert metric(np.array([0, 1, 2, 3]), scores.argmax(1), scores) == 1.0
    assert metric(np.array([2, 2, 2, 2]), scores.argmax(1), scores) == 0.25
    assert metric(np.array([6, 6, 6, 6]), scores.argmax(1), scores) == 1.0
    assert TopKAccuracy(TopKAccuracy.Config(k=1))(np.array([6, 1]), None, scores[:2]) == 0.5


def test_label_noise_inputs_feed_an_out_of_fold_classifier(tmp_path: Path) -> None:
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    from tuneforge.config import DataConfig
    from tuneforge.plugins.image.task import ImageClassificationTask

    make_images(tmp_path / "images", per_class=10, size=20)
    task = ImageClassificationTask()
    data = task.load(DataConfig(path=tmp_path / "images"), tmp_path)
    y = data.label_ids()
    for backbone in ("efficientnet-lite0", None):
        X, est, desc = task.label_noise_inputs(data, backbone=backbone)
        assert X.shape[0] == 30 and np.isfinite(X).all()
        assert ("efficientnet" in desc) == (backbone is not None)
        probs = cross_val_predict(clone(est), X, y, cv=3, method="predict_proba")
        assert (probs.argmax(1) == y).mean() >= 0.9


def test_duplicate_images_are_found_by_content_and_kept_in_one_split(tmp_path: Path) -> None:
    import shutil

    make_images(tmp_path / "images", per_class=12)
    for i in range(4):  # byte-identical copies under another name
        shutil.copy(tmp_path / "images/red/0.png", tmp_path / f"images/red/copy{i}.png")
    cfg = write_config(tmp_path / "config.yaml", trainer={"epochs": 1})
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    findings = json.loads((run / "findings.json").read_text())["findings"]
    dup = [f for f in findings if f["validator"] == "duplicates"]
    assert dup and dup[0]["count"] >= 4, findings
    leak = [f for f in findings if f["kind"] == "leakage"]
    assert leak and leak[0]["severity"] == "info", leak


# -- bad input: one line, exit 2, nothing written ---------------------------------------------


def _truncated_jpeg(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 20, 30)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:300])


BAD = {
    "empty class folder": (
        lambda root: (root / "images" / "purple").mkdir(),
        {},
        r"class folder 'purple' holds no files",
    ),
    "non-image file": (
        lambda root: (root / "images" / "red" / "notes.txt").write_text("hello"),
        {},
        r"image-files.*notes\.txt: not an image",
    ),
    "truncated jpeg": (
        lambda root: _truncated_jpeg(root / "images" / "red" / "cut.jpg"),
        {},
        r"image-files.*cut\.jpg: corrupt image",
    ),
    "missing csv": (lambda root: None, {"data": {"path": "nope.csv"}}, r"not found: .*nope\.csv"),
    "unknown timm model": (
        lambda root: None,
        {"model": {"name": "timm", "architecture": "efficientnet_lit0"}},
        r"model\.architecture: unknown timm model 'efficientnet_lit0'; did you mean: "
        r"efficientnet_lite0",
    ),
    "mismatched weights": (
        lambda root: __import__("safetensors.torch").torch.save_file(
            __import__("timm").create_model("mobilenetv3_small_050").state_dict(),
            str(root / "w.safetensors"),
        ),
        {
            "model": {
                "name": "timm",
                "architecture": "mobilenetv3_small_075",
                "weights": "w.safetensors",
            }
        },
        r"model\.weights: .*tensor 'blocks\.0\.0\.conv_pw\.weight' has shape \[8, 16, 1, 1\] "
        r"where the model needs \[16, 16, 1, 1\]",
    ),
    "unknown albumentations parameter": (
        lambda root: None,
        {"augmenters": [{"name": "albumentations", "transforms": [{"Rotate": {"limt": 5}}]}]},
        r"augmenters\[0\]: albumentations: transforms\[0\]\.limt: unknown parameter",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_input_is_one_line(tmp_path: Path, case: str) -> None:
    make_images(tmp_path / "images", per_class=6)
    setup, sections, pattern = BAD[case]
    setup(tmp_path)
    cfg = write_config(tmp_path / "config.yaml", **sections)
    line = one_line_error(run_cli("run", str(cfg), cwd=tmp_path))
    assert __import__("re").search(pattern, line), line
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "a failed run left a folder"


def test_a_class_with_one_image_is_reported_and_kept_in_train(tmp_path: Path) -> None:
    make_images(tmp_path / "images", per_class=10)
    make_images(tmp_path / "solo", per_class=1, seed=5)
    (tmp_path / "solo" / "red" / "0.png").rename(tmp_path / "images" / "purple.png")
    (tmp_path / "images" / "purple").mkdir()
    (tmp_path / "images" / "purple.png").rename(tmp_path / "images" / "purple" / "0.png")
    cfg = write_config(tmp_path / "config.yaml", trainer={"epochs": 1})
    proc = run_cli("run", str(cfg))
    ok(proc)
    findings = json.loads((tmp_path / "runs/run/findings.json").read_text())["findings"]
    small = [f for f in findings if f["kind"] == "small-class"]
    assert any("'purple' has only 1" in f["message"] for f in small), findings


# -- real data ---------------------------------------------------------------------------------


@pytest.mark.data
def test_mnist_grayscale_end_to_end(tmp_path: Path) -> None:
    """Real 28x28 grayscale MNIST PNGs through the whole pipeline (a 600-image subset)."""
    labels = pd.read_csv(SHARED_DATA / "mnist_test" / "labels.csv")
    png = SHARED_DATA / "mnist_test" / "png"
    files = sorted(png.glob("*/*.png"))[:: max(1, len(list(png.glob("*/*.png"))) // 600)][:600]
    assert len(labels) == 10000 and len(files) >= 500
    rows = [(str(f), f.parent.name) for f in files]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "mnist.csv", index=False)
    cfg = write_config(
        tmp_path / "config.yaml",
        data={"path": "mnist.csv"},
        validators=["image-files", "duplicates", "class-size"],
        trainer={"epochs": 3, "batch_size": 32, "lr": 0.003},
    )
    ok(run_cli("run", str(cfg)))
    metrics = json.loads((tmp_path / "runs/run/metrics.json").read_text())
    print(f"MNIST {len(files)} images: test {metrics['test']}")
    assert metrics["test"]["accuracy"] > 0.6, metrics  # chance is 0.1


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.heavy
def test_cifar10_pretrained_beats_scratch_shortened_cpu_run(tmp_path: Path) -> None:
    """A shortened CPU check of what the pretrained weights buy: EfficientNet-Lite0 fine-tuned
    on 1,000 CIFAR-10 train images (112 px, 2 epochs), pretrained vs from scratch, each
    evaluated with ``tuneforge predict`` on the first 1,000 test images (official order)."""
    cifar = SHARED_DATA / "cifar10"
    train = pd.read_csv(cifar / "train_labels.csv")
    train = train.groupby("label_name", group_keys=False).head(100)
    train = train.assign(path=[str(cifar / p) for p in train["path"]])
    train[["path", "label_name"]].to_csv(tmp_path / "train.csv", index=False)
    test = pd.read_csv(cifar / "test_labels.csv").sort_values("test_index").head(1000)
    pd.DataFrame({"path": [str(cifar / p) for p in test["path"]]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    accuracy = {}
    for name, weights in (("pretrained", "efficientnet-lite0"), ("scratch", None)):
        cfg = write_config(
            tmp_path / f"{name}.yaml",
            data={"path": "train.csv", "label": "label_name"},
            model={"architecture": "efficientnet_lite0", "weights": weights},
            tokenizer={"name": "timm-transforms", "input_size": 112},
            augmenters=[{"name": "timm-augment", "scale": [0.5, 1.0], "color_jitter": None}],
            trainer={"epochs": 2, "batch_size": 32, "lr": 1e-3, "num_workers": 2},
            output={"dir": str(tmp_path / "runs" / name)},
        )
        ok(run_cli("run", str(cfg)))
        ok(run_cli("predict", str(tmp_path / "runs" / name), "-i", str(tmp_path / "test.csv")))
        preds = pd.read_csv(tmp_path / "runs" / name / "predictions" / "test.csv")
        accuracy[name] = float(
            (preds["prediction"].to_numpy() == test["label_name"].to_numpy()).mean()
        )
    print(f"CIFAR-10 1,000 test images: {accuracy}")
    assert accuracy["pretrained"] > accuracy["scratch"] + 0.1, accuracy


# -- examples ----------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_image_folder_example_config_runs(tmp_path: Path) -> None:
    """The folder example as shipped (timm-augment + RandAugment, mixup/cutmix, class weights,
    freeze_epochs), on generated images with a tiny model so it takes seconds."""
    import shutil

    shutil.copy(EXAMPLES / "image-folder" / "config.yaml", tmp_path / "config.yaml")
    make_images(tmp_path / "images", per_class=10)
    sets = {
        "model.architecture": "test_efficientnet",
        "model.weights": "null",
        "model.drop_path_rate": "null",
        "tokenizer.input_size": "32",
        "trainer.epochs": "2",
        "trainer.num_workers": "2",  # decoding in worker processes
        "output.dir": str(tmp_path / "runs" / "example"),
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    ok(run_cli("run", str(tmp_path / "config.yaml"), *args))
    metrics = json.loads((tmp_path / "runs" / "example" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and np.isfinite(metrics["test"]["loss"])


@pytest.mark.slow
@pytest.mark.heavy
def test_digits_example_fine_tunes_pretrained_efficientnet(tmp_path: Path) -> None:
    """The digits example as documented: write the images, fine-tune, beat 85% on test."""
    import shutil
    import subprocess
    import sys

    shutil.copy(EXAMPLES / "digits" / "config.yaml", tmp_path / "config.yaml")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "digits" / "make_digits.py"), str(tmp_path / "images")],
        check=True,
    )
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1797
    ok(run_cli("run", str(tmp_path / "config.yaml"), cwd=tmp_path))
    metrics = json.loads((tmp_path / "runs" / "digits" / "metrics.json").read_text())
    print(f"digits example: test accuracy {metrics['test']['accuracy']:.3f}")  # docs/images.md
    assert metrics["test"]["accuracy"] >= 0.85, metrics


def test_image_regression_learns_brightness_and_predicts_in_target_units(tmp_path: Path) -> None:
    """image-regression on the regression plugin's helpers: standardised target, rmse/r2."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "img").mkdir()
    for i in range(100):
        level = float(rng.uniform(20, 235))
        pixels = np.clip(rng.normal(level, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", level * 10))  # target in its own units (0..2500)
    pd.DataFrame(rows, columns=["path", "brightness"]).to_csv(tmp_path / "t.csv", index=False)
    cfg = write_config(
        tmp_path / "config.yaml",
        task="image-regression",
        data={"path": "t.csv", "target": "brightness"},
        augmenters=[{"name": "albumentations", "transforms": ["HorizontalFlip"]}],
        trainer={"epochs": 10, "batch_size": 16, "lr": 0.002, "monitor": "rmse"},
    )
    ok(run_cli("run", str(cfg)))
    run = tmp_path / "runs" / "run"
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert test["r2"] > 0.5, test
    assert (run / "checkpoint" / "target_scaler.json").is_file()
    ok(run_cli("predict", str(run), "-i", str(tmp_path / "t.csv")))
    preds = pd.read_csv(run / "predictions" / "t.csv")
    assert np.corrcoef(preds["prediction"], preds["brightness"])[0, 1] > 0.7
    # A folder is refused: regression targets come from a table.
    bad = write_config(
        tmp_path / "bad.yaml",
        task="image-regression",
        data={"path": "img", "target": "y"},
        trainer={"monitor": "rmse"},
    )
    assert "data.path: image-regression needs a table" in one_line_error(run_cli("run", str(bad)))


def test_a_channels_last_model_saves_in_the_default_layout(tmp_path: Path) -> None:
    """On CUDA the model trains in channels_last; safetensors refuses such weights as they are."""
    import torch

    from tuneforge.plugins.image.timm_model import TimmModel

    builder = TimmModel(TimmModel.Config(architecture="resnet18"))
    model = builder.build(_spec(3))
    model.model.to(memory_format=torch.channels_last)
    model._channels_last = True  # what forward() does on the first CUDA batch
    builder.save(model, tmp_path)
    reloaded = builder.load(tmp_path)
    assert reloaded.label_names == ["0", "1", "2"]
    for (name, a), b in zip(
        model.model.state_dict().items(), reloaded.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert model.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_mixup_on_a_problem_without_classes_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    rows = [(f"img/{i}.png", float(i)) for i in range(6)]
    pd.DataFrame(rows, columns=["path", "level"]).to_csv(tmp_path / "t.csv", index=False)
    cfg = write_config(
        tmp_path / "config.yaml",
        task="image-regression",
        data={"path": "t.csv", "target": "level"},
        augmenters=[{"name": "mixup"}],
        trainer={"monitor": "rmse"},
    )
    err = one_line_error(run_cli("validate", str(cfg)))
    assert err == (
        "tuneforge: error: augmenters[0].name: 'mixup' supports classification problems; "
        "task 'image-regression' is regression"
    )
