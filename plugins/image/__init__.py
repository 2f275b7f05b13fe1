"""Built-in image plugin: the image-classification task, timm models with offline pretrained
weights, timm preprocessing, albumentations / imgaug / timm / mixup-cutmix augmenters, image
validators, top-k accuracy and a per-class report.

Registered lazily: listing this plugin imports neither torch nor timm.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from tuneforge.hookspecs import Register
    from tuneforge.run import RunContext

_PKG = "tuneforge.plugins.image"


@hookimpl
def register_tasks(register: Register) -> None:
    register(
        "image-classification",
        f"{_PKG}.task:ImageClassificationTask",
        "Classify images: a folder tree root/<class>/* or a CSV/Parquet of (path, label)",
    )
    register(
        "image-regression",
        f"{_PKG}.regression:ImageRegressionTask",
        "Predict numeric target(s) per image from a CSV/Parquet of (path, targets)",
    )
    register(
        "image-multilabel",
        f"{_PKG}.multilabel:ImageMultiLabelTask",
        "Tag images with any number of labels from a CSV/Parquet of (path, labels)",
    )


@hookimpl
def register_models(register: Register) -> None:
    register(
        "timm",
        f"{_PKG}.timm_model:TimmModel",
        "Any timm architecture; offline pretrained weights (file or package), new head",
    )


@hookimpl
def register_tokenizers(register: Register) -> None:
    register(
        "timm-transforms",
        f"{_PKG}.transforms:TimmTransforms",
        "Resize/crop/normalise from the timm model's pretrained_cfg (overridable)",
    )


@hookimpl
def register_augmenters(register: Register) -> None:
    register(
        "albumentations",
        f"{_PKG}.augment:Albumentations",
        "An albumentations pipeline of named transforms (train split only)",
    )
    register(
        "imgaug", f"{_PKG}.augment:Imgaug", "An imgaug Sequential of named augmenters (train only)"
    )
    register(
        "timm-augment",
        f"{_PKG}.augment:TimmAugment",
        "timm training transform: random resized crop, flips, RandAugment, random erasing",
    )
    register(
        "mixup",
        f"{_PKG}.augment:MixupCutmix",
        "Mixup / cutmix of training batches with soft targets (timm Mixup)",
    )


@hookimpl
def register_validators(register: Register) -> None:
    register(
        "image-files",
        f"{_PKG}.checks:ImageFiles",
        "Unreadable, corrupt or truncated images, unsupported modes, images too small",
    )


@hookimpl
def register_metrics(register: Register) -> None:
    register("top5_accuracy", f"{_PKG}.checks:TopKAccuracy", "True class among the 5 top-scored")


@hookimpl
def on_run_end(run: RunContext, metrics: dict[str, Any], status: str) -> None:
    """Per-class precision/recall/F1 and the confusion matrix (CSV) of an image run's test split."""
    if status != "completed" or not str(run.task).startswith("image-"):
        return
    try:
        from tuneforge.plugins.image.checks import write_class_report

        write_class_report(Path(run.run_dir))
    except Exception as exc:  # never fail a finished run over a report
        print(
            f"tuneforge: warning: the per-class report could not be written ({exc})",
            file=sys.stderr,
            flush=True,
        )
