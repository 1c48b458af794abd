"""Search over a Milvus collection: Milvus answers with its own HNSW index (inner product on unit vectors,
i.e. the cosine). Index.open pairs a MilvusStore with this searcher, as it pairs the SQLite store with
search.searcher.Searcher."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np

from lookalike.errors import EmptyIndex, UsageError
from lookalike.storage.milvus import MilvusStore


class MilvusSearcher:
    """Milvus answers: its HNSW index, inner product on unit vectors (the cosine similarity)."""

    steps = None  # Milvus builds its own index: there is no one-off wait to announce

    def __init__(self, store: MilvusStore):
        from lookalike.search.searcher import SearchSettings

        self.store = store
        self.settings = SearchSettings()

    def refresh(self) -> None:
        pass

    def choice(self, ann: str | None = None):
        from lookalike.search.searcher import Choice

        if ann not in (None, "auto"):
            raise UsageError(f"on Milvus, Milvus' own HNSW index answers: drop --ann {ann}")
        return Choice("milvus", "the index lives in Milvus (HNSW, inner product)")

    def engine(self, kind: str, **_):
        return None  # Milvus builds and keeps its own index

    def search(self, queries: np.ndarray, k: int, *, ann: str | None = None,
               exclude: np.ndarray | None = None, sized_for: int | None = None, with_vectors: bool = False):
        from lookalike.search.searcher import Answer

        self.choice(ann)
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        started = time.perf_counter()
        wanted = k + (1 if exclude is not None else 0)
        results = self.store.client.search(self.store.collection, data=queries.tolist(), limit=wanted,
                                           filter='status == "ok"', output_fields=["id"],
                                           search_params={"metric_type": "IP", "params": {"ef": max(64, wanted)}})
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for row, hits in enumerate(results):
            kept = [h for h in hits if exclude is None or int(h["id"]) != int(exclude[row])][:k]
            scores[row, : len(kept)] = [h["distance"] for h in kept]
            ids[row, : len(kept)] = [int(h["id"]) for h in kept]
        if len(results) and not any(len(h) for h in results) and not self.store.counts()["ok"]:
            raise EmptyIndex(f"{self.store.path} holds no images yet: add some with `lookalike index PHOTOS_DIR`")
        return Answer(scores, ids, "milvus", {"search_s": time.perf_counter() - started})

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Unit vectors float32 [m, d] of these indexed ids (for query expansion)."""
        if not len(ids):
            return np.empty((0, self.store.spec.dims), np.float32)
        found = self.store.client.get(self.store.collection, ids=[int(i) for i in ids], output_fields=["vector"])
        rows = {int(r["id"]): r["vector"] for r in found}
        return np.array([rows[int(i)] for i in ids], np.float32).reshape(len(ids), self.store.spec.dims)

    def neighbours(self, k: int, *, ann: str | None = None, batch: int = 256, shortlist: int | None = None):
        """As Searcher.neighbours; Milvus sizes its own candidate lists, so `shortlist` is not used."""
        ids, vectors = self.store.vectors()
        for start in range(0, len(ids), batch):
            answer = self.search(vectors[start:start + batch], k, ann=ann, exclude=ids[start:start + batch])
            yield ids[start:start + batch], answer.ids, answer.scores

    def describe(self) -> dict:
        choice = self.choice()
        return {"engine": choice.engine, "reason": choice.reason, "settings": asdict(self.settings), "pca": None,
                "vectors": self.store.counts()["ok"]}
