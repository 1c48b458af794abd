"""faiss HNSW: a graph index whose queries cost milliseconds at a million vectors (docs/BENCHMARKS.md).

Inner product on unit vectors is the cosine similarity. HNSW graphs grow in place, but cannot drop a node:
removed vectors become tombstones, skipped at search time with an id selector, and the Searcher rebuilds
the graph once they pass a fifth of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.search.base import as_queries, faiss_answer, import_faiss

TOMBSTONE_SHARE = 0.2
TRAIN_SAMPLE = 100_000  # the 8-bit quantiser learns each dimension's range from at most this many vectors
GRAPH: dict[str, int | str] = {"m": 32, "ef_construction": 200, "storage": "sq8"}  # how graphs are built
EF_SEARCH = 256


class HNSWIndex:
    """faiss HNSW over unit vectors. m: graph degree; ef_construction: breadth of the search that links a new
    node (graph quality vs build time); ef_search: breadth of a query (recall vs speed); storage: how the
    graph keeps its vectors, "sq8" (one byte per dimension, faiss IndexHNSWSQ) or "flat" (float32).

    sq8 by default: the graph only proposes a shortlist that is re-ranked on the full vectors, and at 200,000
    vectors over PCA-256 it built 1.6x faster than float32 with the same links, searched faster and held a
    quarter of the memory for the vectors, at the same recall after re-ranking (docs/BENCHMARKS.md)."""

    kind = "hnsw"

    def __init__(self, dims: int, *, m: int | None = None, ef_construction: int | None = None,
                 ef_search: int = EF_SEARCH, storage: str | None = None):
        faiss = import_faiss()
        m = int(GRAPH["m"]) if m is None else m
        ef_construction = int(GRAPH["ef_construction"]) if ef_construction is None else ef_construction
        storage = str(GRAPH["storage"]) if storage is None else storage
        self.dims = dims
        self.ef_search = ef_search
        if storage == "sq8":
            self.index = faiss.IndexHNSWSQ(dims, faiss.ScalarQuantizer.QT_8bit, m, faiss.METRIC_INNER_PRODUCT)
        elif storage == "flat":
            self.index = faiss.IndexHNSWFlat(dims, m, faiss.METRIC_INNER_PRODUCT)
        else:
            raise ValueError(f"HNSW storage must be sq8 or flat, not {storage!r}")
        self.index.hnsw.efConstruction = ef_construction
        self.index.hnsw.efSearch = ef_search
        self.ids = np.empty(0, np.int64)  # position in the graph -> file id
        self.dead = np.zeros(0, bool)  # tombstones, by position
        self._alive: tuple[np.ndarray, object] | None = None  # the live positions as a faiss selector, cached

    @staticmethod
    def defaults() -> dict:
        """What a graph built now is made of: saved beside a graph, so that a graph built otherwise (an older
        release's float32 graph) is built again rather than kept."""
        return dict(GRAPH)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, **params) -> HNSWIndex:
        index = cls(vectors.shape[1], **params)
        if not index.index.is_trained:  # the 8-bit ranges, from a sample
            rows = np.arange(len(vectors))
            if len(rows) > TRAIN_SAMPLE:
                rows = np.sort(np.random.default_rng(0).choice(rows, TRAIN_SAMPLE, replace=False))
            index.index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
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
        self._alive = None

    def remove(self, ids: np.ndarray) -> None:
        self.dead |= np.isin(self.ids, ids)
        self._alive = None
        if self.dead.sum() > TOMBSTONE_SHARE * len(self.ids):
            from lookalike.search.base import NeedsRebuild

            raise NeedsRebuild(f"{int(self.dead.sum())} of {len(self.ids)} HNSW nodes are tombstones")

    def search(self, queries: np.ndarray, k: int, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`ef_search` for this call only (per-call parameters: safe with other threads searching)."""
        faiss = import_faiss()
        queries = as_queries(queries, self.dims)
        params = None
        if (alive := self._live_selector()) is not None:
            params = faiss.SearchParametersHNSW(sel=alive, efSearch=ef_search or self.ef_search)
        elif ef_search is not None:
            params = faiss.SearchParametersHNSW(efSearch=ef_search)
        scores, positions = self.index.search(queries, k, params=params)
        return faiss_answer(scores, positions, self.ids)

    def _live_selector(self):
        """A faiss selector of the live positions when there are tombstones (else None): a bitmap, built once
        per change of the tombstones. Building a set of the dead positions for every query (as before) cost
        more than the graph search itself: a query took 14.5 ms that way and 1.3 ms with this bitmap, at 200,000
        vectors with 11,100 tombstones (a loaded 2-core AMD EPYC, load ~7, measured ad hoc)."""
        if not self.dead.any():
            return None
        if self._alive is None:
            bits = np.packbits(~self.dead, bitorder="little")  # faiss reads bit i of byte i >> 3, low bit first
            faiss = import_faiss()
            self._alive = (bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)))  # bits kept alive
        return self._alive[1]

    def ids_held(self) -> np.ndarray:
        return self.ids[~self.dead]

    def memory_bytes(self) -> int:
        links = self.index.hnsw.nb_neighbors(0) * 4 * 1.1  # level-0 links, plus ~10 % for upper levels
        per_dim = 4 if isinstance(self.index, import_faiss().IndexHNSWFlat) else 1
        return int(len(self.ids) * (per_dim * self.dims + links + 8 + 1))

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
        index._alive = None
        index.index.hnsw.efSearch = index.ef_search
        return index
