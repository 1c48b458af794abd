"""Exact search: one matrix product and a partial sort.

For up to ~10^5 vectors this is as fast as any approximate index and never wrong, so it is the default.
Vectors are unit length, so the inner product is the cosine similarity, and euclidean distance ranks
the same way: ||a - b|| = sqrt(2 - 2 cos(a, b)). `HalfExactIndex` keeps the vectors in float16 (faiss'
scalar quantiser, still a full scan) for half the memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.search.base import as_queries, faiss_answer, import_faiss


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of `scores` float [m, n] (higher is better), best first: (positions int64 [m, k],
    their scores [m, k]). argpartition, then a stable sort of the k: the one k-NN routine of the package
    (exact search, evaluation, duplicate candidates and the benchmarks all use it)."""
    m, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.empty((m, 0), np.int64), np.empty((m, 0), scores.dtype)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (m, 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


class ExactIndex:
    """Brute-force k-NN over float32 [n, d] unit vectors, labelled by int64 ids. `skip` (bool [n]) marks rows
    that are never answered (tombstones of removed files, still in a memory-mapped matrix)."""

    kind = "exact"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, skip: np.ndarray | None = None):
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"ids [{len(ids)}] and vectors {vectors.shape} do not match")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = vectors if vectors.dtype == np.float32 else vectors.astype(np.float32)
        self.dims = vectors.shape[1]
        self.skip = skip if skip is not None and skip.any() else None

    def __len__(self) -> int:
        return len(self.ids) - (0 if self.skip is None else int(self.skip.sum()))

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [m, d] -> (cosine similarities float32 [m, k'], ids int64 [m, k']), best first.

        k' = min(k, n) (one less where `exclude`, an int64 [m] of ids, removes a query's own vector).
        """
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        scores = queries @ self.vectors.T
        if self.skip is not None:
            scores[:, self.skip] = -np.inf
        if exclude is not None:
            scores[np.asarray(exclude)[:, None] == self.ids[None, :]] = -np.inf
        k = min(k, len(self))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        top, top_scores = top_k(scores, k)
        keep = np.isfinite(top_scores).any(axis=0)  # drop a column that only excluded vectors fell into
        return top_scores[:, keep], self.ids[top][:, keep]

    def ids_held(self) -> np.ndarray:
        return self.ids if self.skip is None else self.ids[~self.skip]

    def memory_bytes(self) -> int:
        return self.vectors.nbytes + self.ids.nbytes


class HalfExactIndex:
    """A full scan over float16 copies of the vectors: half the memory of ExactIndex, scores to ~1e-3."""

    kind = "exact-f16"

    def __init__(self, dims: int):
        faiss = import_faiss()
        self.dims = dims
        self.index = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dims, faiss.ScalarQuantizer.QT_fp16,
                                                                  faiss.METRIC_INNER_PRODUCT))

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray) -> HalfExactIndex:
        index = cls(vectors.shape[1])
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        faiss = import_faiss()
        self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_answer(*self.index.search(as_queries(queries, self.dims), k))

    def ids_held(self) -> np.ndarray:
        return import_faiss().vector_to_array(self.index.id_map).astype(np.int64)

    def memory_bytes(self) -> int:
        return len(self) * (2 * self.dims + 8)

    def save(self, folder: Path) -> None:
        import_faiss().write_index(self.index, str(folder / "index.faiss"))

    @classmethod
    def load(cls, folder: Path) -> HalfExactIndex:
        index = cls.__new__(cls)
        index.index = import_faiss().read_index(str(folder / "index.faiss"))
        index.dims = index.index.d
        return index
