"""A third-party tuneforge plugin: bring your own torch model.

It registers one model builder, ``bag-of-words``: a ``torch.nn.EmbeddingBag`` over the
tokenizer's ids, then a linear layer (or a small MLP), trained from scratch. It works with
the built-in text tasks (``text-classification``, ``text-regression``, ``text-multilabel``):
the task hands it a :class:`tuneforge.components.ModelSpec` whose ``inputs`` hold the
tokenizer's ``vocab_size`` and ``pad_token_id``.

Declared in this distribution's ``pyproject.toml``::

    [project.entry-points.tuneforge]
    bow = "tuneforge_bow"

The builder is registered as a lazy ``"module:Attr"`` string, so ``tuneforge plugins`` and
``tuneforge components`` never import torch for it.
"""

from __future__ import annotations

import tuneforge
from tuneforge.hookspecs import Register

__version__ = "0.1.0"


@tuneforge.hookimpl
def register_models(register: Register) -> None:
    register(
        "bag-of-words",
        "tuneforge_bow.model:BagOfWords",
        "Bag-of-words EmbeddingBag text model trained from scratch (no pretrained weights)",
    )
