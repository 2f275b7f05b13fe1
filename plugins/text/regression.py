"""The text-regression task: a numeric target (one or several columns) from a text or a pair.

STS-B style sentence similarity is ``data.columns: {text: sentence1, text_pair: sentence2}``
with ``data.target: score``. The model is ``AutoModelForSequenceClassification`` with
``num_labels = n_targets`` and ``problem_type="regression"``; targets are standardised on the
train split (``target_scaler.json`` in the checkpoint) and predictions are in target units.
Text preprocessors and augmenters work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data import TaskData, read_table, require_columns
from tuneforge.errors import DataError
from tuneforge.plugins.regression import (
    DEFAULT_METRICS,
    DEFAULT_VALIDATORS,
    RegressionTaskMixin,
    baseline_scores,
    parse_targets,
    target_values,
)
from tuneforge.plugins.text.task import TextTask


class TextRegressionTask(RegressionTaskMixin, TextTask):
    """Predict numeric target(s) from a text (role ``text``) or a pair (``text_pair``)."""

    name = "text-regression"

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        self.check_target_config(data_config)
        path = self._path(data_config, base_dir)
        frame = read_table(path, data_config.format, data_config.read_options)
        columns = self._columns(data_config)
        require_columns(frame, {f"data.columns.{r}": c for r, c in columns.items()}, path)
        if len(frame) == 0:
            raise DataError(f"{path}: the file has no data rows")
        frame = parse_targets(frame, data_config.target, str(path))
        return self.task_data(frame, columns, data_config.target, None, path)

    def defaults(self) -> dict[str, Any]:
        return {
            # no "duplicates": it compares one label column; the split keeps duplicates together
            "validators": ["schema", "missing", "empty-text", "long-text", *DEFAULT_VALIDATORS],
            "tokenizer": {"name": "hf-tokenizer"},
            "model": {"name": "hf-sequence-classification"},
            "metrics": DEFAULT_METRICS,
        }

    def baselines(self, data: TaskData, split: Any, metrics: dict[str, Any]) -> dict[str, float]:
        """TF-IDF (word 1-2 grams) + Ridge on the same split, scored by the run's metrics."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        def docs(rows: np.ndarray) -> list[str]:
            texts, pairs = self._texts(data.frame.loc[rows], data.inputs, [])
            return (
                texts
                if pairs is None
                else [f"{a} \n {b}" for a, b in zip(texts, pairs, strict=True)]
            )

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        try:
            x_train = vec.fit_transform(docs(split.train))
        except ValueError:  # no word of 2+ characters anywhere
            return {}
        x_test = vec.transform(docs(split.test))
        return baseline_scores(
            metrics,
            {"tfidf_ridge": Ridge(alpha=1.0)},
            x_train,
            target_values(data, split.train),
            x_test,
            target_values(data, split.test),
        )
