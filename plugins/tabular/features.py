"""Tabular feature handling: column selection, the train-fitted preprocessing, datasets.

:class:`FeaturePreprocessor` imputes missing numeric values (median, mean or zero from the
train split), standardises numeric columns with train-split statistics and maps categorical
values to integer codes (0 = missing or unseen); it is saved with the checkpoint as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.data import WorkerRandom
from tuneforge.errors import ConfigError, DataError, UserError

PREPROCESS_FILE = "tabular_preprocess.json"
ROLES = ("numeric", "categorical", "exclude")


def _names(value: str | list[str]) -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    return [s.strip() for s in items if s.strip()]


def select_features(
    frame: pd.DataFrame, columns: dict[str, Any], targets: list[str], path: Path
) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature columns.

    ``data.columns`` may give ``numeric``, ``categorical`` (forced kinds) and ``exclude``
    (comma-separated column names). Without ``numeric``/``categorical`` every column but the
    target(s) and the excluded ones is a feature, its kind inferred from its type (numbers ->
    numeric; text, booleans, categories -> categorical).
    """
    for role in columns:
        if role not in ROLES:
            raise ConfigError(
                f"data.columns.{role}",
                f"unknown role; tabular tasks use: {', '.join(ROLES)} (comma-separated columns)",
            )
    given = {r: _names(v) for r, v in columns.items()}
    for role, cols in given.items():
        for col in cols:
            if col not in frame.columns:
                avail = ", ".join(map(str, frame.columns))
                raise DataError(
                    f"{path}: column {col!r} (from data.columns.{role}) not found; columns are: "
                    f"{avail}"
                )
            if col in targets and role != "exclude":
                raise ConfigError(f"data.columns.{role}", f"{col!r} is the target column")
    exclude = set(given.get("exclude", [])) | set(targets)
    if "numeric" in given or "categorical" in given:
        numeric = [c for c in given.get("numeric", []) if c not in exclude]
        categorical = [c for c in given.get("categorical", []) if c not in exclude]
        both = set(numeric) & set(categorical)
        if both:
            raise ConfigError("data.columns", f"{sorted(both)} listed as numeric and categorical")
    else:
        numeric, categorical = [], []
        for col in frame.columns:
            if col in exclude:
                continue
            s = frame[col]
            if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                numeric.append(str(col))
            else:
                categorical.append(str(col))
    if not numeric and not categorical:
        raise ConfigError("data.columns", "no feature column left (all are target or excluded)")
    return numeric, categorical


def numeric_frame(frame: pd.DataFrame, numeric: list[str], source: str) -> pd.DataFrame:
    """Numeric feature columns as float64; text that is not a number names its row/column."""
    out = pd.DataFrame(index=frame.index)
    for col in numeric:
        raw = frame[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.index[values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")]
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{source}: row {row}: numeric feature {col!r} holds {raw.loc[row]!r}, not a "
                f"number ({len(bad)} such rows); list the column under data.columns.categorical"
            )
        out[col] = values.astype(np.float64).replace([np.inf, -np.inf], np.nan)
    return out


class FeaturePreprocessor:
    """Imputation + standardisation (numeric) and integer codes (categorical), train-fitted."""

    def __init__(
        self,
        numeric: list[str],
        categorical: list[str],
        fill: list[float],
        mean: list[float],
        std: list[float],
        categories: dict[str, list[str]],
        impute: str,
    ) -> None:
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.fill = np.asarray(fill, dtype=np.float64)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.categories = categories
        self.impute = impute
        self._codes = {c: {v: i + 1 for i, v in enumerate(cats)} for c, cats in categories.items()}

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        numeric: list[str],
        categorical: list[str],
        impute: str,
        source: str,
    ) -> FeaturePreprocessor:
        num = numeric_frame(frame, numeric, source)
        if impute == "median":
            fill = num.median()
        elif impute == "mean":
            fill = num.mean()
        else:
            fill = pd.Series(0.0, index=num.columns)
        fill = fill.fillna(0.0)  # a column missing in every training row
        filled = num.fillna(fill)
        std = filled.std(ddof=0).replace(0, 1.0).fillna(1.0)
        categories = {
            c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in categorical
        }
        return cls(
            numeric,
            categorical,
            fill.tolist(),
            filled.mean().fillna(0.0).tolist(),
            std.tolist(),
            categories,
            impute,
        )

    @property
    def cardinalities(self) -> list[int]:
        """Codes per categorical column, including 0 for missing/unseen."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def check_columns(self, frame: pd.DataFrame, source: str) -> None:
        missing = [c for c in self.numeric + self.categorical if c not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: feature column {missing[0]!r} is missing ({len(missing)} of the "
                f"{len(self.numeric) + len(self.categorical)} columns the model was trained on)"
            )

    def transform(self, frame: pd.DataFrame, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(standardised numeric float32 ``(n, n_num)``, categorical codes int64 ``(n, n_cat)``)."""
        self.check_columns(frame, source)
        num = numeric_frame(frame, self.numeric, source).to_numpy(dtype=np.float64)
        if num.size:
            num = np.where(np.isnan(num), self.fill, num)
            num = (num - self.mean) / self.std
        cat = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, col in enumerate(self.categorical):
            codes = self._codes[col]
            cat[:, j] = [0 if pd.isna(v) else codes.get(str(v), 0) for v in frame[col].tolist()]
        return num.astype(np.float32).reshape(len(frame), len(self.numeric)), cat

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": self.categorical,
            "fill": self.fill.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "categories": self.categories,
            "impute": self.impute,
        }

    def save(self, folder: Path) -> None:
        (Path(folder) / PREPROCESS_FILE).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> FeaturePreprocessor:
        path = Path(folder) / PREPROCESS_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"checkpoint {folder}: no {PREPROCESS_FILE}") from None
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path}: unreadable feature preprocessing: {exc}") from None


def sklearn_features(numeric: list[str], categorical: list[str], kind: str) -> Any:
    """A scikit-learn ``ColumnTransformer`` for the reference models.

    ``kind="linear"``: median imputation + standard scaling, one-hot categories;
    ``kind="trees"``: numeric passed through (gradient boosting handles NaN), ordinal
    categories (missing/unseen -> NaN).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        OneHotEncoder,
        OrdinalEncoder,
        StandardScaler,
    )

    as_str = FunctionTransformer(
        lambda x: x.astype(object).where(x.notna(), "__missing__").astype(str)
    )
    if kind == "linear":
        parts = [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("cat", make_pipeline(as_str, OneHotEncoder(handle_unknown="ignore")), categorical),
        ]
    else:
        parts = [
            ("num", "passthrough", numeric),
            (
                "cat",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                categorical,
            ),
        ]
    return ColumnTransformer([p for p in parts if p[2]], sparse_threshold=0)


def boosting_categorical_mask(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> list[bool]:
    """Which columns of :func:`sklearn_features` ``("trees")`` output are categorical
    (histogram gradient boosting takes up to 255 categories; more stay ordinal numbers)."""
    return [False] * len(numeric) + [frame[c].nunique() <= 250 for c in categorical]


class TabularDataset:
    """Rows as tensors ``x_num``, ``x_cat`` (and ``labels``), augmented per access.

    Augmenters get ``{"num": float32 array, "cat": int64 array, "label": ...}``; one with a
    ``mix(example, partner, rng)`` method (mixup) also gets a random partner row. With such an
    augmenter classification labels become one-hot probabilities so they can be mixed.
    """

    def __init__(
        self,
        x_num: np.ndarray,
        x_cat: np.ndarray,
        labels: np.ndarray | None,
        augmenters: list[Any] = (),
        seed: int = 0,
        n_classes: int | None = None,
    ) -> None:
        self.x_num, self.x_cat, self.labels = x_num, x_cat, labels
        self.augmenters = list(augmenters)
        self._rngs = WorkerRandom(seed)
        mixing = any(hasattr(a, "mix") for a in self.augmenters)
        self.soft = n_classes if (mixing and n_classes) else None

    def __len__(self) -> int:
        return len(self.x_num)

    def _label(self, i: int) -> Any:
        y = self.labels[i]
        if self.soft:
            one_hot = np.zeros(self.soft, dtype=np.float32)
            one_hot[int(y)] = 1.0
            return one_hot
        return y

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        example = {"num": self.x_num[i].copy(), "cat": self.x_cat[i].copy()}
        if self.labels is not None:
            example["label"] = self._label(i)
        rng = self._rngs.get()
        for aug in self.augmenters:
            if hasattr(aug, "mix"):
                j = rng.randrange(len(self))
                partner = {"num": self.x_num[j], "cat": self.x_cat[j]}
                if self.labels is not None:
                    partner["label"] = self._label(j)
                example = aug.mix(example, partner, rng)
            else:
                example = aug(example, rng)
        item = {
            "x_num": torch.as_tensor(np.asarray(example["num"], dtype=np.float32)),
            "x_cat": torch.as_tensor(np.asarray(example["cat"], dtype=np.int64)),
        }
        if self.labels is not None:
            label = example["label"]
            item["labels"] = torch.as_tensor(
                label,
                dtype=torch.int64
                if self.labels.dtype.kind in "iu" and not self.soft
                else torch.float32,
            )
        return item


def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {k: torch.stack([f[k] for f in features]) for k in features[0]}
