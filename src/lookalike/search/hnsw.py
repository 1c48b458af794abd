"""faiss HNSW: a graph index that answers in well under a millisecond at a million vectors.

Inner product on unit vectors is the cosine similarity. faiss is imported here only, when this index is used.
"""

from __future__ import annotations

import numpy as np

from lookalike.search.base import as_queries


def import_faiss():
    try:
        import faiss
    except ImportError:
        from lookalike.errors import LookalikeError

        raise LookalikeError("this index type needs faiss: pip install 'lookalike[ann]'") from None
    return faiss


class HNSWIndex:
    """faiss IndexHNSWFlat over unit vectors. M: graph degree; ef_search: breadth of a query (recall vs speed)."""

    kind = "hnsw"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, *, m: int = 32, ef_construction: int = 80,
                 ef_search: int = 64):
        faiss = import_faiss()
        self.dims = vectors.shape[1]
        self.index = faiss.IndexHNSWFlat(self.dims, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.ids = np.asarray(ids, np.int64)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self.index.search(as_queries(queries, self.dims), k)
        ids = np.where(positions >= 0, self.ids[positions], -1)
        return np.where(positions >= 0, scores, -np.inf).astype(np.float32), ids
