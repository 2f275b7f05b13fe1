"""Text data checks that belong to the text plugin: over-long text cells.

A text cell is cut to :data:`~tuneforge.plugins.text.task.MAX_TEXT_CHARS` characters before
preprocessing, augmentation and tokenization, whatever the validators say: the per-row work of
every later step is bounded by it. The ``long-text`` validator names the rows that it cuts,
and can drop them or fail the run instead.
"""

from __future__ import annotations

from typing import Any, Literal

from tuneforge.components import Finding, FindingKind, Validator, ValidatorConfig
from tuneforge.data import TaskData
from tuneforge.plugins.text.task import MAX_TEXT_CHARS
from tuneforge.plugins.validators import preview


def long_text_rows(data: TaskData, limit: int = MAX_TEXT_CHARS) -> dict[str, list[int]]:
    """Text column -> the rows whose cell has more than ``limit`` characters."""
    out: dict[str, list[int]] = {}
    for role, col in data.inputs.items():
        if data.modalities.get(role) != "text" or col in out:
            continue
        lengths = data.frame[col].dropna().astype(str).str.len()
        rows = [int(r) for r in lengths.index[lengths > limit]]
        if rows:
            out[col] = rows
    return out


class LongText(Validator):
    """Text cells over 1,000,000 characters: cut to that many (policy ``cut``), or the rows
    dropped (``drop``), or the run refused (``fail``).

    No tokenizer reads that far (``tokenizer.max_length`` is at most 8,192 tokens), so a cut
    changes nothing the model sees; it bounds the memory and time of preprocessing,
    augmentation and the truncation count, which otherwise grow with the cell.
    """

    class Config(ValidatorConfig):
        policy: Literal["cut", "drop", "fail"] = "cut"

    def check(self, data: TaskData, task: Any = None) -> list[Finding]:
        out = []
        for col, rows in long_text_rows(data).items():
            longest = int(data.frame.loc[rows, col].astype(str).str.len().max())
            what = {
                "cut": f"cut to their first {MAX_TEXT_CHARS:,} characters",
                "drop": "dropped",
                "fail": "refused",
            }[self.config.policy]
            out.append(
                Finding(
                    FindingKind.LONG_TEXT,
                    "warning",
                    f"{len(rows)} texts in column {col!r} are longer than {MAX_TEXT_CHARS:,} "
                    f"characters (longest {longest:,}), {what}: rows {preview(rows)}",
                    rows,
                    details={"column": col, "max_chars": MAX_TEXT_CHARS, "longest": longest},
                )
            )
        return out
