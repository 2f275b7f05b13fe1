"""Tabular tasks: ``tabular-regression`` and ``tabular-classification``.

Features are the numeric and categorical columns of a CSV/TSV/JSONL/Parquet table
(``data.columns: {numeric: "a, b", categorical: "c", exclude: "id"}``, or every column but
the target). Preprocessing (imputation, standardisation, category codes) is fitted on the
train split and saved with the checkpoint; scikit-learn reference models run on the same
split and are reported beside the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tuneforge.components import StrictConfig, Task
from tuneforge.data import TaskData, read_table, require_columns, resolve_classes
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.regression import (
    DEFAULT_METRICS,
    DEFAULT_VALIDATORS,
    RegressionTaskMixin,
    baseline_scores,
    parse_targets,
    target_columns,
    target_values,
)
from tuneforge.plugins.tabular.features import (
    FeaturePreprocessor,
    TabularDataset,
    boosting_categorical_mask,
    collate,
    numeric_frame,
    select_features,
    sklearn_features,
)


class _TabularBase(Task):
    """Loading, preprocessing, datasets and artifacts shared by the two tabular tasks."""

    roles: ClassVar[dict[str, str]] = {}
    features: FeaturePreprocessor | None = None
    n_classes: int | None = None

    class Config(StrictConfig):
        pass

    def _read(self, data_config: Any, base_dir: Path) -> tuple[pd.DataFrame, Path]:
        path = Path(data_config.path)
        path = path if path.is_absolute() else base_dir / path
        frame = read_table(path, data_config.format, data_config.read_options)
        if len(frame) == 0:
            raise DataError(f"{path}: the file has no data rows")
        frame.columns = [str(c) for c in frame.columns]
        return frame, path

    def _task_data(
        self, frame: pd.DataFrame, path: Path, data_config: Any, target: Any, classes: Any
    ) -> TaskData:
        numeric, categorical = select_features(
            frame, dict(data_config.columns), target_columns(target), path
        )
        numeric_frame(frame, numeric, str(path))  # text in a numeric column: name the row
        self.kinds = {c: "numeric" for c in numeric} | {c: "categorical" for c in categorical}
        inputs = {c: c for c in numeric + categorical}
        return TaskData(
            frame=frame,
            inputs=inputs,
            target=target,
            classes=classes,
            source=str(path),
            problem=self.problem,
            modalities={c: "tabular" for c in inputs},
        )

    def feature_kinds(self, data: TaskData) -> tuple[list[str], list[str]]:
        """(numeric, categorical) feature columns of loaded data (kinds decided at load)."""
        kinds = getattr(self, "kinds", None) or {
            c: "categorical" if _is_categorical(data.frame[c]) else "numeric"
            for c in data.inputs.values()
        }
        cols = list(data.inputs.values())
        numeric = [c for c in cols if kinds.get(c) == "numeric"]
        return numeric, [c for c in cols if kinds.get(c) != "numeric"]

    def load_inputs(self, path: Path, data_config: Any) -> pd.DataFrame:
        """A table to predict on; the feature columns are checked against the checkpoint."""
        frame = read_table(path, "auto", data_config.read_options)
        frame.columns = [str(c) for c in frame.columns]
        frame.attrs["source"] = str(path)
        return frame

    def content_keys(self, data: TaskData) -> pd.Series:
        """All feature values of a row: equal rows are duplicates (kept in one split)."""
        cols = list(data.inputs.values())
        return pd.util.hash_pandas_object(data.frame[cols], index=False)

    # -- training ---------------------------------------------------------------------------
    def prepare(self, tokenizer: Any, model_builder: Any) -> None:
        if tokenizer is not None:
            raise ConfigError("tokenizer", f"{self.name} takes no tokenizer; remove the section")

    def fit(self, data: TaskData, train_rows: np.ndarray, model_builder: Any) -> None:
        """Fit the feature preprocessing (and, for regression, the target scaler) on train."""
        if not hasattr(model_builder, "build_tabular"):
            raise ConfigError(
                "model.name", f"{self.name} needs a tabular model (mlp), not this one"
            )
        numeric, categorical = self.feature_kinds(data)
        self.features = FeaturePreprocessor.fit(
            data.frame.loc[train_rows],
            numeric,
            categorical,
            model_builder.config.impute,
            data.source,
        )

    def _labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def make_dataset(
        self,
        data: TaskData,
        rows: np.ndarray,
        tokenizer: Any,
        preprocessors: list[Any],
        augmenters: list[Any],
        seed: int,
    ) -> TabularDataset:
        assert self.features is not None, "fit() first"
        x_num, x_cat = self.features.transform(data.frame.loc[rows], data.source)
        return TabularDataset(
            x_num, x_cat, self._labels(data, rows), augmenters, seed, self.n_classes
        )

    def collate_fn(self, tokenizer: Any, on_cuda: bool) -> Any:
        return collate

    def n_outputs(self, data: TaskData) -> int:
        raise NotImplementedError

    def build_model(self, model_builder: Any, data: TaskData, tokenizer: Any) -> Any:
        assert self.features is not None
        return model_builder.build_tabular(
            len(self.features.numeric), self.features.cardinalities, self.n_outputs(data)
        )

    # -- artifacts --------------------------------------------------------------------------
    def save_artifacts(self, model: Any, tokenizer: Any, model_builder: Any, folder: Path) -> None:
        assert self.features is not None
        model_builder.save(model, folder)
        self.features.save(folder)

    def load_artifacts(self, folder: Path, tokenizer: Any, model_builder: Any) -> Any:
        self.features = FeaturePreprocessor.load(folder)
        return model_builder.load(folder)

    def predict_dataset(
        self, frame: pd.DataFrame, data_config: Any, tokenizer: Any, preprocessors: list[Any]
    ) -> TabularDataset:
        assert self.features is not None, "load_artifacts() first"
        source = str(frame.attrs.get("source", "input"))
        x_num, x_cat = self.features.transform(frame, source)
        return TabularDataset(x_num, x_cat, None)

    # -- scikit-learn -----------------------------------------------------------------------
    def sklearn_frame(self, data: TaskData, rows: Any = None) -> pd.DataFrame:
        """Feature columns with numeric ones as floats (for the scikit-learn models)."""
        numeric, categorical = self.feature_kinds(data)
        frame = data.frame if rows is None else data.frame.loc[rows]
        out = frame[numeric + categorical].copy()
        for col in numeric:
            out[col] = pd.to_numeric(out[col], errors="coerce").replace([np.inf, -np.inf], np.nan)
        return out

    def reference_models(self, data: TaskData, linear: Any, boosting: Any) -> dict[str, Any]:
        from sklearn.pipeline import make_pipeline

        numeric, categorical = self.feature_kinds(data)
        boosting.set_params(
            categorical_features=boosting_categorical_mask(data.frame, numeric, categorical)
        )
        return {
            linear[0]: make_pipeline(sklearn_features(numeric, categorical, "linear"), linear[1]),
            "gradient_boosting": make_pipeline(
                sklearn_features(numeric, categorical, "trees"), boosting
            ),
        }


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


class TabularRegressionTask(RegressionTaskMixin, _TabularBase):
    """Predict numeric target(s) (``data.target``) from tabular features with an mlp."""

    name = "tabular-regression"

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        self.check_target_config(data_config)
        frame, path = self._read(data_config, base_dir)
        frame = parse_targets(frame, data_config.target, str(path))
        return self._task_data(frame, path, data_config, data_config.target, None)

    def defaults(self) -> dict[str, Any]:
        return {
            "validators": [
                "missing-features",
                "constant-columns",
                *DEFAULT_VALIDATORS,
            ],
            "model": {"name": "mlp"},
            "metrics": DEFAULT_METRICS,
        }

    def fit(self, data: TaskData, train_rows: np.ndarray, model_builder: Any) -> None:
        super().fit(data, train_rows, model_builder)
        self.fit_targets(data, train_rows, model_builder)

    def _labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        return target_values(data, rows).astype(np.float32)

    def baselines(self, data: TaskData, split: Any, metrics: dict[str, Any]) -> dict[str, float]:
        """Ridge and histogram gradient boosting on the same train/test split."""
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import Ridge

        models = self.reference_models(
            data, ("ridge", Ridge(alpha=1.0)), HistGradientBoostingRegressor(random_state=0)
        )
        return baseline_scores(
            metrics,
            models,
            self.sklearn_frame(data, split.train),
            target_values(data, split.train),
            self.sklearn_frame(data, split.test),
            target_values(data, split.test),
        )


class TabularClassificationTask(_TabularBase):
    """Classify rows (``data.label``) from tabular features with an mlp."""

    name = "tabular-classification"
    problem: ClassVar[str] = "classification"

    def load(self, data_config: Any, base_dir: Path) -> TaskData:
        if data_config.target is not None:
            raise ConfigError("data.target", f"{self.name} takes its classes from data.label")
        frame, path = self._read(data_config, base_dir)
        label = data_config.label or "label"
        require_columns(frame, {"data.label": label}, path)
        classes = resolve_classes(frame, label, data_config.classes, path)
        return self._task_data(frame, path, data_config, label, classes)

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
            "metrics": ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"],
        }

    def fit(self, data: TaskData, train_rows: np.ndarray, model_builder: Any) -> None:
        super().fit(data, train_rows, model_builder)
        self.n_classes = len(data.classes or [])

    def _labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        return data.subset(rows).label_ids()

    def n_outputs(self, data: TaskData) -> int:
        return len(data.classes or [])

    def loss_fn(self, class_weights: np.ndarray | None, focal_gamma: float | None = None) -> Any:
        from tuneforge.plugins.losses import classification_loss

        return classification_loss(class_weights, focal_gamma)

    def predictions(self, logits: Any) -> tuple[np.ndarray, np.ndarray]:
        import torch

        probs = torch.softmax(logits.float(), dim=-1)
        return probs.argmax(dim=-1).numpy(), probs.numpy()

    def baselines(self, data: TaskData, split: Any, metrics: dict[str, Any]) -> dict[str, float]:
        """Logistic regression and gradient boosting on the same split."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        y_train = data.subset(split.train).label_ids()
        y_test = data.subset(split.test).label_ids()
        out: dict[str, float] = {}  # the pipeline adds the majority-class baseline
        models = self.reference_models(
            data,
            ("logistic", LogisticRegression(max_iter=2000)),
            HistGradientBoostingClassifier(random_state=0),
        )
        x_train, x_test = (
            self.sklearn_frame(data, split.train),
            self.sklearn_frame(data, split.test),
        )
        k = len(data.classes or [])
        for name, model in models.items():
            model.fit(x_train, y_train)
            score = np.zeros((len(y_test), k))
            score[:, model.classes_] = model.predict_proba(x_test)
            pred = score.argmax(axis=1)
            for metric_name, metric in metrics.items():
                try:
                    out[f"baseline_{name}_{metric_name}"] = float(metric(y_test, pred, score))
                except ValueError:
                    out[f"baseline_{name}_{metric_name}"] = float("nan")
        return out

    def label_noise_inputs(self, data: TaskData) -> tuple[Any, Any, str]:
        """Features, an unfitted classifier and a description, for out-of-fold probabilities
        (confident learning): histogram gradient boosting on the raw features."""
        from sklearn.ensemble import HistGradientBoostingClassifier

        models = self.reference_models(
            data, ("unused", None), HistGradientBoostingClassifier(max_iter=100, random_state=0)
        )
        return (
            self.sklearn_frame(data),
            models["gradient_boosting"],
            "gradient boosting (HistGradientBoostingClassifier) on the tabular features",
        )
