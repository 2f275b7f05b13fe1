"""Tabular validators: missing feature values (imputed by the task's preprocessing)."""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd

from tuneforge.components import Finding, FindingKind, Validator, ValidatorConfig
from tuneforge.data import TaskData
from tuneforge.plugins.validators import preview


class MissingFeatures(Validator):
    """Feature columns with missing values.

    Policy ``impute`` (default) keeps the rows: the task's preprocessing fills numeric gaps
    with the train split's median/mean (``model.impute``) and gives categorical gaps their own
    code; ``drop`` removes the rows; ``warn`` only reports; ``fail`` stops.
    """

    class Config(ValidatorConfig):
        policy: Literal["impute", "warn", "drop", "fail"] = "impute"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out = []
        for col in dict.fromkeys(data.inputs.values()):
            values = data.frame[col]
            mask = values.isna()
            if pd.api.types.is_numeric_dtype(values):
                mask |= values.isin([float("inf"), float("-inf")])
            rows = [int(r) for r in data.frame.index[mask]]
            if rows:
                then = (
                    "imputed with train-split statistics"
                    if self.config.policy == "impute"
                    else "left as is"
                )
                out.append(
                    Finding(
                        FindingKind.MISSING_FEATURE,
                        "warning",
                        f"{len(rows)} rows have no value in feature {col!r} ({then}): rows "
                        f"{preview(rows)}",
                        rows,
                        details={"column": col},
                    )
                )
        return out
