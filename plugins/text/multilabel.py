"""The ``text-multilabel`` task: a text (or a pair) per row and a set of labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import StrictConfig
from tuneforge.data import TaskData, read_table, require_columns
from tuneforge.errors import DataError
from tuneforge.plugins.multilabel import DEFAULT_METRICS, MultiLabelClassification, MultiLabelConfig
from tuneforge.plugins.text.task import TextTask


class TextMultiLabelTask(MultiLabelClassification, TextTask):
    """Tag a text (role ``text``) or a pair (``text`` + ``text_pair``) with any number of
    labels: one ``data.label`` column of names joined by ``task.separator`` (default ``|``),
    or 0/1 columns (``task.label_columns``)."""

    name = "text-multilabel"
    Config: ClassVar[type[StrictConfig]] = MultiLabelConfig

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        path = self._path(data_config, base_dir)
        frame = read_table(path, data_config.format, data_config.read_options)
        columns = self._columns(data_config)
        require_columns(frame, {f"data.columns.{r}": c for r, c in columns.items()}, path)
        if len(frame) == 0:
            raise DataError(f"{path}: the file has no data rows")
        frame, target, labels = self.read_labels(frame, data_config, path)
        return self.task_data(frame, columns, target, labels, path)

    def defaults(self) -> dict[str, Any]:
        return {
            **self.classification_defaults(),
            "metrics": list(DEFAULT_METRICS),
        }
