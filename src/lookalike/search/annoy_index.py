"""Annoy (angular), the approximate index of the reference pipeline: a forest of random-projection trees.

Annoy cannot add items after `build`, so any change means building again. Its angular distance on unit
vectors is sqrt(2 - 2 cos), turned back into the cosine similarity here.
"""

from __future__ import annotations

import numpy as np

from lookalike.search.base import as_queries, padded


class AnnoyIndex:
    """n_trees: more trees, better recall, bigger index; search_k: nodes inspected per query (-1: n_trees * k)."""

    kind = "annoy"

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, *, n_trees: int = 40, search_k: int = -1,
                 seed: int = 0):
        try:
            import annoy
        except ImportError:
            from lookalike.errors import LookalikeError

            raise LookalikeError("this index type needs annoy: pip install 'lookalike[ann]'") from None
        self.dims = vectors.shape[1]
        self.search_k = search_k
        self.ids = np.asarray(ids, np.int64)
        self.index = annoy.AnnoyIndex(self.dims, "angular")
        self.index.set_seed(seed)
        for position, vector in enumerate(np.asarray(vectors, np.float32)):
            self.index.add_item(position, vector)
        self.index.build(n_trees, n_jobs=1)

    def __len__(self) -> int:
        return self.index.get_n_items()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        all_scores, all_ids = [], []
        for query in as_queries(queries, self.dims):
            positions, distances = self.index.get_nns_by_vector(query, k, search_k=self.search_k,
                                                                include_distances=True)
            all_scores.append([1.0 - d * d / 2.0 for d in distances])
            all_ids.append(self.ids[positions].tolist())
        return padded(all_scores, all_ids, k)
