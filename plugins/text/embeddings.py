"""Frozen sentence embeddings for text tasks, and the embedding baseline.

:func:`is_sentence_encoder` tells a sentence-transformers style checkpoint (``modules.json`` or
``sentence_bert_config.json`` beside a transformers ``config.json``, mean pooling) from a plain
one. :class:`EmbeddingCache` embeds texts with such an encoder the way sentence-transformers'
all-MiniLM models do: the attention-mask-weighted mean of the last hidden state, then L2
normalisation, batched under ``torch.inference_mode``, cached per task instance by row (and
text, so that another file's row with the same label is not confused with it). A text pair is
encoded as one sequence, the tokenizer's own pair encoding (``[CLS] text [SEP] pair [SEP]``
for BERT), and mean-pooled over both parts.

:func:`embedding_baseline` fits scikit-learn's ``LogisticRegression`` on the training split's
embeddings and scores it on validation and test with the run's metrics: a reference model
that shows whether fine-tuning the encoder paid off.

torch, transformers and scikit-learn are imported inside functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.plugins.vector_cache import VectorCache

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from tuneforge.components import Metric
    from tuneforge.data import TaskData
    from tuneforge.split import Split

#: Files that mark a sentence-transformers checkpoint.
SENTENCE_FILES = ("modules.json", "sentence_bert_config.json")
#: Tokens embedded per text when the checkpoint does not say (``max_seq_length``).
DEFAULT_MAX_LENGTH = 256
#: Texts per forward pass.
BATCH_SIZE = 64
#: ``test_details`` / metrics key prefix of the embedding baseline.
PREFIX = "embedding_baseline"


def _pooling_config(folder: Path) -> dict[str, Any] | None:
    """The Pooling module's config.json named in ``modules.json``, if any."""
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            try:
                cfg = json.loads(
                    (folder / str(module.get("path", "")) / "config.json").read_text("utf-8")
                )
            except (OSError, ValueError):
                return None
            return cfg if isinstance(cfg, dict) else None
    return None


def is_sentence_encoder(path: str | Path | None) -> bool:
    """Whether ``path`` is a local sentence-transformers checkpoint with mean pooling: a
    folder with ``config.json`` and ``modules.json`` or ``sentence_bert_config.json``, whose
    Pooling module (when it has one) pools by the mean of the tokens."""
    if path is None:
        return False
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return False
    if not any((folder / name).is_file() for name in SENTENCE_FILES):
        return False
    pooling = _pooling_config(folder)
    if pooling is None:
        return True
    return bool(pooling.get("pooling_mode_mean_tokens", False))


def max_length(folder: Path, tokenizer: Any) -> int:
    """``max_seq_length`` of ``sentence_bert_config.json``, within the tokenizer's limit."""
    n = DEFAULT_MAX_LENGTH
    try:
        cfg = json.loads((folder / "sentence_bert_config.json").read_text(encoding="utf-8"))
        n = int(cfg.get("max_seq_length") or n)
    except (OSError, ValueError, TypeError):
        pass
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < 1_000_000:
        n = min(n, own)
    return max(n, 8)


def mean_pool(hidden: Any, mask: Any) -> Any:
    """The attention-mask-weighted mean of ``hidden`` (batch x tokens x dims), L2-normalised
    (sentence-transformers' Pooling(mean) + Normalize)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


def encode(
    folder: str | Path,
    texts: list[str],
    pairs: list[str] | None = None,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of ``texts`` (and ``pairs``): float32, one row
    per text, by the encoder in ``folder`` (transformers ``AutoModel``), on a GPU if there is
    one. Texts are batched by length (little padding); the order of the result is ``texts``'."""
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from tuneforge.errors import UserError
    from tuneforge.plugins.text.hf import quiet_transformers

    quiet_transformers()
    folder = Path(folder)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "unused weights (pooler)" is expected
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        model = AutoModel.from_pretrained(str(folder))
    except Exception as exc:  # corrupt files raise library-specific errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"sentence encoder {folder}: cannot load: {first}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    limit = max_length(folder, tokenizer)
    dims = int(model.config.hidden_size)
    out = np.zeros((len(texts), dims), dtype=np.float32)
    order = np.argsort([len(t) + (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)])
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                [pairs[i] for i in idx] if pairs is not None else None,
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in enc.items()}
            hidden = model(**enc).last_hidden_state
            out[idx] = mean_pool(hidden.float(), enc["attention_mask"]).cpu().numpy()
    return out


class EmbeddingCache(VectorCache):
    """A task instance's embeddings, keyed by (row, text, pair): computed once per row."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder: str | None = None

    def features(
        self, encoder: str, rows: Any, texts: list[str], pairs: list[str] | None
    ) -> np.ndarray:

        if encoder != self.encoder:  # another encoder: nothing cached applies
            self.vectors, self.encoder = {}, encoder
        keys = [
            (int(r), t, pairs[i] if pairs is not None else None)
            for i, (r, t) in enumerate(zip(rows, texts, strict=True))
        ]
        return self.lookup(
            keys,
            lambda todo: encode(
                encoder,
                [texts[i] for i in todo],
                [pairs[i] for i in todo] if pairs is not None else None,
            ),
        )


# -- the embedding baseline ----------------------------------------------------------------


def _classification_scores(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: list[np.ndarray], n_classes: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Logistic regression on the training embeddings: ``(y_pred, y_score)`` per eval set,
    with a probability column for every class (0 for a class the train split lacks)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    with threadpool_limits(limits=1):  # small dense fits: threads only contend
        model.fit(x_train, y_train)
    out = []
    for x in x_eval:
        probs = np.zeros((len(x), n_classes))
        if len(x):
            probs[:, model.classes_] = model.predict_proba(x)
        out.append((probs.argmax(axis=1), probs))
    return out


def embedding_baseline(
    task: Any, data: TaskData, split: Split, metrics: dict[str, Metric]
) -> tuple[dict[str, float], dict[str, Any]]:
    """The embedding baseline of a single-label classification task: frozen embeddings
    (:meth:`Task.frozen_features`) + ``LogisticRegression(C=1)`` fitted on the training split,
    scored with every metric of the run on validation and test.

    Returns ``(test scores as {"embedding_baseline_<metric>": value}, a record for
    test_details: encoder, rows, seconds, the val and test scores)``; both empty when the
    task has no frozen features or the training split has a single class.
    """
    import numpy as np

    train, val, test = (np.asarray(r) for r in (split.train, split.val, split.test))
    rows = np.concatenate([train, val, test])
    started = time.perf_counter()
    feats = task.frozen_features(data, rows)
    if feats is None:
        return {}, {}
    labels = task.encode_labels(data, rows)
    n_tr, n_va = len(train), len(val)
    y_train = labels[:n_tr]
    if len(np.unique(y_train)) < 2:
        return {}, {}
    parts = [(val, feats[n_tr : n_tr + n_va], labels[n_tr : n_tr + n_va])]
    parts.append((test, feats[n_tr + n_va :], labels[n_tr + n_va :]))
    scored = _classification_scores(
        feats[:n_tr], y_train, [p[1] for p in parts], len(data.classes or []), 0
    )
    record: dict[str, Any] = {
        "model": "frozen mean-pooled embeddings + logistic regression (C=1)",
        "encoder": task.model_builder.sentence_encoder(),
        "dims": int(feats.shape[1]),
        "train_rows": n_tr,
    }
    for name, (part, _, y_true), (y_pred, y_score) in zip(
        ("val", "test"), parts, scored, strict=True
    ):
        if not len(part):
            continue
        record[name] = {m: float(metric(y_true, y_pred, y_score)) for m, metric in metrics.items()}
    record["seconds"] = round(time.perf_counter() - started, 3)
    test_scores = {f"{PREFIX}_{m}": v for m, v in (record.get("test") or {}).items()}
    return test_scores, record
