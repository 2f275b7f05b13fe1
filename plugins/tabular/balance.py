"""SMOTE and friends (imbalanced-learn) for tabular classification, on the train split only.

Synthetic rows are made in the raw feature space (numeric values interpolated between a
minority row and one of its ``k`` nearest minority neighbours; categorical values by
SMOTE-NC's majority vote), then go through the task's preprocessing like real rows. They
get row labels after the last data row and appear in ``split.json`` ``balanced_train`` only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from pydantic import Field

from tuneforge.components import BalancePlan, Balancer, StrictConfig
from tuneforge.data import TaskData
from tuneforge.errors import UserError


class _Smote(Balancer):
    problems: ClassVar[tuple[str, ...]] = ("classification",)
    method = "smote"

    class Config(StrictConfig):
        k_neighbors: int = Field(5, ge=1, le=100, description="minority neighbours to interpolate")
        ratio: float = Field(
            1.0, gt=0, le=1, description="minority size after resampling / majority size"
        )
        seed: int | None = Field(None, description="default: split.seed")

    def _sampler(self, k: int, categorical: list[int], seed: int) -> Any:
        from imblearn.over_sampling import ADASYN, SMOTE, SMOTENC, BorderlineSMOTE

        strategy = "auto" if self.config.ratio == 1.0 else _Ratio(self.config.ratio)
        if categorical:
            if self.method != "smote":
                raise UserError(
                    f"balancer {self.method}: works on numeric features only; use smote "
                    "(SMOTE-NC) for categorical columns"
                )
            return SMOTENC(
                categorical, sampling_strategy=strategy, k_neighbors=k, random_state=seed
            )
        cls = {"smote": SMOTE, "adasyn": ADASYN, "borderline-smote": BorderlineSMOTE}[self.method]
        key = "n_neighbors" if self.method == "adasyn" else "k_neighbors"
        return cls(sampling_strategy=strategy, random_state=seed, **{key: k})

    def plan(self, data: TaskData, train_rows: np.ndarray, rng: np.random.Generator) -> BalancePlan:
        if data.problem != "classification" or data.classes is None:
            raise UserError(
                f"balancer {self.method}: synthesises minority classes; for regression use "
                "target-bins or resample-bins"
            )
        if set(data.modalities.values()) != {"tabular"}:
            raise UserError(
                f"balancer {self.method}: needs tabular features (this task's inputs are "
                f"{sorted(set(data.modalities.values()))}); use oversample or class-weights"
            )
        cols = list(data.inputs.values())
        frame = data.frame.loc[train_rows, cols]
        labels = data.subset(train_rows).label_ids()
        counts = np.bincount(labels, minlength=len(data.classes))
        present = counts[counts > 0]
        k = min(self.config.k_neighbors, int(present.min()) - 1)
        if k < 1:
            raise UserError(
                f"balancer {self.method}: a class has only {int(present.min())} training row; "
                "SMOTE needs at least 2 per class (use oversample)"
            )
        x = pd.DataFrame(index=frame.index)
        categorical, codes = [], {}
        for j, col in enumerate(cols):
            s = frame[col]
            if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                values = s.astype(np.float64).replace([np.inf, -np.inf], np.nan)
                x[col] = values.fillna(values.median() if values.notna().any() else 0.0)
            else:  # codes for SMOTE-NC; missing is its own category
                cats = pd.Categorical(s.astype(object).where(s.notna(), "\x00missing"))
                codes[col] = cats.categories
                x[col] = cats.codes
                categorical.append(j)
        seed = self.config.seed if self.config.seed is not None else int(rng.integers(2**31))
        sampler = self._sampler(k, categorical, seed)
        try:
            x_res, y_res = sampler.fit_resample(x.to_numpy(), labels)
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"balancer {self.method}: {first}") from None
        new = x_res[len(x) :]
        start = int(data.frame.index.max()) + 1
        synthetic = pd.DataFrame(new, columns=cols, index=pd.RangeIndex(start, start + len(new)))
        for col in cols:
            if col in codes:
                values = codes[col][synthetic[col].astype(int).to_numpy()]
                synthetic[col] = pd.Series(values, index=synthetic.index).replace(
                    "\x00missing", None
                )
            else:
                synthetic[col] = synthetic[col].astype(np.float64)
        classes = np.asarray(data.classes, dtype=object)
        synthetic[data.target] = classes[y_res[len(x) :]]
        after = np.bincount(y_res, minlength=len(data.classes))
        plan = BalancePlan(
            note=f"{self.method}: {len(new)} synthetic training rows (class counts "
            + ", ".join(
                f"{c}: {a} -> {b}" for c, a, b in zip(data.classes, counts, after, strict=True)
            )
            + ")"
        )
        plan.synthetic = synthetic
        return plan


class _Ratio:
    """``sampling_strategy`` callable: every class up to ``ratio`` x the largest."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def __call__(self, y: np.ndarray) -> dict[int, int]:
        counts = np.bincount(y)
        target = int(np.ceil(counts.max() * self.ratio))
        return {int(c): max(target, int(n)) for c, n in enumerate(counts) if n > 0}


class Smote(_Smote):
    """SMOTE (Chawla et al., 2002); SMOTE-NC when there are categorical columns."""

    method = "smote"


class Adasyn(_Smote):
    """ADASYN: more synthetic rows where the minority class is harder to learn (numeric only)."""

    method = "adasyn"


class BorderlineSmote(_Smote):
    """Borderline-SMOTE: synthesise near the class border only (numeric only)."""

    method = "borderline-smote"


__all__ = ["Adasyn", "BorderlineSmote", "Smote"]
