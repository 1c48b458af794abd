"""What every nearest-neighbour index in lookalike answers to, and helpers they share.

Vectors are float32 [n, d] and unit length; ids are the store's int64 file ids. `search` returns the
cosine similarity (higher is closer) and the ids of the k best, best first, float32 [m, k] and int64 [m, k];
a row with fewer than k answers is padded with score -inf and id -1.

An index that cannot remove vectors in place raises `NeedsRebuild` from `remove`; the Searcher then builds
it again from the stored vectors. Indexes save themselves into a folder and load back from it; what they
hold is recorded by their ids, so the Searcher can always tell what they miss after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from lookalike.errors import require


class NeedsRebuild(Exception):
    """This index cannot apply the change in place: build it again."""


class VectorIndex(Protocol):
    kind: str
    dims: int

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def ids_held(self) -> np.ndarray: ...

    def memory_bytes(self) -> int: ...

    def save(self, folder: Path) -> None: ...


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


def import_faiss():
    faiss = require("faiss", "ann", "this index type")
    return faiss


def faiss_answer(scores: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None):
    """faiss results (-1 where missing) -> the protocol's arrays; `ids` maps faiss positions to file ids."""
    found = labels >= 0
    if ids is not None:
        labels = np.where(found, ids[np.maximum(labels, 0)], -1)
    return np.where(found, scores, -np.inf).astype(np.float32), labels.astype(np.int64)
