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

from tuneforge.components import ModelSpec, StrictConfig, Task
from tuneforge.data import TaskData, read_table, require_columns, resolve_classes
from tuneforge.errors import ConfigError, DataError
from tuneforge.plugins.problems import SingleLabelClassification
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


class TabularTask(Task):
    """The tabular modality, for any problem kind: loading, feature preprocessing (fitted on
    the train split, saved with the checkpoint), datasets and artifacts. A problem kind (a
    base listed first) provides :meth:`encode_labels` and :meth:`output_names`; the model is
    built with ``spec.inputs = {"n_numeric", "cardinalities"}``."""

    roles: ClassVar[dict[str, str]] = {}
    features: FeaturePreprocessor | None = None
    #: Columns core reads itself (``split.column``): never features.
    reserved: tuple[str, ...] = ()
    #: Feature column -> ``"numeric"`` / ``"categorical"``, decided by the first file loaded
    #: (the training data); later files of the run are read with the same kinds.
    kinds: dict[str, str] = {}  # noqa: RUF012 (always replaced, never mutated)

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

    def reserve_columns(self, columns: list[str]) -> None:
        """Every column is a feature by default: these (``split.column``) are not."""
        self.reserved = tuple(columns)

    def _task_data(
        self, frame: pd.DataFrame, path: Path, data_config: Any, target: Any, classes: Any
    ) -> TaskData:
        columns = dict(data_config.columns)
        for role in ("numeric", "categorical"):
            named = [c.strip() for c in str(columns.get(role, "")).split(",")]
            for col in self.reserved:
                if col in named:
                    raise ConfigError(
                        f"data.columns.{role}", f"{col!r} is the split column (split.column)"
                    )
        if self.kinds:  # a later file of this run (a given val/test split): the first's kinds
            require_columns(frame, {f"feature {c!r}": c for c in self.kinds}, path)
            numeric = [c for c, kind in self.kinds.items() if kind == "numeric"]
            categorical = [c for c, kind in self.kinds.items() if kind != "numeric"]
        else:
            numeric, categorical = select_features(frame, columns, target_columns(target), path)
            numeric = [c for c in numeric if c not in self.reserved]
            categorical = [c for c in categorical if c not in self.reserved]
        if not numeric and not categorical:
            raise ConfigError("data.columns", "no feature column left but the split column")
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
        kinds = self.kinds or {
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
    def encode_labels(self, data: TaskData, rows: np.ndarray) -> np.ndarray:
        """The dataset's ``labels`` for ``rows`` (the problem kind's encoding)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    def output_names(self, data: TaskData) -> list[str]:
        """The model's outputs, in order (the problem kind's classes, labels or targets)."""
        raise NotImplementedError(f"{type(self).__name__} composes no problem kind")

    # -- training ---------------------------------------------------------------------------
    def bind(self, tokenizer: Any, model_builder: Any, preprocessors: list[Any]) -> None:
        if tokenizer is not None:
            raise ConfigError("tokenizer", f"{self.name} takes no tokenizer; remove the section")
        super().bind(tokenizer, model_builder, preprocessors)

    def fit(self, data: TaskData, train_rows: np.ndarray) -> None:
        """Fit the feature preprocessing on the train split (missing numeric values filled as
        the model's ``impute`` parameter says, median by default)."""
        numeric, categorical = self.feature_kinds(data)
        impute = dict(self.model_builder.config).get("impute") or "median"
        self.features = FeaturePreprocessor.fit(
            data.frame.loc[train_rows], numeric, categorical, impute, data.source
        )
        super().fit(data, train_rows)  # cooperative: Task.fit

    def make_dataset(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int
    ) -> TabularDataset:
        assert self.features is not None, "fit() first"
        x_num, x_cat = self.features.transform(data.frame.loc[rows], data.source)
        n_classes = len(data.classes) if self.problem == "classification" else None
        labels = self.encode_labels(data, rows)
        return TabularDataset(x_num, x_cat, labels, augmenters, seed, n_classes)

    def collate_fn(self, on_cuda: bool) -> Any:
        return collate

    def build_model(self, data: TaskData) -> Any:
        assert self.features is not None
        names = self.output_names(data)
        inputs = {
            "n_numeric": len(self.features.numeric),
            "cardinalities": list(self.features.cardinalities),
        }
        return self.model_builder.build(ModelSpec(self.problem, len(names), names, inputs))

    # -- artifacts --------------------------------------------------------------------------
    def save_artifacts(self, model: Any, folder: Path) -> None:
        assert self.features is not None
        self.model_builder.save(model, folder)
        self.features.save(folder)

    def load_artifacts(self, folder: Path) -> Any:
        self.features = FeaturePreprocessor.load(folder)
        return self.model_builder.load(folder)

    def predict_dataset(self, frame: pd.DataFrame, data_config: Any) -> TabularDataset:
        assert self.features is not None, "load_artifacts() first"
        source = str(frame.attrs.get("source", "input"))
        x_num, x_cat = self.features.transform(frame, source)
        return TabularDataset(x_num, x_cat, None)

    # -- explanations -----------------------------------------------------------------------
    def explain(self, model: Any, frame: pd.DataFrame, data_config: Any, options: Any) -> Any:
        """Permutation importance of each feature over every row of ``frame``, which must
        carry the label column (:mod:`tuneforge.plugins.tabular.explain`); classification
        and regression."""
        from tuneforge.plugins.tabular.explain import explain_table

        return explain_table(self, model, frame, data_config, options)

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

    # -- augmentation preview ---------------------------------------------------------------
    def preview_augmented(
        self, data: TaskData, rows: np.ndarray, augmenters: list[Any], seed: int, folder: Path
    ) -> list[str]:
        """One line per example: the values the augmenters changed, before -> after. Numeric
        features in their column's units (augmenters see them standardised, missing values
        imputed), categorical values, and the label (which mixup mixes). Writes no files."""
        dataset = self.make_dataset(data, rows, augmenters, seed)
        features = self.features
        if not isinstance(dataset, TabularDataset) or features is None:
            return super().preview_augmented(data, rows, augmenters, seed, folder)
        names = self.output_names(data)
        lines = []
        for i, row in enumerate(rows):
            item = dataset[i]
            changes = []
            before, after = dataset.x_num[i], item["x_num"].numpy()
            for j, col in enumerate(features.numeric):
                if not np.isclose(before[j], after[j], rtol=1e-6, atol=0):
                    a, b = (v * features.std[j] + features.mean[j] for v in (before[j], after[j]))
                    changes.append(f"{col} {self._change(a, b)}")
            codes, new_codes = dataset.x_cat[i], item["x_cat"].numpy()
            for j, col in enumerate(features.categorical):
                if codes[j] != new_codes[j]:
                    cats = ["(missing)", *features.categories[col]]
                    changes.append(f"{col} {cats[codes[j]]!s:.40} -> {cats[new_codes[j]]!s:.40}")
            if dataset.labels is not None:  # first: what mixup changes most
                label = self._label_change(dataset, i, item["labels"].numpy(), names)
                changes = ([label] if label else []) + changes
            shown = changes[:8] + ([f"... ({len(changes)} changes)"] if len(changes) > 8 else [])
            lines.append(f"row {int(row)}: " + ("; ".join(shown) if shown else "unchanged"))
        return lines

    @staticmethod
    def _label_change(dataset: TabularDataset, i: int, after: np.ndarray, names: list[str]) -> str:
        """``label <before> -> <after>`` when an augmenter changed example ``i``'s label."""
        y = np.asarray(dataset.labels[i])
        if dataset.soft:  # class ids one-hot so that mixup can mix them
            before = np.zeros(dataset.soft, dtype=np.float32)
            before[int(y)] = 1.0
            if np.allclose(before, after):
                return ""
            mixed = ", ".join(f"{names[k]} {p:.2f}" for k, p in enumerate(after) if p >= 0.005)
            return f"label {names[int(y)]} -> {mixed}"
        if np.allclose(y.astype(np.float64), after.astype(np.float64)):
            return ""
        pairs = zip(np.atleast_1d(y), np.atleast_1d(after), strict=True)
        return "label " + ", ".join(TabularTask._change(a, b) for a, b in pairs)

    @staticmethod
    def _change(a: float, b: float) -> str:
        """``a -> b`` with the fewest significant digits (4 to 8) that tell them apart."""
        digits = 4
        while digits < 8 and f"{a:.{digits}g}" == f"{b:.{digits}g}":
            digits += 1
        return f"{a:.{digits}g} -> {b:.{digits}g}"


def _is_categorical(series: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


class TabularRegressionTask(RegressionTaskMixin, TabularTask):
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


class TabularClassificationTask(SingleLabelClassification, TabularTask):
    """Classify rows (``data.label``) from tabular features with an mlp."""

    name = "tabular-classification"

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
            "metrics": [
                *("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"),
                *("mcc", "roc_auc", "log_loss", "ece"),
            ],
        }

    def baselines(self, data: TaskData, split: Any, metrics: dict[str, Any]) -> dict[str, float]:
        """Logistic regression and gradient boosting on the same split."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression

        y_train = data.subset(split.train).label_ids()
        y_test = data.subset(split.test).label_ids()
        out = super().baselines(data, split, metrics)  # the majority-class baseline
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
