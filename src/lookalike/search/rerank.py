"""Query-time re-ranking, on top of whatever engine answers: α-weighted query expansion, and database-side
augmentation of the shortlist.

α-QE (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human annotation", 2018): search
once, then search again with the query plus its n best neighbours, each weighted by its cosine similarity to
the query raised to the power α, and re-normalised. Neighbours that are nearly the same picture count fully,
loose ones hardly at all, so one good match pulls in the other views of the same scene or object. It works
on vectors alone: any engine (exact, HNSW, IVF-PQ, Annoy, Milvus) answers both searches, and nothing about the
index changes. The standard values (n = 2, α = 3) are used as published, not tuned here.

α-DBA on the shortlist (database-side augmentation, Arandjelović and Zisserman 2012; α-weighted as in
Radenović et al. 2018): each of the query's best candidates is scored not by its own vector but by itself
plus its nearest other candidates, weighted by their cosine similarity to it raised to α. A photo whose
neighbours are other views of the same scene gains from them; one that only happens to lie near the query,
alone, does not. Classic DBA augments every indexed vector with its neighbours in the whole collection, which
needs every image's neighbours kept up to date as images come and go; here the neighbours are looked for among
the shortlist only, at query time: no state, any engine, and on holidays_dev the same mAP as the whole-index
version measured with the query left out of the index (85.25 % both, docs/BENCHMARKS.md). The shortlist length
and the number of neighbours were chosen on holidays_dev and Caltech101 (dev sets for this choice).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from lookalike.errors import UsageError

QE_NEIGHBOURS = 2
QE_ALPHA = 3.0
MAX_NEIGHBOURS = 20  # for --qe and --dba: more only blurs the picture (and the CLI and API cap it so)
SAME = 0.9999  # cosine at or above which two unit vectors are the same picture (a copy, a re-save at most)


def _check_neighbours(option: str, value: object) -> None:
    """The library refuses what the CLI and API refuse: a whole number of neighbours from 0 to MAX_NEIGHBOURS."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value <= MAX_NEIGHBOURS:
        raise UsageError(f"{option} takes a whole number of neighbours from 0 (off) to {MAX_NEIGHBOURS}, "
                         f"not {value!r}")


@dataclass(frozen=True)
class QueryExpansion:
    """α-QE settings: `neighbours` = 0 turns it off."""

    neighbours: int = QE_NEIGHBOURS
    alpha: float = QE_ALPHA

    def __post_init__(self) -> None:
        _check_neighbours("--qe", self.neighbours)
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


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread. The shortlist's Gram matrix (100 x 1280 by 1280 x 100) is
    too small to share: with OpenBLAS's two threads on a busy 2-core machine (an AMD EPYC at load ~4), it took
    37-58 ms against 0.6 ms on one (measured ad hoc); one search through Index at 60,000 vectors went from a
    p50 of 36 ms to 9 ms."""
    return _blas().limit(limits=1, user_api="blas")


DBA_SHORTLIST = 100
DBA_NEIGHBOURS = 2
DBA_ALPHA = 3.0


@dataclass(frozen=True)
class Augmentation:
    """α-DBA on the shortlist: the `shortlist` best candidates are re-scored, each as itself plus its
    `neighbours` nearest other candidates weighted by cosine^α (re-normalised). `neighbours` = 0 turns it off."""

    neighbours: int = DBA_NEIGHBOURS
    shortlist: int = DBA_SHORTLIST
    alpha: float = DBA_ALPHA

    def __post_init__(self) -> None:
        _check_neighbours("--dba", self.neighbours)
        if self.shortlist < 1 or self.alpha < 0:
            raise UsageError(f"the augmentation needs a shortlist of 1 or more and alpha >= 0, not {self}")

    @property
    def on(self) -> bool:
        return self.neighbours > 0

    def rescore(self, queries: np.ndarray, candidates: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Unit queries float32 [m, d] and their candidates' unit vectors float32 [m, c, d] (`valid` bool [m, c]:
        False for padding) -> float32 [m, c]: each candidate's cosine to the query once augmented with its
        nearest valid other candidates (-inf where not valid).

        Works from the candidates' Gram matrix alone (one batched matrix product, the whole cost): the
        augmented vector a = x + sum w_j x_j is never formed, since q.a and |a|^2 follow from q.x_j and x_i.x_j."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        candidates = np.asarray(candidates, np.float32)
        m, c = candidates.shape[:2]
        valid = np.ones((m, c), bool) if valid is None else np.asarray(valid, bool)
        scores = np.full((m, c), -np.inf, np.float32)
        if c == 0:
            return scores
        with one_blas_thread():
            cosine = np.matmul(candidates, queries[:, :, None])[:, :, 0]  # [m, c]
            gram = np.matmul(candidates, candidates.transpose(0, 2, 1))  # [m, c, c]
        own = np.diagonal(gram, axis1=1, axis2=2).copy()  # |x_i|^2
        take = min(self.neighbours, c - 1)
        numerator, square = cosine.copy(), own.copy()
        if take > 0:
            others = gram.copy()
            others[:, np.arange(c), np.arange(c)] = -np.inf  # not its own neighbour...
            others[others >= SAME] = -np.inf  # ...nor a copy of itself: no evidence of anything
            others[~np.broadcast_to(valid[:, None, :], others.shape)] = -np.inf
            nearest = _largest(others, take)  # [m, c, t]
            similar = np.take_along_axis(others, nearest, axis=2)
            similar = np.where(np.isfinite(similar), similar, 0.0)  # fewer valid others than `take`
            weights = np.maximum(similar, 0.0) ** self.alpha
            rows = np.arange(m)[:, None, None]
            numerator += (weights * cosine[rows, nearest]).sum(axis=2)  # q.a = q.x + sum w_j q.x_j
            between = gram[rows[..., None], nearest[..., :, None], nearest[..., None, :]]  # [m, c, t, t]
            square += 2 * (weights * similar).sum(axis=2)  # |a|^2 = |x|^2 + 2 sum w_j x.x_j + sum w_j w_l x_j.x_l
            square += np.einsum("mck,mcl,mckl->mc", weights, weights, between)
        augmented = numerator / np.sqrt(np.maximum(square, 1e-12))
        copies = cosine >= SAME  # nothing is more like the query than a copy of it: first, at its plain score
        augmented[copies] = np.maximum(augmented[copies], cosine[copies])
        scores[valid] = augmented[valid]
        return scores


NO_AUGMENTATION = Augmentation(0)


def _largest(values: np.ndarray, take: int) -> np.ndarray:
    """Positions of the `take` largest along the last axis, in no set order. For the few neighbours α-DBA takes,
    one argmax per neighbour: argpartition on the 100 x 100 similarities cost 0.25 ms a query, 4 x more."""
    if take > 4:
        return np.argpartition(-values, take - 1, axis=-1)[..., :take]
    values = values.copy()
    picked = np.empty((*values.shape[:-1], take), np.intp)
    for i in range(take):
        best = values.argmax(axis=-1)
        picked[..., i] = best
        np.put_along_axis(values, best[..., None], -np.inf, axis=-1)
    return picked

