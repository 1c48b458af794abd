"""How good are the neighbours? Retrieval metrics against labels, and the reference pipeline's table.

Ground truth is a label per image: its class folder, or a group read from its file name by a regex (for
same-scene datasets). Every labelled image is a query in turn, never its own neighbour; images without a
label stay in the collection as distractors. Rankings are complete and stable: a tie is broken in favour
of the image stored first, so every figure is reproducible.

Metrics, for a query whose label is shared by R other images:
  P@k       share of the k nearest with the query's label (the reference's "accuracy", k = 4);
  recall@k  share of the R that are among the k nearest;
  AP        mean, over the R, of the precision at the rank where each is found; mAP is its mean over
            queries with R > 0.

The INRIA Holidays protocol (`holidays_groups`, `trapezoid_ap`) differs in two ways: only one image per
group is a query, and AP is the area under the precision-recall curve by the trapezoid rule, as its
official holidays_map.py computes it (a point or two below the plain AP above).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lookalike.errors import UsageError
from lookalike.search.exact import top_k
from lookalike.search.rerank import Augmentation, QueryExpansion

# -- ground truth -------------------------------------------------------------------------------------

def folder_labels(paths: Sequence[str], root: str | Path) -> list[str]:
    """The class of each image: its folder below `root` ("" for files directly in it)."""
    root = Path(root)
    labels = []
    for path in paths:
        folder = Path(path).parent
        labels.append(folder.relative_to(root).as_posix().removeprefix(".") if folder.is_relative_to(root) else "")
    return labels


def regex_labels(paths: Sequence[str], pattern: str) -> list[str | None]:
    """The group of each image, read from its file name: the regex's first group, else its whole match;
    None (a distractor) where it does not match."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--group-regex {pattern!r} is not a valid regular expression: {exc}") from None
    labels: list[str | None] = []
    for path in paths:
        match = compiled.search(Path(path).name)
        labels.append(None if match is None else (match.group(1) if compiled.groups else match.group(0)))
    return labels


HOLIDAYS_NAME = re.compile(r"^(\d{6})\.jpe?g$", re.IGNORECASE)


def holidays_groups(paths: Sequence[str]) -> tuple[list[str | None], np.ndarray]:
    """INRIA Holidays ground truth from file names: `NNNNNN.jpg` belongs to group NNNNNN // 100, and the
    group's query is the image whose number ends in 00. Returns (group per image, None for a file that is
    not so named: a distractor; bool [n], True for the queries)."""
    groups: list[str | None] = []
    queries = np.zeros(len(paths), bool)
    for n, path in enumerate(paths):
        match = HOLIDAYS_NAME.match(Path(path).name)
        if match is None:
            groups.append(None)
            continue
        number = int(match.group(1))
        groups.append(str(number // 100))
        queries[n] = number % 100 == 0
    return groups, queries


def encode(labels: Sequence[str | None]) -> np.ndarray:
    """Labels -> int64 codes, -1 for None."""
    names = sorted({label for label in labels if label is not None})
    code = {name: n for n, name in enumerate(names)}
    return np.array([-1 if label is None else code[label] for label in labels], dtype=np.int64)


# -- metrics on relevance arrays -------------------------------------------------------------------------

def precision_at_k(relevant: np.ndarray) -> float:
    """bool [m, k], row = a query's k nearest, best first -> mean share of relevant ones (nan if m = 0)."""
    relevant = np.asarray(relevant, bool)
    return float(relevant.mean(axis=1).mean()) if relevant.size else float("nan")


def recall_at_k(relevant: np.ndarray, n_relevant: np.ndarray) -> float:
    """bool [m, k] and int [m] (how many relevant images each query has in all) -> mean found share,
    over the queries that have any."""
    relevant, n_relevant = np.asarray(relevant, bool), np.asarray(n_relevant)
    has = n_relevant > 0
    if not has.any():
        return float("nan")
    return float((relevant[has].sum(axis=1) / n_relevant[has]).mean())


def average_precision(relevant_ranked: np.ndarray) -> np.ndarray:
    """bool [m, n]: complete rankings -> AP float64 [m] (nan for a query with nothing relevant)."""
    relevant = np.atleast_2d(np.asarray(relevant_ranked, bool))
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    total = relevant.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (precision * relevant).sum(axis=1) / total, np.nan)


def trapezoid_ap(relevant_ranked: np.ndarray) -> np.ndarray:
    """bool [m, n]: complete rankings, the query left out -> AP float64 [m] as INRIA's holidays_map.py
    computes it (nan for a query with nothing relevant).

    Each relevant image found at 0-based rank r, as the t-th found (t from 0), adds a trapezoid of width
    1/R between precision t/r (1 at rank 0) and (t+1)/(r+1)."""
    relevant = np.atleast_2d(np.asarray(relevant_ranked, bool))
    rank = np.arange(relevant.shape[1], dtype=np.float64)
    found_before = np.cumsum(relevant, axis=1) - relevant  # t: relevant images strictly above this rank
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.where(rank == 0, 1.0, found_before / np.maximum(rank, 1))
        right = (found_before + 1) / (rank + 1)
        total = relevant.sum(axis=1)
        area = ((left + right) / 2 * relevant).sum(axis=1)
        return np.where(total > 0, area / total, np.nan)


def neighbour_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """int [m, k] ids an approximate index found, int [m, k] the exact ones -> mean share recovered."""
    found, truth = np.asarray(found), np.asarray(truth)
    if truth.size == 0:
        return float("nan")
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


# -- neighbours -----------------------------------------------------------------------------------------

def _scores(queries: np.ndarray, features: np.ndarray, metric: str, sq_norms: np.ndarray | None) -> np.ndarray:
    """Higher is closer: the inner product (cosine on unit vectors), or minus the squared euclidean
    distance less the query's own norm, which ranks the same."""
    scores = queries @ features.T
    if metric == "euclidean":
        assert sq_norms is not None, "euclidean scores need the features' squared norms"
        scores = 2.0 * scores - sq_norms[None, :]
    return scores


def nearest(features: np.ndarray, k: int, *, metric: str = "cosine", batch: int = 1024) -> np.ndarray:
    """Every row's k nearest other rows, best first: int64 [n, k] positions, computed in batches (never an
    n x n matrix). Ties at the k-th place are broken arbitrarily: use `rankings` where that matters."""
    features = np.ascontiguousarray(features, np.float32)
    n = len(features)
    k = min(k, n - 1)
    sq_norms = (features * features).sum(axis=1) if metric == "euclidean" else None
    out = np.empty((n, k), np.int64)
    for start in range(0, n, batch):
        scores = _scores(features[start:start + batch], features, metric, sq_norms)
        rows = np.arange(len(scores))
        scores[rows, start + rows] = -np.inf
        out[start:start + batch] = top_k(scores, k)[0]
    return out


def rankings(features: np.ndarray, queries: np.ndarray, *, batch: int = 256,
             expansion: QueryExpansion | None = None, augmentation: Augmentation | None = None):
    """For each query position, the complete cosine ranking of all other rows: yields (query positions
    int64 [b], ranked positions int64 [b, n-1]) batch by batch. Stable: ties go to the lower position.
    With `expansion`, each query is expanded with its best other rows first and ranked again (α-QE); with
    `augmentation`, the head of each ranking (its shortlist) is re-ordered by database-side augmentation:
    both as `Index.search` does."""
    features = np.ascontiguousarray(features, np.float32)
    for start in range(0, len(queries), batch):
        chosen = queries[start:start + batch]
        rows = np.arange(len(chosen))
        vectors = features[chosen]
        scores = vectors @ features.T
        scores[rows, chosen] = -np.inf
        if expansion is not None and expansion.on:
            top, top_scores = top_k(scores, min(expansion.neighbours, len(features) - 1))
            vectors = expansion.expand(vectors, features[top], top_scores)
            scores = vectors @ features.T
            scores[rows, chosen] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]  # the query itself is last
        if augmentation is not None and augmentation.on:
            head = order[:, : augmentation.shortlist]
            rescored = augmentation.rescore(vectors, features[head])
            order[:, : head.shape[1]] = np.take_along_axis(head, np.argsort(-rescored, axis=1, kind="stable"), 1)
        yield chosen, order
