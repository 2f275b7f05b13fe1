"""Built-in data-quality validators (modality-agnostic; text-aware where the task says so).

Each validator reports :class:`~tuneforge.components.Finding` objects; the pipeline applies
the validator's ``policy``: ``warn`` (report only), ``drop`` (remove the rows) or ``fail``
(stop with an error naming the rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from tuneforge import hookimpl
from tuneforge.components import Finding, FindingKind, Policy, Validator, ValidatorConfig
from tuneforge.hookspecs import Register

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where it is used (fast start-up)
    import pandas as pd

    from tuneforge.data import TaskData


def _rows(index: pd.Index | list[Any]) -> list[int]:
    return [int(i) for i in index]


def preview(items: list[Any], n: int = 5, sep: str = ", ") -> str:
    """The first ``n`` items, and how many there are in all when there are more."""
    head = sep.join(map(str, items[:n]))
    return f"{head}{sep}... ({len(items)} in all)" if len(items) > n else head


def label_strings(data: TaskData) -> pd.Series:
    """The target column as strings, to group rows by label and to show labels; a
    multi-label row's label set (a tuple of names) as ``{a, b}``, missing stays NaN."""
    values = data.frame[data.target]
    if data.problem != "multilabel":
        return values.astype(str)
    return values.map(lambda v: "{" + ", ".join(map(str, v)) + "}" if isinstance(v, tuple) else v)


def content_keys(data: TaskData, task: Any) -> pd.Series:
    """The task's duplicate key when it defines one (:meth:`Task.content_keys`), else the raw
    input columns joined."""
    keys = task.content_keys(data) if task is not None else None
    if keys is not None:
        return keys
    cols = list(data.inputs.values())
    return data.frame[cols].astype(str).agg("\x1f".join, axis=1)


class Schema(Validator):
    """Label values and column types the task can use (non-string text, mixed label types)."""

    class Config(ValidatorConfig):
        policy: Policy = "fail"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out = []
        for role, col in data.inputs.items():
            if data.modalities.get(role) == "text":
                values = data.frame[col].dropna()
                bad = values.index[~values.map(lambda v: isinstance(v, str))]
                if len(bad):
                    rows = _rows(bad)
                    out.append(
                        Finding(
                            FindingKind.NON_TEXT_VALUE,
                            "warning",
                            f"column {col!r} holds non-text values in rows {preview(rows)}",
                            rows,
                        )
                    )
        if data.target is not None and data.classes is not None:
            kinds = {type(c).__name__ for c in data.classes}
            if len(kinds) > 1:
                out.append(
                    Finding(
                        FindingKind.MIXED_LABEL_TYPES,
                        "error",
                        f"label column {data.target!r} mixes value types {sorted(kinds)}",
                        [],
                    )
                )
        return out


class Missing(Validator):
    """Rows whose label or any input column is missing."""

    class Config(ValidatorConfig):
        policy: Policy = "drop"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        cols = list(data.inputs.values()) + ([data.target] if data.target else [])
        out = []
        for col in cols:
            bad = data.frame.index[data.frame[col].isna()]
            if len(bad):
                rows = _rows(bad)
                out.append(
                    Finding(
                        FindingKind.MISSING_VALUE,
                        "warning",
                        f"{len(rows)} rows have no value in column {col!r}: rows {preview(rows)}",
                        rows,
                        details={"column": col},
                    )
                )
        return out


class EmptyText(Validator):
    """Text inputs that are empty or only whitespace."""

    class Config(ValidatorConfig):
        policy: Policy = "drop"
        min_chars: int = Field(1, ge=1, description="shorter stripped texts count as empty")

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out = []
        for role, col in data.inputs.items():
            if data.modalities.get(role) != "text":
                continue
            values = data.frame[col].dropna().astype(str).str.strip()
            bad = values.index[values.str.len() < self.config.min_chars]
            if len(bad):
                rows = _rows(bad)
                out.append(
                    Finding(
                        FindingKind.EMPTY_TEXT,
                        "warning",
                        f"{len(rows)} empty texts in column {col!r}: rows {preview(rows)}",
                        rows,
                        details={"column": col},
                    )
                )
        return out


class Duplicates(Validator):
    """Repeated examples (same normalised input and label); drop keeps the first of each group."""

    class Config(ValidatorConfig):
        policy: Policy = "warn"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        import pandas as pd

        keys = content_keys(data, task)
        frame = pd.DataFrame({"key": keys})
        if data.target:
            frame["label"] = label_strings(data)
        dup = frame.duplicated(keep=False)
        if not dup.any():
            return []
        extra = frame.duplicated(keep="first")
        rows = _rows(frame.index[dup])
        groups = int(frame[dup].drop_duplicates().shape[0])
        return [
            Finding(
                FindingKind.DUPLICATE,
                "warning",
                f"{int(extra.sum())} duplicate rows in {groups} groups (same text and label): rows {preview(rows)}",
                rows,
                drop=_rows(frame.index[extra]),
                details={"groups": groups},
            )
        ]


class ConflictingLabels(Validator):
    """The same input with different labels: at most one can be right."""

    class Config(ValidatorConfig):
        policy: Policy = "drop"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        if not data.target:
            return []
        keys = content_keys(data, task)
        labels = label_strings(data)
        n_labels = labels.groupby(keys).transform("nunique")
        bad = n_labels.index[n_labels > 1]
        if not len(bad):
            return []
        rows = _rows(bad)
        groups = int(keys.loc[bad].nunique())
        examples = []
        for key in keys.loc[bad].unique()[:3]:
            idx = keys.index[keys == key]
            examples.append(
                f"rows {', '.join(map(str, _rows(idx)))} -> {sorted(set(labels.loc[idx]))}"
            )
        return [
            Finding(
                FindingKind.CONFLICTING_LABELS,
                "warning",
                f"{groups} inputs appear with different labels ({len(rows)} rows): "
                + "; ".join(examples),
                rows,
                details={"groups": groups},
            )
        ]


class ClassSize(Validator):
    """Classes too small to learn from or to stratify across train/val/test.

    A class with fewer than 3 rows cannot be spread over train/val/test. By policy it stays in
    train only (``warn``, the split says so), is dropped (``drop``), stops the run (``fail``),
    or, with ``merge_into``, is relabelled into that class (a new or an existing one).
    """

    class Config(ValidatorConfig):
        policy: Policy = "warn"
        min_count: int = Field(10, ge=1, description="classes with fewer rows are reported")
        merge_into: str | None = Field(
            None, description="relabel classes with fewer than 3 rows into this class"
        )

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        if data.classes is None or not data.target:
            return []
        target = data.frame[data.target]
        label_sets = data.problem == "multilabel"  # a tuple of label names per row
        if label_sets:  # one count per label: the rows whose set holds it
            target = target.dropna().explode().dropna()
        counts = target.value_counts()
        small = counts[counts < self.config.min_count]
        out = []
        for cls, n in small.items():
            rows = _rows(target.index[target == cls])
            tiny = n < 3
            merge = (
                self.config.merge_into
                if tiny and self.config.merge_into not in (None, cls)
                else None
            )
            relabel = {r: merge for r in rows} if merge is not None else None
            if merge is not None:
                note = f"merged into {merge!r}"
            elif tiny and label_sets:
                note = "too few for every split to have it unless dropped"
            elif tiny:
                note = "too few to stratify: kept in train only unless dropped"
            else:
                note = "stratified across the splits"
            if relabel and label_sets:  # the label replaced inside each row's set
                sets = data.frame[data.target]
                relabel = {
                    r: tuple(dict.fromkeys(merge if x == cls else x for x in sets.at[r]))
                    for r in rows
                }
            what = "label" if label_sets else "class"
            out.append(
                Finding(
                    FindingKind.SMALL_CLASS,
                    "warning",
                    f"{what} {cls!r} has only {int(n)} rows (< {self.config.min_count}); {note}",
                    rows,
                    # Only classes that cannot be stratified are dropped by the drop policy.
                    drop=rows if tiny else [],
                    relabel=relabel,
                    details={"class": str(cls), "count": int(n)},
                )
            )
        unused = [c for c in (data.classes or []) if c not in counts.index]
        if unused:
            out.append(
                Finding(
                    FindingKind.UNUSED_CLASS, "info", f"declared classes with no rows: {unused}", []
                )
            )
        ratio = counts.max() / max(counts.min(), 1)
        if ratio >= 10:
            out.append(
                Finding(
                    FindingKind.IMBALANCE,
                    "warning",
                    f"largest class is {ratio:.0f}x the smallest; consider a balancer",
                    [],
                    details={"ratio": float(ratio)},
                )
            )
        return out


@hookimpl
def register_validators(register: Register) -> None:
    register("schema", Schema)
    register("missing", Missing)
    register("empty-text", EmptyText)
    register("duplicates", Duplicates)
    register("conflicting-labels", ConflictingLabels)
    register("class-size", ClassSize)
