"""Image validators and metrics: unreadable/corrupt files, unsupported modes, images too small;
top-k accuracy; per-class precision/recall/F1 and the confusion matrix saved with a run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from tuneforge.components import (
    Finding,
    FindingKind,
    Metric,
    Policy,
    StrictConfig,
    Validator,
    ValidatorConfig,
)
from tuneforge.data import TaskData
from tuneforge.errors import UserError
from tuneforge.plugins.validators import preview


class ImageFiles(Validator):
    """Every image decodes fully, in a mode that converts to RGB/grayscale, and is not tiny.

    Reports missing files, non-image files, corrupt or truncated images (full decode),
    unsupported modes (e.g. 32-bit float) and images whose shorter side is below ``min_size``.
    Exact duplicates are the ``duplicates`` validator's job (the task's content key is the
    file's SHA-1); mixed grayscale/colour data is reported for information.
    """

    class Config(ValidatorConfig):
        policy: Policy = "fail"
        min_size: int = Field(
            16, ge=1, description="images whose shorter side is smaller (pixels) are reported"
        )

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        from tuneforge.plugins.image.task import SUPPORTED_MODES

        if task is None or not hasattr(task, "image_info"):
            raise UserError("image-files needs an image task (image-classification)")
        col = data.inputs["image"]
        paths = data.frame[col].astype(str).tolist()
        infos = task.image_info(paths)
        rows = list(data.frame.index)
        bad: dict[str, list[tuple[int, str]]] = {"unreadable": [], "mode": [], "small": []}
        modes: Counter[str] = Counter()
        for row, path, info in zip(rows, paths, infos, strict=True):
            name = f"row {int(row)} {path}"
            if info.problem:
                bad["unreadable"].append((int(row), f"{name}: {info.problem}"))
            elif info.mode not in SUPPORTED_MODES:
                bad["mode"].append((int(row), f"{name}: mode {info.mode}"))
            elif min(info.width, info.height) < self.config.min_size:
                bad["small"].append((int(row), f"{name}: {info.width}x{info.height}"))
            if not info.problem:
                modes[info.mode] += 1
        out = []
        texts = {
            "unreadable": (FindingKind.UNREADABLE_IMAGE, "files that are not readable images"),
            "mode": (
                FindingKind.IMAGE_MODE,
                "images in a mode that does not convert to RGB/grayscale",
            ),
            "small": (
                FindingKind.IMAGE_TOO_SMALL,
                f"images smaller than min_size {self.config.min_size} px",
            ),
        }
        for key, found in bad.items():
            if found:
                kind, what = texts[key]
                out.append(
                    Finding(
                        kind,
                        "error" if key != "small" else "warning",
                        f"{len(found)} {what}: {preview([m for _, m in found], 3, '; ')}",
                        [r for r, _ in found],
                        details={"files": [m for _, m in found][:100]},
                    )
                )
        if len(modes) > 1:
            shown = ", ".join(f"{m}: {n}" for m, n in modes.most_common())
            out.append(
                Finding(
                    FindingKind.IMAGE_MODES,
                    "info",
                    f"mixed image modes ({shown}); all are converted to the model's channels",
                    [],
                    details={"modes": dict(modes)},
                )
            )
        return out


class TopKAccuracy(Metric):
    """Fraction of rows whose true class is among the ``k`` highest-scored (k <= classes)."""

    problems: ClassVar[tuple[str, ...]] = ("classification",)
    default_k: ClassVar[int] = 5

    class Config(StrictConfig):
        k: int | None = Field(None, ge=1, description="top-k (default 5, capped at the classes)")

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None) -> float:
        from sklearn.metrics import top_k_accuracy_score

        if y_score is None:
            raise UserError("top-k accuracy needs class scores")
        n = y_score.shape[1]
        k = min(self.config.k or self.default_k, n)
        if k >= n:
            return 1.0
        if n == 2:
            return float(np.mean(y_pred == y_true))
        return float(top_k_accuracy_score(y_true, y_score, k=k, labels=np.arange(n)))


def write_class_report(run_dir: Path) -> list[str]:
    """``per_class_test.csv`` (precision, recall, F1, support per class) and
    ``confusion_matrix_test.csv`` (rows: true class, columns: predicted) from the test
    predictions; returns the files written."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from tuneforge.run import atomic_write_text

    preds = run_dir / "predictions_test.csv"
    labels = run_dir / "labels.json"
    if not preds.is_file() or not labels.is_file():
        return []
    classes = [str(c) for c in json.loads(labels.read_text()).get("classes") or []]
    if not classes:
        return []
    frame = pd.read_csv(preds, dtype={"y_true": str, "y_pred": str}, keep_default_na=False)
    p, r, f, s = precision_recall_fscore_support(
        frame["y_true"], frame["y_pred"], labels=classes, zero_division=0
    )
    per_class = pd.DataFrame({"class": classes, "precision": p, "recall": r, "f1": f, "support": s})
    matrix = confusion_matrix(frame["y_true"], frame["y_pred"], labels=classes)
    cm = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=classes)
    atomic_write_text(run_dir / "per_class_test.csv", per_class.to_csv(index=False))
    atomic_write_text(run_dir / "confusion_matrix_test.csv", cm.to_csv())
    return ["per_class_test.csv", "confusion_matrix_test.csv"]
