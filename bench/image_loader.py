"""The image loader alone, on CPU: decode + transforms (+ augmentation) + collate, in images/s.

Generates JPEG images (or uses ``--folder``), builds the image-classification task's dataset
and collate exactly as a run does, and times full passes of a ``torch.utils.data.DataLoader``
with 0 and 2 worker processes. The baseline is the same pipeline with 0 workers (same run).

    python bench/image_loader.py                       # 1,024 generated 64x64 JPEGs -> 224 px
    python bench/image_loader.py --folder ../shared/data/cifar10/train --size 224 --augment
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpegs(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="image folder tree (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=1024, help="generated images")
    ap.add_argument("--source-size", type=int, default=64, help="generated image side")
    ap.add_argument("--size", type=int, default=224, help="model input side")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--augment", action="store_true", help="timm-augment + albumentations")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from tuneforge.config import DataConfig
    from tuneforge.plugins.image.augment import Albumentations, TimmAugment
    from tuneforge.plugins.image.task import ImageClassificationTask
    from tuneforge.plugins.image.timm_model import TimmModel
    from tuneforge.plugins.image.transforms import TimmTransforms

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.folder or make_jpegs(Path(tmp), args.images, args.source_size)
        task = ImageClassificationTask()
        data = task.load(DataConfig(path=root), Path.cwd())
        transforms = TimmTransforms(TimmTransforms.Config(input_size=args.size))
        task.prepare(transforms, TimmModel(TimmModel.Config(architecture="efficientnet_lite0")))
        augmenters = []
        if args.augment:
            augmenters = [
                Albumentations(Albumentations.Config(transforms=[{"Affine": {"rotate": 10}}])),
                TimmAugment(TimmAugment.Config()),
            ]
        dataset = task.make_dataset(
            data, data.frame.index.to_numpy(), transforms, [], augmenters, 0
        )
        collate = task.collate_fn(transforms, on_cuda=False)
        what = "augment+" if args.augment else ""
        print(
            f"{len(dataset)} images from {'generated JPEGs' if not args.folder else root}, "
            f"decode+{what}transform to {args.size}px + collate, batch {args.batch_size}"
        )
        rates = {}
        for workers in args.workers:
            loader = DataLoader(
                dataset,
                batch_size=args.batch_size,
                shuffle=True,
                num_workers=workers,
                collate_fn=collate,
                persistent_workers=workers > 0,  # as the trainer does
            )
            next(iter(loader))  # warm-up (worker start-up, first decode)
            t0 = time.perf_counter()
            n = sum(batch["pixel_values"].shape[0] for batch in loader)
            rates[workers] = n / (time.perf_counter() - t0)
            ratio = rates[workers] / rates[args.workers[0]]
            print(
                f"  workers={workers}: {rates[workers]:8.0f} images/s  "
                f"({ratio:.2f}x workers={args.workers[0]})"
            )


if __name__ == "__main__":
    main()
