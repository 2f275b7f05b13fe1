"""The image-classification task: a folder tree (``root/<class>/*``) or a table of (path, label).

Images are decoded in the loader's workers (``trainer.num_workers``), converted to the channel
count the model expects (grayscale is repeated to RGB), augmented on the training split only,
and preprocessed with the model's timm transform.
"""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tuneforge.components import ModelSpec, StrictConfig, Task
from tuneforge.data import (
    TaskData,
    WorkerRandom,
    check_data_path,
    path_problem,
    read_table,
    require_columns,
    resolve_classes,
)
from tuneforge.errors import ConfigError, DataError, UserError
from tuneforge.plugins.problems import SingleLabelClassification

#: Modes that convert losslessly enough to L/RGB; others (e.g. 32-bit float "F") are refused.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I;16"}
)
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass
class ImageInfo:
    """What one file holds: content hash, and either (mode, width, height) or a problem."""

    sha1: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    problem: str = ""


def inspect_image(path: str) -> ImageInfo:
    """Hash the file's bytes and fully decode it (a truncated JPEG fails here, not in training)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    problem = path_problem(p)  # stat only: a FIFO is never opened, a device never read
    if problem:
        problem = "file not found" if problem == "not found" else problem
        return ImageInfo(sha1=f"missing:{path}", problem=problem)
    raw = p.read_bytes()
    info = ImageInfo(sha1=hashlib.sha1(raw).hexdigest())
    try:
        import io

        with Image.open(io.BytesIO(raw)) as img:
            info.mode, (info.width, info.height) = img.mode, img.size
            img.load()
    except UnidentifiedImageError:
        info.problem = "not an image file PIL can read"
    except (OSError, SyntaxError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        info.problem = f"corrupt image ({first})"
    return info


def open_image(path: str, channels: int) -> Any:
    """Decode ``path`` as an RGB (``channels`` 3) or grayscale (1) PIL image."""
    from PIL import Image

    problem = path_problem(path)  # before opening: a FIFO would block, a device never ends
    if problem:
        raise DataError(f"{path}: image file {problem}")
    try:
        with Image.open(path) as img:
            alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
                img.mode == "P" and "transparency" in img.info
            )
            if alpha:  # transparent pixels over white, as viewers show them
                rgba = img.convert("RGBA")
                img = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img.alpha_composite(rgba)
            return img.convert("RGB" if channels == 3 else "L")
    except (OSError, SyntaxError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot decode the image ({first})") from None


class ImageDataset:
    """Map-style dataset: decode -> augment (train) -> timm transform -> tensor.

    Runs in the loader's worker processes. Each worker reseeds its augmentation RNG from the
    worker seed so workers do not repeat each other's augmentations.
    """

    def __init__(
        self,
        paths: list[str],
        labels: np.ndarray | None,
        channels: int,
        transform: Any,
        augmenters: list[Any],
        mixup: tuple[Any, ...] | None,
        seed: int,
    ) -> None:
        self.paths, self.labels, self.channels = paths, labels, channels
        self.transform, self.augmenters, self.mixup = transform, augmenters, mixup
        self.seed = seed
        self._rngs = WorkerRandom(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def rng(self) -> random.Random:
        return self._rngs.get()

    def image(self, i: int) -> Any:
        """The decoded, augmented PIL image of example ``i``."""
        img = open_image(self.paths[i], self.channels)
        if self.augmenters:
            from PIL import Image

            rng = self.rng()
            example = {"image": np.asarray(img)}
            for aug in self.augmenters:
                example = aug(example, rng)
            img = Image.fromarray(np.ascontiguousarray(example["image"]))
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"pixel_values": self.transform(self.image(i))}
        if self.labels is not None:
            label = self.labels[i]  # a class id, or float target(s) for regression
            item["labels"] = int(label) if self.labels.dtype.kind in "iu" else label
            if self.mixup is not None:
                item["mixup"] = self.mixup
        return item


_MIXERS: dict[tuple[Any, ...], Any] = {}


def mixup_batch(x: Any, y: Any, params: tuple[Any, ...]) -> tuple[Any, Any]:
    """timm's ``Mixup`` (mixup/cutmix with soft targets) applied to one training batch."""
    import torch
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    mixer = _MIXERS.get(params)
    if mixer is None:
        mixer = _MIXERS[params] = Mixup(**dict(params))
    if x.shape[0] % 2:  # timm mixes a batch with its reverse: needs an even size
        target = mixup_target(y, mixer.num_classes, 1.0, mixer.label_smoothing)
        return x, target.to(torch.float32)
    return mixer(x, y)


class ImageCollate:
    """Stack images and labels; mixup/cutmix training batches; channels_last on CUDA."""

    def __init__(self, on_cuda: bool) -> None:
        self.on_cuda = on_cuda

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        x = torch.stack([f["pixel_values"] for f in features])
        batch: dict[str, Any] = {}
        if "labels" in features[0]:
            y = torch.as_tensor(np.stack([f["labels"] for f in features]))
            if "mixup" in features[0]:
                x, y = mixup_batch(x, y, features[0]["mixup"])
            batch["labels"] = y
        if self.on_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        batch["pixel_values"] = x
        return batch


#: The transform's timm data config in a checkpoint (input size, mean, std, crop).
TRANSFORM_FILE = "image_transform.json"


def _soft_target_loss(class_weights: np.ndarray | None, focal_gamma: float | None) -> Any:
    """Cross-entropy (or focal) on class ids, and soft-target cross-entropy on mixed targets."""
    import torch

    from tuneforge.plugins.losses import classification_loss

    hard = classification_loss(class_weights, focal_gamma)

    class ImageLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hard = hard
            self.reduction = "mean"

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if target.ndim == 2 and not isinstance(self.hard, torch.nn.CrossEntropyLoss):
                # Soft mixup/cutmix targets with the focal loss: soft-target cross-entropy.
                per_row = torch.sum(-target * torch.log_softmax(logits, dim=-1), dim=-1)
                return per_row if self.reduction == "none" else per_row.mean()
            # CrossEntropyLoss takes class ids and class probabilities (soft targets) alike.
            reduction, self.hard.reduction = self.hard.reduction, self.reduction
            try:
                return self.hard(logits, target)
            finally:
                self.hard.reduction = reduction

    return ImageLoss()


class ImageTask(Task):
    """The image modality, for any problem kind: image files (a folder tree or a table of
    paths), decoded, augmented (train) and transformed by the run's ``tokenizer``
    (``timm-transforms``). A problem kind (a base listed first) provides
    :meth:`encode_labels` and :meth:`output_names`; the model is built with
    ``spec.inputs = {"channels", "base_dir", "data_config"}`` (the transform's timm data
    config)."""

    roles: ClassVar[dict[str, str]] = {"image": "image"}

    class Config(StrictConfig):
        pass

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.base_dir: Path | None = None
        self._info: dict[str, ImageInfo] = {}
        self._features: Any = None  # frozen_features' cache (plugins/image/features.py)

    # -- loading --------------------------------------------------------------------------
    def _column(self, data_config: Any) -> str:
        for role in data_config.columns:
            if role not in self.roles:
                raise ConfigError(
                    f"data.columns.{role}",
                    f"unknown role; {self.name} uses: {', '.join(self.roles)}",
                )
        return data_config.columns.get("image", "path")

    @staticmethod
    def _scan_folder(root: Path, labelled: bool = True) -> pd.DataFrame:
        """``root/<class>/**`` -> (image, label) rows; hidden files are skipped."""

        def visible(p: Path) -> bool:
            return not any(part.startswith(".") for part in p.relative_to(root).parts)

        def files_in(folder: Path) -> list[Path]:
            """Regular files under ``folder``; a FIFO, device, socket or broken link is refused."""
            found = []
            for p in sorted(folder.rglob("*")):
                if not visible(p):
                    continue
                problem = path_problem(p, folder_ok=True)
                if problem:
                    raise DataError(
                        f"{p}: {problem} (inside the image folder {root}); remove it or move it out"
                    )
                if not p.is_dir():
                    found.append(p)
            return found

        if not labelled:
            return pd.DataFrame({"image": [str(p) for p in files_in(root)]})
        rows: list[tuple[str, str]] = []
        classes = sorted(p for p in root.iterdir() if p.is_dir() and visible(p))
        if not classes:
            raise DataError(
                f"{root}: no class folders; an image folder dataset is root/<class>/<image files>"
            )
        for folder in classes:
            files = files_in(folder)
            if not files:
                raise DataError(
                    f"{folder}: class folder {folder.name!r} holds no files; add images or remove it"
                )
            rows += [(str(p), folder.name) for p in files]
        return pd.DataFrame(rows, columns=["image", "label"])

    def _read(self, path: Path, data_config: Any, labelled: bool) -> tuple[pd.DataFrame, str]:
        if check_data_path(path, "data file or folder", folder_ok=True):
            if data_config.columns:
                raise ConfigError("data.columns", "a folder dataset has no columns: remove it")
            if labelled and data_config.label not in (None, "label"):
                raise ConfigError(
                    "data.label", "a folder dataset takes classes from folder names: remove it"
                )
            return self._scan_folder(path, labelled), "image"
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return pd.DataFrame({"image": [str(path)]}), "image"
        frame = read_table(
            path, "auto" if not labelled else data_config.format, data_config.read_options
        )
        col = self._column(data_config)
        require_columns(frame, {"data.columns.image": col}, path)
        blank = frame.index[frame[col].isna() | (frame[col].astype(str).str.strip() == "")]
        if len(blank):
            raise DataError(f"{path}: row {int(blank[0])}: column {col!r} (image path) is empty")
        base = path.parent
        frame[col] = [
            str(p if (p := Path(str(v)).expanduser()).is_absolute() else (base / p))
            for v in frame[col]
        ]
        return frame, col

    def task_data(
        self, frame: pd.DataFrame, column: str, target: Any, classes: Any, path: Path
    ) -> TaskData:
        """The loaded data of an image task: ``column`` holds the image paths."""
        return TaskData(
            frame=frame,
            inputs={"image": column},
            target=target,
            classes=classes,
            source=str(path),
            problem=self.problem,
            modalities={"image": "image"},
        )

    def classification_defaults(self) -> dict[str, Any]:
        """The validators, preprocessing and model the classification tasks of this modality
        (single- and multi-label) use when the config names none."""
        return {
            "validators": [
                "image-files",
                "missing",
                "duplicates",
                "conflicting-labels",
                "class-size",
            ],
            "tokenizer": {"name": "timm-transforms"},
            "model": {"name": "timm"},
        }

    def load_inputs(self, path: Path, data_config: Any) -> pd.DataFrame:
        """Images to predict on: a folder (all files, recursively), one image, or a table."""
        frame, col = self._read(path, data_config, False)
        if col != "image":
            frame = frame.rename(columns={col: "image"}) if "image" not in frame else frame
        return frame

    # -- image facts (cached per file) ------------------------------------------------------
    def image_info(self, paths: list[str]) -> list[ImageInfo]:
        """:func:`inspect_image` for each path, in parallel threads, cached by path."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._info]
        if todo:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for p, info in zip(todo, pool.map(inspect_image, todo), strict=True):
                    self._info[p] = info
        return [self._info[p] for p in paths]

    def content_keys(self, data: TaskData) -> pd.Series:
        """SHA-1 of each file's bytes: byte-identical images are duplicates (kept in one split)."""
        paths = data.frame[data.inputs["image"]].astype(str).tolist()
        return pd.Series([i.sha1 for i in self.image_info(paths)], index=data.frame.index)

    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows`` (the problem kind's encoding)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    def output_names(self, data: TaskData) -> list[str]:
        """The model's outputs, in order (the problem kind's classes, labels or targets)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    # -- training -------------------------------------------------------------------------
    def prepare(self) -> None:
        """The transform from the model's preprocessing defaults (timm's data config)."""
        from tuneforge.plugins.image.timm_model import TimmModel
        from tuneforge.plugins.image.transforms import TimmTransforms

        if not isinstance(self.tokenizer, TimmTransforms):
            raise ConfigError("tokenizer", f"{self.name} needs an image transform: timm-transforms")
        if isinstance(self.model_builder, TimmModel):
            if self.base_dir is not None:
                self.model_builder.base_dir = self.base_dir
            defaults = self.model_builder.data_config()
        else:  # another library's model: timm's ImageNet defaults, overridable in tokenizer:
            from timm.data import resolve_data_config

            defaults = resolve_data_config({})
        self.tokenizer.setup(defaults)

    def _split_augmenters(self, augmenters: list[Any], data: TaskData) -> tuple:
        pixel = [a for a in augmenters if not getattr(a, "replaces_transform", False)]
        pixel = [a for a in pixel if not getattr(a, "batch_level", False)]
        timm_aug = [a for a in augmenters if getattr(a, "replaces_transform", False)]
        mixers = [a for a in augmenters if getattr(a, "batch_level", False)]
        if mixers and self.problem != "classification":
            raise ConfigError(
                "augmenters", f"mixup/cutmix mixes class labels: not for {self.problem}"
            )
        transform = (
            self.tokenizer.train_transform(timm_aug[-1].options())
            if timm_aug
            else self.tokenizer.eval_transform()
        )
        mixup = mixers[-1].params(len(data.classes or [])) if mixers else None
        return pixel, transform, mixup

    def make_dataset(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int
    ) -> ImageDataset:
        sub = data.subset(rows)
        paths = sub.frame[data.inputs["image"]].astype(str).tolist()
        pixel, transform, mixup = self._split_augmenters(augmenters, data)
        labels = self.encode_labels(data, rows)
        return ImageDataset(paths, labels, self.tokenizer.channels, transform, pixel, mixup, seed)

    def collate_fn(self, on_cuda: bool) -> ImageCollate:
        return ImageCollate(on_cuda)

    def frozen_features(self, data: TaskData, rows: np.ndarray) -> np.ndarray | None:
        """Pooled features of the model's pretrained timm backbone (``model.weights``; no
        classifier) on the evaluation transform, cached per row; None when the model is not
        a timm model with pretrained weights."""
        from tuneforge.plugins.image.features import FeatureCache

        if self._features is None:
            self._features = FeatureCache()
        paths = data.frame.loc[rows, data.inputs["image"]].astype(str).tolist()
        return self._features.features(self, rows, paths)

    def build_model(self, data: TaskData) -> Any:
        names = self.output_names(data)
        inputs = {
            "channels": self.tokenizer.channels,
            "base_dir": self.base_dir,
            "data_config": dict(self.tokenizer.data_config),
        }
        return self.model_builder.build(ModelSpec(self.problem, len(names), names, inputs))

    # -- artifacts ------------------------------------------------------------------------
    def save_artifacts(self, model: Any, folder: Path) -> None:
        """The model through its builder, and the transform's data config
        (``image_transform.json``), which :meth:`load_artifacts` restores."""
        import json

        self.model_builder.save(model, folder)
        cfg = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.tokenizer.data_config.items()
        }
        (folder / TRANSFORM_FILE).write_text(json.dumps(cfg, indent=2))

    def load_artifacts(self, folder: Path) -> Any:
        import json

        model = self.model_builder.load(folder)
        path = folder / TRANSFORM_FILE
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{folder}: not an image checkpoint (no {TRANSFORM_FILE})") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable ({type(exc).__name__})") from None
        if self.tokenizer is not None:
            self.tokenizer.data_config = {
                k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
            }
        return model

    def predict_dataset(self, frame: pd.DataFrame, data_config: Any) -> ImageDataset:
        paths = frame["image"].astype(str).tolist()
        bad = [
            (i, p)
            for i, (p, info) in enumerate(zip(paths, self.image_info(paths), strict=True))
            if info.problem
        ]
        if bad:
            i, p = bad[0]
            raise DataError(f"{p}: {self._info[p].problem} (input row {i}; {len(bad)} bad in all)")
        return ImageDataset(
            paths, None, self.tokenizer.channels, self.tokenizer.eval_transform(), [], None, 0
        )

    # -- explanations -----------------------------------------------------------------------
    def explain(self, model: Any, frame: pd.DataFrame, data_config: Any, options: Any) -> Any:
        """Grad-CAM heatmaps on the model's last convolutional stage for the first
        ``options.rows`` images (:mod:`tuneforge.plugins.image.explain`); ``frame`` holds the
        paths in ``image`` (:meth:`load_inputs`) or in the training data's column."""
        from tuneforge.plugins.image.explain import explain_images

        if "image" not in frame.columns:  # the training data's rows (the run end's test split)
            frame = frame.rename(columns={self._column(data_config): "image"})
        return explain_images(self, model, frame, data_config, options)

    # -- augmentation preview ---------------------------------------------------------------
    def preview_augmented(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int, folder: Path
    ) -> list[str]:
        """One PNG per example in ``folder`` (``row-<row>.png``), three panels at one height:
        the decoded image, the image after the pixel augmenters (albumentations, imgaug), and
        the model's input (the training transform's output, timm-augment's random crops and
        flips included, un-normalised). Mixup/cutmix mixes whole batches in the collate
        function: it is named, not drawn."""
        import random

        import torch

        dataset = self.make_dataset(data, rows, augmenters, seed)
        if not isinstance(dataset, ImageDataset):  # a subclass with a dataset of its own
            return super().preview_augmented(data, rows, augmenters, seed, folder)
        random.seed(seed)  # timm's training transform draws from the global generators
        torch.manual_seed(seed)
        lines = []
        if dataset.mixup is not None:
            lines.append(
                "mixup/cutmix mixes whole training batches (in the collate function): not drawn"
            )
        mean, std = self.tokenizer.data_config["mean"], self.tokenizer.data_config["std"]
        for i, row in enumerate(rows):
            panels = [open_image(dataset.paths[i], dataset.channels)]
            panels.append(dataset.image(i))
            panels.append(self._picture(dataset.transform(panels[1]), mean, std))
            name = f"row-{int(row)}.png"
            self._side_by_side(panels).save(folder / name)
            sizes = " | ".join(
                f"{what} {p.width}x{p.height}"
                for what, p in zip(("decoded", "augmented", "model input"), panels, strict=True)
            )
            lines.append(f"row {int(row)}: {name} ({sizes})")
        return lines

    @staticmethod
    def _picture(pixels: Any, mean: Any, std: Any) -> Any:
        """A normalised ``channels x height x width`` tensor back to a PIL image."""
        from PIL import Image

        x = pixels.detach().float().cpu().numpy()
        m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        x = np.clip((x * s + m) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(x[0]) if x.shape[0] == 1 else Image.fromarray(x.transpose(1, 2, 0))

    @staticmethod
    def _side_by_side(panels: list[Any], gap: int = 4) -> Any:
        """``panels`` scaled to one height (128 to 512 pixels) on a white RGB canvas."""
        from PIL import Image

        height = min(512, max(128, *(p.height for p in panels)))
        scaled = []
        for p in panels:
            width = max(1, round(p.width * height / p.height))
            resample = Image.NEAREST if height >= p.height else Image.BILINEAR
            scaled.append(p.convert("RGB").resize((width, height), resample))
        canvas = Image.new(
            "RGB", (sum(p.width for p in scaled) + gap * (len(scaled) - 1), height), "white"
        )
        x = 0
        for p in scaled:
            canvas.paste(p, (x, 0))
            x += p.width + gap
        return canvas


class ImageClassificationTask(SingleLabelClassification, ImageTask):
    """Classify images given as a folder tree or a CSV/Parquet table of (path, label)."""

    name = "image-classification"

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        self.base_dir = base_dir
        if data_config.target is not None:
            raise ConfigError("data.target", f"{self.name} takes its classes from data.label")
        path = Path(data_config.path)
        path = path if path.is_absolute() else base_dir / path
        frame, col = self._read(path, data_config, True)
        label = "label" if path.is_dir() else (data_config.label or "label")
        if not path.is_dir():
            require_columns(frame, {"data.label": label}, path)
        if len(frame) == 0:
            raise DataError(f"{path}: no data rows")
        classes = resolve_classes(frame, label, data_config.classes, path)
        return self.task_data(frame, col, label, classes, path)

    def defaults(self) -> dict[str, Any]:
        return {
            **self.classification_defaults(),
            "metrics": [
                *("accuracy", "top5_accuracy", "balanced_accuracy", "f1_macro"),
                *("mcc", "roc_auc", "log_loss", "ece"),
            ],
        }

    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        """Cross-entropy (or focal) on class ids, soft-target cross-entropy on mixup batches."""
        return _soft_target_loss(class_weights, focal_gamma)

    # -- label noise (issue 6) --------------------------------------------------------------
    def label_noise_inputs(
        self, data: TaskData, backbone: str | None = "efficientnet-lite0", batch_size: int = 64
    ) -> tuple[np.ndarray, Any, str]:
        """Features and a classifier for out-of-fold label-noise detection.

        Pooled features of a pretrained ImageNet backbone (the installed ``efficientnet-lite0``
        weights; no gradients) when available, else 16x16 downscaled pixels; both with a
        standardised multinomial ``LogisticRegression``.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        paths = data.frame[data.inputs["image"]].astype(str).tolist()
        estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        if backbone is not None:
            try:
                X = self._backbone_features(paths, backbone, batch_size)
                desc = f"pooled {backbone} ImageNet features ({X.shape[1]}-d) + logistic regression"
                return X, estimator, desc
            except UserError:
                pass
        X = np.stack(
            [
                np.asarray(open_image(p, 1).resize((16, 16)), dtype=np.float32).ravel() / 255
                for p in paths
            ]
        )
        return X, estimator, "16x16 grayscale pixels + logistic regression"

    def _backbone_features(self, paths: list[str], backbone: str, batch_size: int) -> np.ndarray:
        import torch

        from tuneforge.plugins.image.timm_model import WEIGHTS_PACKAGES, TimmModel
        from tuneforge.plugins.image.transforms import TimmTransforms

        arch = WEIGHTS_PACKAGES[backbone][0]
        builder = TimmModel(TimmModel.Config(architecture=arch, weights=backbone))
        model = builder.build(ModelSpec("classification", 2, ["a", "b"], {"channels": 3})).eval()
        transforms = TimmTransforms()
        transforms.setup(builder.data_config())
        t = transforms.eval_transform()
        feats = []
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                x = torch.stack([t(open_image(p, 3)) for p in paths[i : i + batch_size]])
                feats.append(model.features(x).float().numpy())
        return np.concatenate(feats)
