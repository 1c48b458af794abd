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
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.images import absolute

REFERENCE = {
    "model": "ResNet-50 (Keras, ImageNet), 2048-d, brute-force euclidean",
    "p_at_4": 87.0,
    "pca": {1: 15.43, 2: 26.15, 3: 32.4, 4: 40.07, 5: 45.93, 10: 63.93, 20: 77.81, 50: 85.21, 75: 86.38,
            100: 86.91, 150: 87.03, 200: 87.05},
    "query_ms": {"exact, full dims": 59.8, "exact, PCA-150": 5.3, "annoy, PCA-150": 0.0199},
    "extraction_s": 16.6 * 60,
    "extraction_ms_per_image": 100.0,
}
PCA_DIMS = tuple(REFERENCE["pca"])


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
        raise LookalikeError(f"--group-regex {pattern!r} is not a valid regular expression: {exc}") from None
    labels: list[str | None] = []
    for path in paths:
        match = compiled.search(Path(path).name)
        labels.append(None if match is None else (match.group(1) if compiled.groups else match.group(0)))
    return labels


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
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start:start + batch] = np.take_along_axis(top, order, axis=1)
    return out


def rankings(features: np.ndarray, queries: np.ndarray, *, batch: int = 512):
    """For each query position, the complete cosine ranking of all other rows: yields (query positions
    int64 [b], ranked positions int64 [b, n-1]) batch by batch. Stable: ties go to the lower position."""
    features = np.ascontiguousarray(features, np.float32)
    for start in range(0, len(queries), batch):
        chosen = queries[start:start + batch]
        scores = features[chosen] @ features.T
        scores[np.arange(len(chosen)), chosen] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :-1]  # the query itself is last
        yield chosen, order


# -- the evaluation -------------------------------------------------------------------------------------

@dataclass
class MethodResult:
    """One way of answering a query, timed one query at a time."""

    name: str
    ms_per_query: float
    recall_at_10: float  # against exact search at full dimension
    p_at_k: float
    build_s: float = 0.0
    note: str = ""


@dataclass
class EvalResult:
    dataset: str
    model: str
    images: int
    queries: int
    groups: int
    k: int
    p_at_k: float
    recall_at_k: float
    map: float
    per_group: dict[str, float] = field(default_factory=dict)  # P@k by class
    group_sizes: dict[str, int] = field(default_factory=dict)
    pca: list[tuple[int, float]] = field(default_factory=list)  # (dims, P@k), reference protocol
    methods: list[MethodResult] = field(default_factory=list)
    extraction_s: float | None = None  # whole set, when this run embedded it
    extraction_images: int = 0
    ms_per_image: float | None = None  # one image from its file, decode + embed, batch of 1
    examples: dict[str, list[str]] = field(default_factory=dict)  # group -> [query path, its k nearest]
    example_labels: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["reference"] = REFERENCE
        return data


def evaluate_vectors(vectors: np.ndarray, labels: Sequence[str | None], *, k: int = 4,
                     paths: Sequence[str] | None = None) -> EvalResult:
    """P@k, recall@k and mAP of cosine search over float32 [n, d] unit vectors with these labels."""
    codes = encode(labels)
    names = sorted({label for label in labels if label is not None})
    queries = np.flatnonzero(codes >= 0)
    if len(queries) == 0:
        raise LookalikeError("no image has a label: check the dataset layout or --group-regex")
    sizes = np.bincount(codes[queries], minlength=len(names))
    relevant_total = sizes[codes[queries]] - 1
    p_rows, ap = np.empty(len(queries)), np.empty(len(queries))
    top_relevant = np.zeros((len(queries), min(k, len(codes) - 1)), bool)
    examples, example_labels = {}, {}
    done = 0
    for chosen, order in rankings(vectors, queries):
        relevant = codes[order] == codes[chosen][:, None]
        top = relevant[:, :k]
        top_relevant[done:done + len(chosen)] = top
        p_rows[done:done + len(chosen)] = top.mean(axis=1)
        ap[done:done + len(chosen)] = average_precision(relevant)
        if paths is not None:
            for position, row in zip(chosen, order[:, :k], strict=True):
                name = names[codes[position]]
                if name not in examples:  # the first image of each group, as its example
                    examples[name] = [paths[position], *(paths[i] for i in row)]
                    example_labels[name] = [name, *(labels[i] or "-" for i in row)]
        done += len(chosen)
    per_group = {name: float(p_rows[codes[queries] == n].mean()) for n, name in enumerate(names)}
    return EvalResult(
        dataset="", model="", images=len(codes), queries=len(queries), groups=len(names), k=k,
        p_at_k=float(p_rows.mean()),
        recall_at_k=recall_at_k(top_relevant, relevant_total),
        map=float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        per_group=per_group, group_sizes={name: int(s) for name, s in zip(names, sizes, strict=True)},
        examples=examples, example_labels=example_labels,
    )


def pca_sweep(vectors: np.ndarray, labels: Sequence[str | None], dims: Sequence[int] = PCA_DIMS, *,
              k: int = 4) -> list[tuple[int, float]]:
    """P@k after PCA to each number of dims, with the reference's protocol: PCA fitted on the whole set,
    brute-force euclidean on the (not re-normalised) PCA coordinates."""
    from lookalike.search.pca import Projection

    codes = encode(labels)
    labelled = codes >= 0
    out = []
    for d in dims:
        if d > min(vectors.shape):
            continue
        projected = Projection.fit(vectors, d).project(vectors)
        near = nearest(projected, k, metric="euclidean")[labelled]
        out.append((d, precision_at_k(codes[near] == codes[labelled][:, None])))
    return out


def compare_methods(vectors: np.ndarray, ids: np.ndarray, labels: Sequence[str | None], *, k: int = 4,
                    queries: int = 200, pca_dims: int = 150, seed: int = 0,
                    extra: Sequence[tuple[str, Callable]] = ()) -> list[MethodResult]:
    """Time one query at a time for each way lookalike can answer, with recall@10 against exact search."""
    from lookalike.search import ExactIndex

    codes = encode(labels)
    rng = np.random.default_rng(seed)
    sample = rng.choice(np.flatnonzero(codes >= 0), size=min(queries, int((codes >= 0).sum())), replace=False)
    exact = ExactIndex(ids, vectors)
    truth = exact.search(vectors[sample], 11)[1][:, 1:]  # drop the query itself (its own best match)
    label_of = dict(zip(ids.tolist(), codes.tolist(), strict=True))
    results = []
    for name, build in [*_methods(vectors, ids, pca_dims), *extra]:
        try:
            started = time.perf_counter()
            search = build()
            build_s = time.perf_counter() - started
        except (LookalikeError, ImportError) as exc:
            results.append(MethodResult(name, float("nan"), float("nan"), float("nan"), note=str(exc)))
            continue
        search(vectors[sample[0]])  # warm-up
        found, times = [], []
        for position in sample:
            started = time.perf_counter()
            answer = search(vectors[position])
            times.append(time.perf_counter() - started)
            own = ids[position]
            found.append([i for i in answer if i != own][:10])
        found_ids = np.array([row + [-1] * (10 - len(row)) for row in found])
        relevant = np.array([[label_of.get(int(i), -2) == codes[p] for i in row[:k]]
                             for row, p in zip(found_ids, sample, strict=True)])
        results.append(MethodResult(name, 1000 * float(np.median(times)), neighbour_recall(found_ids, truth),
                                    precision_at_k(relevant), build_s))
    return results


def _methods(vectors: np.ndarray, ids: np.ndarray, pca_dims: int) -> list[tuple[str, Callable]]:
    """(name, build) pairs; build() returns search(vector float32 [d]) -> ids of the 11 best."""
    from lookalike.search import AnnoyIndex, ExactIndex, HNSWIndex
    from lookalike.search.pca import Projection

    d = vectors.shape[1]
    pca_dims = min(pca_dims, *vectors.shape)

    def exact():
        index = ExactIndex(ids, vectors)
        return lambda v: index.search(v, 11)[1][0].tolist()

    def reduced(make):
        def build():
            projection = Projection.fit(vectors, pca_dims)
            index = make(ids, projection.transform(vectors))
            return lambda v: index.search(projection.transform(v), 11)[1][0].tolist()
        return build

    def hnsw():
        index = HNSWIndex.build(ids, vectors)
        return lambda v: index.search(v, 11)[1][0].tolist()

    return [
        (f"exact, {d}-d (numpy)", exact),
        (f"exact, PCA-{pca_dims}", reduced(ExactIndex)),
        (f"annoy, 40 trees, PCA-{pca_dims}", reduced(AnnoyIndex.build)),
        (f"faiss HNSW32, {d}-d", hnsw),
    ]


def evaluate_index(index, root: str | Path, *, k: int = 4, exclude: Sequence[str] = (),
                   group_regex: str | None = None, pca_dims: Sequence[int] = PCA_DIMS,
                   methods: bool = True) -> EvalResult:
    """Evaluate the images of `index` that lie below `root`, labelled by folder (or by `group_regex` on
    their file names), leaving out the classes in `exclude` altogether."""
    root = absolute(root)
    ids, vectors = index.vectors()
    files = index.store.files(ids)
    paths = [files[int(i)][0] for i in ids]
    below = np.array([Path(p).is_relative_to(root) for p in paths], bool)
    classes = folder_labels(paths, root)
    keep = below & ~np.isin(np.array(classes, dtype=object), list(exclude))
    if not keep.any():
        raise LookalikeError(f"{index.path} holds no images below {root} (index it first, or check --exclude)")
    ids, vectors = ids[keep], vectors[keep]
    paths = [p for p, kept in zip(paths, keep, strict=True) if kept]
    labels = regex_labels(paths, group_regex) if group_regex else [c for c, kept in zip(classes, keep, strict=True)
                                                                    if kept]
    result = evaluate_vectors(vectors, labels, k=k, paths=paths)
    result.dataset, result.model = str(root), index.spec.name
    if pca_dims:
        result.pca = pca_sweep(vectors, labels, pca_dims, k=k)
    if methods:
        result.methods = compare_methods(vectors, ids, labels, k=k, extra=_own_engine(index, ids))
        result.ms_per_image = time_one_image(index.embed, paths)
    return result


def _own_engine(index, ids: np.ndarray) -> list[tuple[str, Callable]]:
    """The index's own engine, when it is not plain exact search, as one more method to compare."""
    choice = index.searcher.choice()
    if choice.engine == "exact" and index.searcher.settings.pca == 0:
        return []
    subset = set(ids.tolist())

    def build():
        index.prepare_search()

        def search(vector: np.ndarray) -> list[int]:
            answer = index.searcher.search(vector[None], 21).ids[0].tolist()
            return [i for i in answer if i in subset][:11]  # images of excluded classes do not count
        return search

    pca = index.searcher.settings.pca
    return [(f"this index: {choice.engine}" + (f" on PCA-{pca}" if pca else "") + ", re-ranked", build)]


def time_one_image(embed: Callable[[str], np.ndarray], paths: Sequence[str], samples: int = 20) -> float:
    """Median ms to turn one image file into its vector (decode + embed, batch of 1)."""
    chosen = list(paths)[:: max(1, len(paths) // samples)][:samples]
    if not chosen:
        return float("nan")
    embed(chosen[0])  # warm-up
    times = []
    for path in chosen:
        started = time.perf_counter()
        embed(path)
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))
