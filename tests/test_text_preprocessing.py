"""Text preprocessors, truncation reporting and text augmenters: real NLTK and spaCy (offline),
the real text task's datasets, and the real CLI in subprocesses."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

from tuneforge.data import TaskData
from tuneforge.errors import DataError
from tuneforge.plugins.text.augment import (
    QWERTY_NEIGHBOURS,
    Typo,
    WordDelete,
    WordInsert,
    WordSwap,
)
from tuneforge.plugins.text.hf import HFTokenizer
from tuneforge.plugins.text.preprocess import (
    Lemmatize,
    Lowercase,
    Mask,
    Stem,
    Stopwords,
    TextNormalize,
)
from tuneforge.plugins.text.task import TextClassificationTask

from conftest import one_line_error, run_cli

TASK = TextClassificationTask()
WARNING = re.compile(
    r"tuneforge: warning: (\d+) of (\d+) texts \(([\d.]+)%\) were truncated to max_length "
    r"(\d+) tokens \(tokenizer\.max_length\)"
)


def text_data(texts: list[str], labels: list[str]) -> TaskData:
    frame = pd.DataFrame({"text": texts, "label": labels})
    return TaskData(
        frame,
        {"text": "text"},
        "label",
        sorted(set(labels)),
        "gen.csv",
        modalities={"text": "text"},
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_models) -> HFTokenizer:
    tok = HFTokenizer(HFTokenizer.Config(checkpoint=str(tiny_models["bert"])))
    tok.setup(None)
    return tok


# -- preprocessors ---------------------------------------------------------------------------


def test_lowercase_and_normalize() -> None:
    assert Lowercase()("ÀBC Straße") == "àbc straße"
    assert Lowercase(Lowercase.Config(casefold=True))("ÀBC Straße") == "àbc strasse"
    assert TextNormalize()("  Ｆｕｌｌ\u00a0Width   TEXT ") == "Full Width TEXT"


def test_mask_urls_emails_and_numbers() -> None:
    mask = Mask()
    assert (
        mask("See https://example.com/a?b=1. or www.foo.org, mail bob.smith+x@mail.example.co.uk!")
        == "See [URL]. or [URL], mail [EMAIL]!"
    )
    assert (
        mask("I paid $9.99 at 12:30 for 1,000 items at -5 degrees: mp3, 2nd, 3.5.")
        == "I paid $[NUM] at [NUM]:[NUM] for [NUM] items at [NUM] degrees: mp3, 2nd, [NUM]."
    )
    # A bracket that belongs to the URL stays in it; the one closing the sentence does not.
    assert mask("(https://en.wikipedia.org/wiki/Foo_(bar)) 42") == "([URL]) [NUM]"
    assert mask("order 66 from https://x.org/page/2") == "order [NUM] from [URL]"
    only_numbers = Mask(Mask.Config(urls=False, emails=False, number_token="<n>"))
    assert only_numbers("call 555 or a@b.io") == "call <n> or a@b.io"
    with pytest.raises(ValueError, match="would do nothing"):
        Mask.Config(urls=False, emails=False, numbers=False)


def test_stem_porter_and_snowball_keep_placeholders() -> None:
    assert Stem()("The runners were running quickly, see [URL]!") == (
        "the runner were run quickli, see [URL]!"
    )
    german = Stem(Stem.Config(algorithm="snowball", language="de"))
    assert german("Die Häuser waren schöner") == "die haus war schon"
    english = Stem(Stem.Config(algorithm="snowball", language="english"))
    assert english("generously connected") == "generous connect"
    with pytest.raises(ValueError, match=r"unknown snowball language 'klingon'; valid: arabic"):
        Stem(Stem.Config(algorithm="snowball", language="klingon"))
    with pytest.raises(ValueError, match="English only"):
        Stem(Stem.Config(language="french"))


def test_lemmatize_with_the_lookup_tables() -> None:
    lem = Lemmatize()
    assert lem("The mice were running  fast.") == "The mouse be run  fast."
    assert lem(["The mice", "geese were"]) == ["The mouse", "goose be"]  # one nlp.pipe batch
    with pytest.raises(ValueError, match=r"no lemma lookup table for 'el'; valid: .*\ben\b"):
        Lemmatize(Lemmatize.Config(language="el"))
    with pytest.raises(ValueError, match=r"unknown spaCy language 'zz'; valid: .*\bde\b"):
        Lemmatize(Lemmatize.Config(language="zz"))


def test_stopwords_language_extra_and_keep() -> None:
    text = "Why don't you take the train? It's not far, is it?"
    assert Stopwords()(text) == "train? far, ?"
    keep = Stopwords(Stopwords.Config(keep=["NOT"], extra=["train"]))
    assert keep(text) == "? not far, ?"
    assert Stopwords(Stopwords.Config(language="de"))("Ich habe das Haus nicht gesehen") == (
        "Haus gesehen"
    )
    with pytest.raises(ValueError, match=r"unknown spaCy language 'english'; valid: af"):
        Stopwords(Stopwords.Config(language="english"))


def test_preprocessors_chain_in_list_order_through_the_text_task(tokenizer) -> None:
    texts = [
        "Refund of 25 EUR: see https://shop.example/refund, still NOT charged!",
        "The parcels were shipped to bob@example.org and are late",
    ]
    data = text_data(texts, ["billing", "shipping"])
    chain = [
        TextNormalize(),
        Mask(),
        Lowercase(),
        Stopwords(Stopwords.Config(keep=["not"])),
        Lemmatize(),
    ]
    rows = data.frame.index.to_numpy()
    TASK.bind(tokenizer, None, chain)
    ds = TASK.make_dataset(data, rows, [], seed=0)
    expected = ["refund [num] eur: [url], not charge!", "parcel ship [email] late"]
    assert ds.texts == expected
    assert ds[0]["input_ids"] == tokenizer.encode(expected[:1])["input_ids"][0]
    assert ds[1]["labels"] == 1
    # The order is the list order: lower-casing before masking keeps the placeholders' case.
    TASK.bind(tokenizer, None, [Lowercase(), Mask()])
    swapped = TASK.make_dataset(data, rows, [], seed=0)
    assert swapped.texts[0] == "refund of [NUM] eur: see [URL], still not charged!"


# -- truncation --------------------------------------------------------------------------------


def test_truncation_is_counted_once_per_dataset(tiny_models, capsys) -> None:
    tok = HFTokenizer(HFTokenizer.Config(checkpoint=str(tiny_models["bert"]), max_length=8))
    tok.setup(None)
    long = "refund invoice charged payment card price vat coupon"  # 8 words + 2 special tokens
    data = text_data([long, "my card", long, "my parcel", "late box"], list("ababa"))
    rows = data.frame.index.to_numpy()
    TASK.bind(tok, None, [])
    ds = TASK.make_dataset(data, rows, [], seed=0)
    assert [len(ds[i]["input_ids"]) for i in range(5)] == [8, 4, 8, 4, 4]
    err = capsys.readouterr().err
    assert err.count("tuneforge: warning:") == 1
    assert WARNING.search(err).groups() == ("2", "5", "40.0", "8")
    # Augmented datasets encode per access, but the count is still reported once, up front.
    aug = TASK.make_dataset(data, rows, [WordSwap(WordSwap.Config(p=1.0))], seed=0)
    for i in range(5):
        assert len(aug[i]["input_ids"]) <= 8
    assert capsys.readouterr().err.count("2 of 5 texts") == 1
    # Nothing truncated: no warning.
    short = TASK.make_dataset(text_data(["my card"] * 2, ["a", "b"]), rows[:2], [], 0)
    assert len(short) == 2 and capsys.readouterr().err == ""


def test_pair_truncation_strategies(tiny_models, capsys) -> None:
    def tok(strategy: str) -> HFTokenizer:
        t = HFTokenizer(
            HFTokenizer.Config(
                checkpoint=str(tiny_models["bert"]), max_length=8, truncation=strategy
            )
        )
        t.setup(None)
        return t

    first, second = ["refund invoice charged payment"], ["my parcel is late"]

    def tokens(strategy: str) -> list[str]:
        t = tok(strategy)
        return t.tokenizer.convert_ids_to_tokens(t.encode(first, second)["input_ids"][0])

    cls, sep = "[CLS]", "[SEP]"
    assert tokens("longest_first") == [cls, "refund", "invoice", sep, "my", "parcel", "is", sep]
    assert tokens("only_first") == [cls, "refund", sep, "my", "parcel", "is", "late", sep]
    assert tokens("only_second") == [
        *[cls, "refund", "invoice", "charged", "payment", sep, "my", sep]
    ]
    # Single texts ignore the pair strategy.
    assert len(tok("only_second").encode(["refund " * 20])["input_ids"][0]) == 8
    assert tok("only_first").report_truncation(first, second) == 1
    assert "1 of 1 text pairs (100.0%) were truncated" in capsys.readouterr().err
    # only_second cannot shorten a pair whose first text alone is too long: a one-line error
    # before training, naming the pair.
    with pytest.raises(
        DataError, match=r"tokenizer\.truncation: only_second cannot fit .*first: 'a"
    ):
        tok("only_second").report_truncation(["my card", "a " * 9], ["late", "box"])


# -- augmenters --------------------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog again"


@pytest.mark.parametrize(
    "aug",
    [
        WordSwap(WordSwap.Config(p=1.0, fraction=0.3)),
        WordDelete(WordDelete.Config(p=1.0, rate=0.3)),
        WordInsert(WordInsert.Config(p=1.0, fraction=0.3)),
        Typo(Typo.Config(p=1.0, rate=0.5)),
    ],
    ids=lambda a: type(a).__name__,
)
def test_augmenters_are_seeded_change_text_and_pairs_and_respect_p(aug) -> None:
    example = {"text": TEXT, "text_pair": "hello there my friend", "label": 1}
    a = aug(example, random.Random(7))
    b = aug(example, random.Random(7))
    assert a == b and a["text"] != TEXT and a["text_pair"] != example["text_pair"]
    assert a["label"] == 1 and example["text"] == TEXT  # the input is not modified
    outputs = {aug(example, random.Random(seed))["text"] for seed in range(10)}
    assert len(outputs) > 1
    off = type(aug)(aug.config.model_copy(update={"p": 0.0}))
    assert all(off(example, random.Random(s)) == example for s in range(10))
    half = type(aug)(aug.config.model_copy(update={"p": 0.5}))
    changed = sum(half(example, random.Random(s))["text"] != TEXT for s in range(200))
    assert 60 < changed < 140


def test_word_augmenters_keep_the_row_words() -> None:
    words = Counter(TEXT.split())
    rng = random.Random(0)
    for _ in range(20):
        swapped = WordSwap(WordSwap.Config(p=1.0, fraction=0.2)).augment_text(TEXT, rng)
        assert Counter(swapped.split()) == words
        deleted = WordDelete(WordDelete.Config(p=1.0, rate=0.5)).augment_text(TEXT, rng)
        assert not Counter(deleted.split()) - words and deleted
        inserted = WordInsert(WordInsert.Config(p=1.0, fraction=0.2)).augment_text(TEXT, rng)
        extra = Counter(inserted.split()) - words
        assert sum(extra.values()) == 2 and set(extra) <= set(words)  # int(0.2 * 10) words
    assert WordDelete(WordDelete.Config(rate=0.99)).augment_text("a b c", random.Random(1))
    assert WordSwap(WordSwap.Config(p=1.0)).augment_text("too short", rng) == "too short"


@pytest.mark.parametrize("op", ["swap", "drop", "duplicate", "keyboard"])
def test_typo_operations(op: str) -> None:
    typo = Typo(Typo.Config(p=1.0, rate=1.0, ops=[op]))
    rng = random.Random(3)
    for word in ["Hello", "keyboard", "typing"]:
        out = typo.typo(word, rng)
        assert out != word
        if op == "swap":
            assert len(out) == len(word) and sorted(out) == sorted(word)
            assert sum(a != b for a, b in zip(out, word, strict=True)) == 2
        elif op == "drop":
            assert len(out) == len(word) - 1
        elif op == "duplicate":
            assert len(out) == len(word) + 1 and any(a == b for a, b in pairwise(out))
        else:
            [(old, new)] = [(a, b) for a, b in zip(word, out, strict=True) if a != b]
            assert new.lower() in QWERTY_NEIGHBOURS[old.lower()] and new.isupper() == old.isupper()
    # Spacing, placeholders and short words are kept.
    assert typo.augment_text("an  [URL], ok", rng) == "an  [URL], ok"


def test_qwerty_map_is_symmetric() -> None:
    assert len(QWERTY_NEIGHBOURS) == 26
    assert all(a in QWERTY_NEIGHBOURS[b] for a, ns in QWERTY_NEIGHBOURS.items() for b in ns)


def test_augmenter_configs_reject_useless_values() -> None:
    from pydantic import ValidationError

    for bad in (
        lambda: WordSwap.Config(fraction=0),
        lambda: WordDelete.Config(rate=1.0),
        lambda: Typo.Config(ops=[]),
        lambda: Typo.Config(ops=["reverse"]),
        lambda: WordInsert.Config(p=1.5),
    ):
        with pytest.raises(ValidationError):
            bad()


# -- the CLI -----------------------------------------------------------------------------------


def test_listing_components_imports_neither_nltk_nor_spacy() -> None:
    code = (
        "import sys\n"
        "from tuneforge.cli import main\n"
        "assert main(['components', 'tokenizers']) == 0\n"
        "print('HEAVY', [m for m in ('nltk', 'spacy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "lemmatize" in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("component", "module", "package"),
    [("lemmatize", "spacy", "spacy"), ("stem", "nltk", "nltk")],
)
def test_a_missing_package_is_a_one_line_error_naming_it(
    project, tmp_path: Path, component: str, module: str, package: str
) -> None:
    fake = tmp_path / "fake-site"
    (fake / module).mkdir(parents=True)
    (fake / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    cfg = project.config(preprocessors=["text-normalize", component])
    line = one_line_error(run_cli("validate", str(cfg), env={"PYTHONPATH": str(fake)}))
    assert line.startswith(f"tuneforge: error: preprocessors[1]: {component}: ")
    assert f"needs the package {package!r} (pip install {package}" in line


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"name": "stem", "algorithm": "lancaster"},
            "preprocessors[0].algorithm: Input should be 'porter' or 'snowball'",
        ),
        (
            {"name": "stem", "algorithm": "snowball", "language": "klingon"},
            "preprocessors[0]: stem: unknown snowball language 'klingon'; valid: arabic,",
        ),
        (
            {"name": "stopwords", "words": ["x"]},
            "preprocessors[0].words: unknown key",
        ),
    ],
)
def test_bad_preprocessor_parameters_name_the_key(project, entry: dict, expected: str) -> None:
    line = one_line_error(run_cli("validate", str(project.config(preprocessors=[entry]))))
    assert expected in line


def test_bad_augmenter_parameter_names_the_key(project) -> None:
    cfg = project.config(augmenters=[{"name": "typo", "rate": 0}])
    assert "augmenters[0].rate: Input should be greater than 0" in one_line_error(
        run_cli("validate", str(cfg))
    )


def test_run_reports_truncated_rows_per_split(project) -> None:
    cfg = project.config(tokenizer={"name": "hf-tokenizer", "max_length": 8}, trainer={"epochs": 1})
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    reported = [m.groups() for m in WARNING.finditer(proc.stderr)]
    # The tiny BERT has one token per word: a row is truncated when words + [CLS] + [SEP] > 8.
    run = project.root / "runs" / "run"
    split = json.loads((run / "split.json").read_text())
    frame = pd.read_csv(project.data)
    expected = []
    for part in ("train", "val", "test"):
        rows = split[part]
        n = sum(len(frame.loc[r, "text"].split()) + 2 > 8 for r in rows)
        expected.append((str(n), str(len(rows)), f"{100 * n / len(rows):.1f}", "8"))
    assert reported == expected and all(int(n) > 0 for n, *_ in expected), proc.stderr


def test_run_with_chained_preprocessors_and_augmenters(project) -> None:
    cfg = project.config(
        preprocessors=[
            "text-normalize",
            "mask",
            "lowercase",
            {"name": "stopwords", "keep": ["not"]},
            {"name": "stem", "algorithm": "snowball"},
        ],
        augmenters=[
            {"name": "word-swap", "p": 0.3},
            {"name": "word-delete", "p": 0.2},
            {"name": "word-insert", "p": 0.2},
            {"name": "typo", "p": 0.3, "rate": 0.2},
        ],
        trainer={"epochs": 1},
    )
    proc = run_cli("run", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "truncated" not in proc.stderr
    metrics = json.loads((project.root / "runs" / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["accuracy"] <= 1
    saved = (project.root / "runs" / "run" / "config.yaml").read_text()
    assert "snowball" in saved and "word-insert" in saved
