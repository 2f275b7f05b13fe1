"""Text preprocessors: applied to every split and at prediction time, before the tokenizer.

Each one maps a string to a string; ``preprocessors: [...]`` chains them in list order. NLTK
and spaCy are imported when a component is built, never when this module is imported, and a
missing package is a ``ValueError`` that names what to install (the pipeline reports it as
``preprocessors[i]: ...``).
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from tuneforge.components import Preprocessor, StrictConfig

_SPACES = re.compile(r"\s+")


def _require(module: str, package: str, component: str, extra: str = "") -> Any:
    """Import ``module`` or raise a ValueError that names the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"{component} needs the package {package!r} (pip install {package}{extra})"
        ) from None


class _TextPreprocessor(Preprocessor):
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    def transform(self, text: str) -> str:
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        return self.transform(str(value))


class TextNormalize(_TextPreprocessor):
    """Unicode normalisation, optional lower-casing and whitespace collapsing."""

    class Config(StrictConfig):
        form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFKC"
        lowercase: bool = False
        collapse_whitespace: bool = True

    def transform(self, text: str) -> str:
        if self.config.form:
            text = unicodedata.normalize(self.config.form, text)
        if self.config.lowercase:
            text = text.lower()
        if self.config.collapse_whitespace:
            text = _SPACES.sub(" ", text).strip()
        return text


class Lowercase(_TextPreprocessor):
    """Lower-case the text; ``casefold: true`` also folds ``ß`` to ``ss`` and the like."""

    class Config(StrictConfig):
        casefold: bool = Field(False, description="str.casefold (aggressive) instead of str.lower")

    def transform(self, text: str) -> str:
        return text.casefold() if self.config.casefold else text.lower()


# -- masking -------------------------------------------------------------------------------

_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)[^\s<>\"']+", re.IGNORECASE)
_URL_TRAIL = ".,;:!?)]}"
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b", re.IGNORECASE)
# A number stands alone: "3", "-2.5", "1,000", "12:30" -> two numbers; not "mp3" or "2nd".
_NUMBER = re.compile(r"(?<![\w.,])[-+]?\d+(?:[.,]\d+)*(?![\w])")


class Mask(_TextPreprocessor):
    """Replace URLs, e-mail addresses and numbers with placeholder tokens.

    URLs are masked first (so ``https://x.org/page/2`` is one ``[URL]``), then e-mails, then
    numbers. The placeholders reach the tokenizer as ordinary text: add them to its vocabulary
    (``tokenizer.add_tokens``) if they should be single tokens.
    """

    class Config(StrictConfig):
        urls: bool = Field(True, description="mask http(s)://, ftp://... and www. addresses")
        emails: bool = Field(True, description="mask e-mail addresses")
        numbers: bool = Field(True, description="mask stand-alone numbers (3, -2.5, 1,000)")
        url_token: str = "[URL]"
        email_token: str = "[EMAIL]"
        number_token: str = "[NUM]"

        @model_validator(mode="after")
        def _not_empty(self) -> Mask.Config:
            if not (self.urls or self.emails or self.numbers):
                raise ValueError("urls, emails and numbers are all false: mask would do nothing")
            return self

    def _url(self, match: re.Match[str]) -> str:
        url = match.group(0)
        end = len(url)
        # Sentence punctuation after a URL is not part of it; a closing bracket is when it
        # closes one opened inside the URL (wiki links: .../Foo_(bar)).
        while end and url[end - 1] in _URL_TRAIL:
            char = url[end - 1]
            if char == ")" and url.count("(", 0, end) >= url.count(")", 0, end):
                break
            end -= 1
        return self.config.url_token + url[end:]

    def transform(self, text: str) -> str:
        cfg = self.config
        if cfg.urls:
            text = _URL.sub(self._url, text)
        if cfg.emails:
            text = _EMAIL.sub(lambda _: cfg.email_token, text)
        if cfg.numbers:
            text = _NUMBER.sub(lambda _: cfg.number_token, text)
        return text


# -- stemming ------------------------------------------------------------------------------

_WORD = re.compile(r"\[[^\[\]\s]+\]|\w+")

#: ISO 639-1 codes accepted for the Snowball stemmer's language names.
SNOWBALL_CODES = {
    "ar": "arabic",
    "da": "danish",
    "nl": "dutch",
    "en": "english",
    "fi": "finnish",
    "fr": "french",
    "de": "german",
    "hu": "hungarian",
    "it": "italian",
    "no": "norwegian",
    "nb": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "es": "spanish",
    "sv": "swedish",
}


class Stem(_TextPreprocessor):
    """NLTK stemming of every word (Porter, or Snowball in its languages); no data download.

    Stems are lower-case (both stemmers lower-case). Punctuation, spacing and placeholders such
    as ``[URL]`` are kept as they are.
    """

    class Config(StrictConfig):
        algorithm: Literal["porter", "snowball"] = "porter"
        language: str = Field(
            "english",
            description="Snowball language (english, german... or en, de...); porter is English",
        )

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        _require("nltk", "nltk", "stem")
        from nltk.stem import PorterStemmer, SnowballStemmer

        language = self.config.language.lower()
        language = SNOWBALL_CODES.get(language, language)
        if self.config.algorithm == "porter":
            if language != "english":
                raise ValueError(
                    f"the porter stemmer is English only (language {self.config.language!r}); "
                    "use algorithm: snowball"
                )
            self._stem = PorterStemmer().stem
        else:
            valid = [lang for lang in SnowballStemmer.languages if lang != "porter"]
            if language not in valid:
                raise ValueError(
                    f"unknown snowball language {self.config.language!r}; valid: {', '.join(valid)}"
                )
            self._stem = SnowballStemmer(language).stem
        self._cache: dict[str, str] = {}

    def stem(self, word: str) -> str:
        out = self._cache.get(word)
        if out is None:
            out = self._stem(word)
            if len(self._cache) < 200_000:
                self._cache[word] = out
        return out

    def _sub(self, match: re.Match[str]) -> str:
        word = match.group(0)
        return word if word.startswith("[") else self.stem(word)

    def transform(self, text: str) -> str:
        return _WORD.sub(self._sub, text)


# -- spaCy: lemmatisation and stop words -----------------------------------------------------


def _spacy_languages() -> list[str]:
    import pkgutil

    import spacy.lang

    return sorted(m.name for m in pkgutil.iter_modules(spacy.lang.__path__) if m.ispkg)


def _spacy_language_class(language: str) -> Any:
    """spaCy's Language subclass for ``language``; a clear ValueError for unknown codes."""
    import spacy.util

    valid = _spacy_languages()
    if language not in valid:
        raise ValueError(f"unknown spaCy language {language!r}; valid: {', '.join(valid)}")
    try:
        return spacy.util.get_lang_class(language)
    except ImportError as exc:  # a language whose tokenizer needs an extra package
        raise ValueError(f"spaCy language {language!r} cannot be loaded: {exc}") from None


class Lemmatize(_TextPreprocessor):
    """spaCy lemmatisation: a blank pipeline with the lookup lemmatizer (no model download).

    The lookup tables come from ``spacy-lookups-data``; words they do not list are kept as they
    are, and so is the spacing. The pipeline is built once per component. Given a list
    of strings, the component lemmatises them in one ``nlp.pipe`` batch.
    """

    class Config(StrictConfig):
        language: str = Field("en", description="spaCy language code with a lemma lookup table")
        batch_size: int = Field(256, ge=1, description="nlp.pipe batch size for lists of texts")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        extra = " spacy-lookups-data"
        _require("spacy", "spacy", "lemmatize", extra)
        _require("spacy_lookups_data", "spacy-lookups-data", "lemmatize")
        from spacy.util import registry

        language = self.config.language
        cls = _spacy_language_class(language)
        tables = registry.lookups.get_all()
        valid = sorted(lang for lang, entry in tables.items() if "lemma_lookup" in entry)
        if language not in valid:
            raise ValueError(
                f"spacy-lookups-data has no lemma lookup table for {language!r}; "
                f"valid: {', '.join(valid)}"
            )
        nlp = cls()
        nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
        nlp.initialize()
        self.nlp = nlp

    @staticmethod
    def _join(doc: Any) -> str:
        return "".join(token.lemma_ + token.whitespace_ for token in doc)

    def transform(self, text: str) -> str:
        return self._join(self.nlp(text))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            docs = self.nlp.pipe((str(v) for v in value), batch_size=self.config.batch_size)
            return [self._join(doc) for doc in docs]
        return self.transform(str(value))


#: Words, with English-style contractions split as spaCy does: "don't" -> "do" + "n't".
_TOKEN = re.compile(r"\w+?(?=n['’]t\b)|n['’]t\b|['’]\w+|\w+")


class Stopwords(_TextPreprocessor):
    """Remove stop words: spaCy's list for ``language``, plus ``extra``, minus ``keep``.

    Words compare case-insensitively, contractions split as spaCy splits them (``don't`` is
    ``do`` + ``n't``); punctuation stays and spacing is collapsed. A text made
    only of stop words becomes empty (the ``empty-text`` validator does not see that: keep
    negations such as ``not`` with ``keep`` when they carry the label).
    """

    class Config(StrictConfig):
        language: str = Field("en", description="spaCy language code")
        extra: list[str] = Field(default_factory=list, description="more words to remove")
        keep: list[str] = Field(default_factory=list, description="stop words to keep")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        _require("spacy", "spacy", "stopwords")
        cls = _spacy_language_class(self.config.language)
        words = {w.lower().replace("’", "'") for w in cls.Defaults.stop_words}
        words |= {w.lower() for w in self.config.extra}
        self.words = frozenset(words - {w.lower() for w in self.config.keep})

    def _sub(self, match: re.Match[str]) -> str:
        word = match.group(0)
        return "" if word.lower().replace("’", "'") in self.words else word

    def transform(self, text: str) -> str:
        return _SPACES.sub(" ", _TOKEN.sub(self._sub, text)).strip()
