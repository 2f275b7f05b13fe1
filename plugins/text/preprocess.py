"""Text preprocessors: applied to every split and at prediction time, before the tokenizer."""

from __future__ import annotations

import re
import unicodedata
from typing import Any, ClassVar, Literal

from tuneforge.components import Preprocessor, StrictConfig

_SPACES = re.compile(r"\s+")


class TextNormalize(Preprocessor):
    """Unicode normalisation, optional lower-casing and whitespace collapsing."""

    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    class Config(StrictConfig):
        form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFKC"
        lowercase: bool = False
        collapse_whitespace: bool = True

    def __call__(self, value: Any) -> Any:
        text = str(value)
        if self.config.form:
            text = unicodedata.normalize(self.config.form, text)
        if self.config.lowercase:
            text = text.lower()
        if self.config.collapse_whitespace:
            text = _SPACES.sub(" ", text).strip()
        return text
