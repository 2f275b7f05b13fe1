"""Write scikit-learn's bundled ``load_digits`` images (1,797 8x8 grayscale digits, offline)
as a folder tree ``<out>/<digit>/<index>.png`` for the digits example.

    python examples/digits/make_digits.py            # -> examples/digits/images/
    python examples/digits/make_digits.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: Path) -> Path:
    digits = load_digits()
    # Pixel values are 0..16; scale to 0..255 (white digit on black, as in the original scans).
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for i, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "images"
    print(f"wrote {len(list(write_digits(target).rglob('*.png')))} images to {target}")
