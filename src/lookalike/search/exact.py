"""Exact search: one matrix product and a partial sort.

For up to ~10^5 vectors this is as fast as any approximate index and never wrong, so it is the default.
Vectors are unit length, so the inner product is the cosine similarity, and euclidean distance ranks
the same way: ||a - b|| = sqrt(2 - 2 cos(a, b)).
"""

from __future__ import annotations

import numpy as np


class ExactIndex:
    """Brute-force k-NN over float32 [n, d] unit vectors, labelled by int64 ids."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray):
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"ids [{len(ids)}] and vectors {vectors.shape} do not match")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [m, d] -> (cosine similarities float32 [m, k'], ids int64 [m, k']), best first.

        k' = min(k, n) (one less where `exclude`, an int64 [m] of ids, removes a query's own vector).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = queries @ self.vectors.T
        if exclude is not None:
            scores[np.asarray(exclude)[:, None] == self.ids[None, :]] = -np.inf
        n = scores.shape[1]
        k = min(k, n)
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(queries), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        keep = np.isfinite(top_scores).any(axis=0)  # drop a column that only excluded vectors fell into
        return top_scores[:, keep], self.ids[top][:, keep]
