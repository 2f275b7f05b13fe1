"""Per-row feature vectors computed once per task instance: the text plugin's sentence
embeddings and the image plugin's backbone features share this cache (numpy imported lazily)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any


class VectorCache:
    """Vectors keyed by a row's identity (its index and its input), computed on first use.

    ``computed`` counts the vectors computed (for tests and logs), ``seconds`` the time spent.
    """

    def __init__(self) -> None:
        self.vectors: dict[Hashable, Any] = {}
        self.computed = 0
        self.seconds = 0.0

    def lookup(self, keys: list[Hashable], compute: Callable[[list[int]], Any]) -> Any:
        """The vectors of ``keys`` stacked (rows x dims, float32); ``compute(indices)`` gives
        the vectors of the keys at those indices that are not cached yet."""
        import numpy as np

        todo = [i for i, k in enumerate(keys) if k not in self.vectors]
        if todo:
            started = time.perf_counter()
            for i, vec in zip(todo, compute(todo), strict=True):
                self.vectors[keys[i]] = vec
            self.computed += len(todo)
            self.seconds += time.perf_counter() - started
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys]).astype(np.float32, copy=False)
