"""Query-time re-ranking: α-weighted query expansion, on top of whatever engine answers.

α-QE (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation", 2018): search
once, then search again with the query plus its n best neighbours, each weighted by its cosine similarity to
the query raised to the power α, and re-normalised. Neighbours that are nearly the same picture count fully,
loose ones hardly at all, so one good match pulls in the other views of the same scene or object. It works
on vectors alone: any engine (exact, HNSW, IVF-PQ, Annoy, Milvus) answers both searches, and nothing about the
index changes. The standard values (n = 2, α = 3) are used as published, not tuned here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lookalike.errors import UsageError

QE_NEIGHBOURS = 2
QE_ALPHA = 3.0


@dataclass(frozen=True)
class QueryExpansion:
    """α-QE settings: `neighbours` = 0 turns it off."""

    neighbours: int = QE_NEIGHBOURS
    alpha: float = QE_ALPHA

    def __post_init__(self) -> None:
        if self.neighbours < 0:
            raise UsageError(f"--qe takes a number of neighbours (0 turns it off), not {self.neighbours}")
        if self.alpha < 0:
            raise UsageError(f"the query expansion's alpha must be 0 or more, not {self.alpha}")

    @property
    def on(self) -> bool:
        return self.neighbours > 0

    def expand(self, queries: np.ndarray, neighbours: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Unit queries float32 [m, d], their best neighbours' vectors [m, n, d] and cosine scores [m, n] (-inf
        or a row of zeros where fewer were found) -> expanded unit queries float32 [m, d]."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        scores = np.nan_to_num(np.asarray(scores, np.float32), neginf=0.0)
        weights = np.maximum(scores[:, : self.neighbours], 0.0) ** self.alpha
        expanded = queries + np.einsum("mn,mnd->md", weights, np.asarray(neighbours, np.float32)[:, : self.neighbours])
        norms = np.linalg.norm(expanded, axis=1, keepdims=True)
        return np.ascontiguousarray(expanded / np.maximum(norms, 1e-12), dtype=np.float32)


NO_EXPANSION = QueryExpansion(0)
