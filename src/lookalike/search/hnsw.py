"""faiss HNSW: a graph index that answers in well under a millisecond at a million vectors.

Inner product on unit vectors is the cosine similarity. HNSW graphs grow in place, but cannot drop a node:
removed vectors become tombstones, skipped at search time with an id selector, and the Searcher rebuilds
the graph once they pass a fifth of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.search.base import as_queries, faiss_answer, import_faiss

TOMBSTONE_SHARE = 0.2


class HNSWIndex:
    """faiss IndexHNSWFlat over unit vectors. m: graph degree; ef_search: breadth of a query (recall vs speed)."""

    kind = "hnsw"

    def __init__(self, dims: int, *, m: int = 32, ef_construction: int = 200, ef_search: int = 256):
        faiss = import_faiss()
        self.dims = dims
        self.ef_search = ef_search
        self.index = faiss.IndexHNSWFlat(dims, m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.ids = np.empty(0, np.int64)  # position in the graph -> file id
        self.dead = np.zeros(0, bool)  # tombstones, by position

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, **params) -> HNSWIndex:
        index = cls(vectors.shape[1], **params)
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(len(self.ids) - self.dead.sum())

    def set_ef_search(self, ef_search: int) -> None:
        """How many candidates a query keeps while walking the graph: more, better recall, slower."""
        self.ef_search = ef_search
        self.index.hnsw.efSearch = ef_search

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])
        self.dead = np.concatenate([self.dead, np.zeros(len(ids), bool)])

    def remove(self, ids: np.ndarray) -> None:
        self.dead |= np.isin(self.ids, ids)
        if self.dead.sum() > TOMBSTONE_SHARE * len(self.ids):
            from lookalike.search.base import NeedsRebuild

            raise NeedsRebuild(f"{int(self.dead.sum())} of {len(self.ids)} HNSW nodes are tombstones")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = import_faiss()
        queries = as_queries(queries, self.dims)
        params = None
        if self.dead.any():
            skip = faiss.IDSelectorBatch(np.flatnonzero(self.dead).astype(np.int64))
            params = faiss.SearchParametersHNSW(sel=faiss.IDSelectorNot(skip), efSearch=self.ef_search)
        scores, positions = self.index.search(queries, k, params=params)
        return faiss_answer(scores, positions, self.ids)

    def ids_held(self) -> np.ndarray:
        return self.ids[~self.dead]

    def memory_bytes(self) -> int:
        links = self.index.hnsw.nb_neighbors(0) * 4 * 1.1  # level-0 links, plus ~10 % for upper levels
        return int(len(self.ids) * (4 * self.dims + links + 8 + 1))

    def save(self, folder: Path) -> None:
        faiss = import_faiss()
        faiss.write_index(self.index, str(folder / "index.faiss"))
        with open(folder / "ids.npz", "wb") as handle:
            np.savez(handle, ids=self.ids, dead=self.dead, ef_search=self.ef_search)

    @classmethod
    def load(cls, folder: Path) -> HNSWIndex:
        faiss = import_faiss()
        index = cls.__new__(cls)
        index.index = faiss.read_index(str(folder / "index.faiss"))
        index.dims = index.index.d
        with np.load(folder / "ids.npz") as data:
            index.ids, index.dead, index.ef_search = data["ids"], data["dead"], int(data["ef_search"])
        index.index.hnsw.efSearch = index.ef_search
        return index
