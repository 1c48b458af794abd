"""What every nearest-neighbour index in lookalike answers to.

Vectors are float32 [n, d] and unit length; ids are the store's int64 file ids. `search` returns the
cosine similarity (higher is closer) and the ids of the k best, best first, float32 [m, k] and int64 [m, k];
a row with fewer than k answers is padded with score -inf and id -1.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VectorIndex(Protocol):
    kind: str

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def padded(scores: list[list[float]], ids: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-query answers -> the [m, k] arrays of the protocol."""
    out_scores = np.full((len(scores), k), -np.inf, np.float32)
    out_ids = np.full((len(ids), k), -1, np.int64)
    for row, (s, i) in enumerate(zip(scores, ids, strict=True)):
        out_scores[row, : len(s)] = s[:k]
        out_ids[row, : len(i)] = i[:k]
    return out_scores, out_ids


def as_queries(queries: np.ndarray, dims: int) -> np.ndarray:
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != dims:
        raise ValueError(f"queries have {queries.shape[1]} dims, the index {dims}")
    return queries
