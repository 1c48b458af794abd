"""Annoy (angular), the approximate index of the reference pipeline: a forest of random-projection trees.

Annoy cannot add items after `build`, so any change means building again (`add` and `remove` raise
NeedsRebuild). Its angular distance on unit vectors is sqrt(2 - 2 cos), turned back into the cosine here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lookalike.errors import require
from lookalike.search.base import NeedsRebuild, as_queries, padded


def _annoy():
    annoy = require("annoy", "ann", "this index type")
    return annoy


class AnnoyIndex:
    """n_trees: more trees, better recall, bigger index; search_k: nodes inspected per query (-1: n_trees * k)."""

    kind = "annoy"

    def __init__(self, dims: int, *, n_trees: int = 40, search_k: int = -1):
        self.dims = dims
        self.n_trees = n_trees
        self.search_k = search_k
        self.index = _annoy().AnnoyIndex(dims, "angular")
        self.ids = np.empty(0, np.int64)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, *, seed: int = 0, **params) -> AnnoyIndex:
        index = cls(vectors.shape[1], **params)
        index.index.set_seed(seed)
        for position, vector in enumerate(np.asarray(vectors, np.float32)):
            index.index.add_item(position, vector)
        index.index.build(index.n_trees, n_jobs=1)
        index.ids = np.asarray(ids, np.int64)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NeedsRebuild("annoy cannot add to a built index")

    def remove(self, ids: np.ndarray) -> None:
        raise NeedsRebuild("annoy cannot remove from a built index")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        all_scores, all_ids = [], []
        for query in as_queries(queries, self.dims):
            positions, distances = self.index.get_nns_by_vector(query, k, search_k=self.search_k,
                                                                include_distances=True)
            all_scores.append([1.0 - d * d / 2.0 for d in distances])
            all_ids.append(self.ids[positions].tolist())
        return padded(all_scores, all_ids, k)

    def ids_held(self) -> np.ndarray:
        return self.ids

    def memory_bytes(self) -> int:
        return int((self.dims * 4 + 16) * len(self.ids) * (1 + self.n_trees / 20))  # items plus tree nodes

    def save(self, folder: Path) -> None:
        self.index.save(str(folder / "index.ann"))
        np.save(folder / "ids.npy", self.ids)
        (folder / "params.json").write_text(json.dumps({"dims": self.dims, "n_trees": self.n_trees,
                                                         "search_k": self.search_k}))

    @classmethod
    def load(cls, folder: Path) -> AnnoyIndex:
        params = json.loads((folder / "params.json").read_text())
        index = cls(params.pop("dims"), **params)
        index.index.load(str(folder / "index.ann"))
        index.ids = np.load(folder / "ids.npy")
        return index
