"""The ``tabular-multilabel`` task: rows of features, each with a set of labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import StrictConfig
from tuneforge.data import TaskData
from tuneforge.plugins.multilabel import DEFAULT_METRICS, MultiLabelClassification, MultiLabelConfig
from tuneforge.plugins.tabular.task import TabularTask


class TabularMultiLabelTask(MultiLabelClassification, TabularTask):
    """Tag rows of a table with any number of labels from their features (an mlp): one
    ``data.label`` column of names joined by ``task.separator`` (default ``|``), or 0/1
    columns (``task.label_columns``, e.g. one column per diagnosis). Every other column is a
    feature unless ``data.columns`` says otherwise; label columns never are."""

    name = "tabular-multilabel"
    Config: ClassVar[type[StrictConfig]] = MultiLabelConfig

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        frame, path = self._read(data_config, base_dir)
        frame, target, labels = self.read_labels(frame, data_config, path)
        not_features = list(dict.fromkeys([target, *self.label_source_columns(data_config)]))
        data = self._task_data(frame, path, data_config, not_features, labels)
        data.target = target
        return data

    def defaults(self) -> dict[str, Any]:
        return {
            "validators": [
                "missing-features",
                "constant-columns",
                "missing",
                "duplicates",
                "conflicting-labels",
                "class-size",
            ],
            "model": {"name": "mlp"},
            "metrics": list(DEFAULT_METRICS),
        }
