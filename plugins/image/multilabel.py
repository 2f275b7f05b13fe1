"""The ``image-multilabel`` task: a table of image paths, each with a set of labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import StrictConfig
from tuneforge.data import TaskData
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.image.task import ImageTask
from tuneforge.plugins.multilabel import DEFAULT_METRICS, MultiLabelClassification, MultiLabelConfig


class ImageMultiLabelTask(MultiLabelClassification, ImageTask):
    """Tag images with any number of labels, from a CSV/TSV/JSONL/Parquet table of image paths
    (``data.columns.image``, default ``path``; relative to the table) and labels: one
    ``data.label`` column of names joined by ``task.separator`` (default ``|``), or 0/1
    columns (``task.label_columns``). A folder tree gives one class per image: use
    ``image-classification`` for it."""

    name = "image-multilabel"
    Config: ClassVar[type[StrictConfig]] = MultiLabelConfig

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        self.base_dir = base_dir
        path = Path(data_config.path)
        path = path if path.is_absolute() else base_dir / path
        if path.is_dir():
            raise ConfigError(
                "data.path",
                f"{path} is a folder; {self.name} reads a table of image paths and their "
                "labels (a folder tree gives one class per image: image-classification)",
            )
        frame, col = self._read(path, data_config, True)
        if len(frame) == 0:
            raise DataError(f"{path}: no data rows")
        frame, target, labels = self.read_labels(frame, data_config, path)
        return self.task_data(frame, col, target, labels, path)

    def defaults(self) -> dict[str, Any]:
        return {
            **self.classification_defaults(),
            "metrics": list(DEFAULT_METRICS),
        }
