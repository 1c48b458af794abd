"""The evaluation protocol: every labelled image a query, the reference pipeline's table, the engines timed.

Metrics and ground truth live in metrics.py; this module runs them over an index or a matrix of vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lookalike.errors import BadInput, LookalikeError, UsageError
from lookalike.evaluation.metrics import (
    average_precision,
    encode,
    folder_labels,
    holidays_groups,
    nearest,
    neighbour_recall,
    precision_at_k,
    rankings,
    recall_at_k,
    regex_labels,
    trapezoid_ap,
)
from lookalike.images import absolute
from lookalike.search.rerank import Augmentation, QueryExpansion

if TYPE_CHECKING:
    from lookalike.index import Index
    from lookalike.pipeline import Summary

REFERENCE: dict[str, Any] = {
    "model": "ResNet-50 (Keras, ImageNet), 2048-d, brute-force euclidean",
    "p_at_4": 87.0,
    "pca": {1: 15.43, 2: 26.15, 3: 32.4, 4: 40.07, 5: 45.93, 10: 63.93, 20: 77.81, 50: 85.21, 75: 86.38,
            100: 86.91, 150: 87.03, 200: 87.05},
    "query_ms": {"exact, full dims": 59.8, "exact, PCA-150": 5.3, "annoy, PCA-150": 0.0199},
    "extraction_s": 16.6 * 60,
    "extraction_ms_per_image": 100.0,
}
PCA_DIMS: tuple[int, ...] = tuple(REFERENCE["pca"])



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
    queries: int = 0  # how many sampled queries the time, recall and P@k are over (0: not recorded)


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
    protocol: str = "classes"  # or "holidays": one query per group, trapezoid AP
    expansion: int = 0  # neighbours of the α-query expansion the rankings used (0: none)
    augmentation: int = 0  # neighbours of the database-side augmentation of the shortlist (0: none)
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
        data["reference"] = REFERENCE if has_reference(self) else None
        return data


def has_reference(result: EvalResult) -> bool:
    """Whether the reference pipeline's figures apply: they were measured on Caltech101, and beside any other
    dataset they mislead."""
    return Path(result.dataset).name.lower() == "caltech101"


def evaluate_vectors(vectors: np.ndarray, labels: Sequence[str | None], *, k: int = 4,
                     paths: Sequence[str] | None = None, queries: np.ndarray | None = None,
                     trapezoid: bool = False, expansion: QueryExpansion | None = None,
                     augmentation: Augmentation | None = None) -> EvalResult:
    """P@k, recall@k and mAP of cosine search over float32 [n, d] unit vectors with these labels.

    By default every labelled image is a query; `queries` (bool [n]) picks some instead (the Holidays
    protocol: one per group). `trapezoid` measures AP as INRIA's holidays_map.py does. `expansion` ranks
    with α-query expansion, `augmentation` re-orders each ranking's head by database-side augmentation, as
    `Index.search` does with them on."""
    codes = encode(labels)
    names = sorted({label for label in labels if label is not None})
    labelled = codes >= 0
    queries = np.flatnonzero(labelled if queries is None else labelled & np.asarray(queries, bool))
    if len(queries) == 0:
        raise BadInput("no image has a label: check the dataset layout or --group-regex"
                       if not labelled.any() else "no labelled image is a query (Holidays: NNNN00.jpg)")
    sizes = np.bincount(codes[labelled], minlength=len(names))
    relevant_total = sizes[codes[queries]] - 1
    p_rows, ap = np.empty(len(queries)), np.empty(len(queries))
    top_relevant = np.zeros((len(queries), min(k, len(codes) - 1)), bool)
    examples, example_labels = {}, {}
    done = 0
    score_ap = trapezoid_ap if trapezoid else average_precision
    for chosen, order in rankings(vectors, queries, expansion=expansion, augmentation=augmentation):
        relevant = codes[order] == codes[chosen][:, None]
        top = relevant[:, :k]
        top_relevant[done:done + len(chosen)] = top
        p_rows[done:done + len(chosen)] = top.mean(axis=1)
        ap[done:done + len(chosen)] = score_ap(relevant)
        if paths is not None:
            for position, row in zip(chosen, order[:, :k], strict=True):
                name = names[codes[position]]
                if name not in examples:  # the first image of each group, as its example
                    examples[name] = [paths[position], *(paths[i] for i in row)]
                    example_labels[name] = [name, *(labels[i] or "-" for i in row)]
        done += len(chosen)
    per_group = {name: float(p_rows[codes[queries] == n].mean()) for n, name in enumerate(names)
                 if (codes[queries] == n).any()}
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
                                    precision_at_k(relevant), build_s, queries=len(sample)))
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


def class_folders(dataset: str | Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The class folders (and loose files) of a labelled dataset, less the excluded classes and hidden
    entries: what `eval` and `train` index, so that an excluded class is never even embedded."""
    leave_out = set(exclude)
    return [p for p in sorted(Path(dataset).iterdir()) if p.name not in leave_out and not p.name.startswith(".")]


def index_dataset(index: Index, dataset: str | Path, *, exclude: Sequence[str] = (),
                  progress: Callable[[int, int], None] | None = None) -> Summary:
    """Bring `index` up to date with a labelled dataset's class folders (excluded classes left out)."""
    return index.add(class_folders(dataset, exclude), progress=progress)


PROTOCOLS = ("classes", "holidays")


def evaluate_index(index: Index, root: str | Path, *, k: int = 4, exclude: Sequence[str] = (),
                   group_regex: str | None = None, pca_dims: Sequence[int] = PCA_DIMS,
                   methods: bool = True, protocol: str = "classes",
                   expansion: QueryExpansion | None = None,
                   augmentation: Augmentation | None = None) -> EvalResult:
    """Evaluate the images of `index` that lie below `root`, leaving out the classes in `exclude` altogether.

    protocol "classes": labelled by folder (or by `group_regex` on their file names), every labelled image
    a query, plain AP. "holidays": INRIA Holidays, groups and queries from the file names (NNNNNN.jpg is in
    group NNNNNN // 100, NNNN00.jpg is its query), trapezoid AP. `expansion`: rank with α-QE, `augmentation`:
    re-order the head of each ranking by database-side augmentation, as search does."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    if protocol == "holidays" and group_regex:
        raise UsageError("--group-regex does not apply to --protocol holidays: its groups come from file names")
    root = absolute(root)
    ids, vectors = index.vectors()
    files = index.files(ids)
    paths = [files[int(i)].path for i in ids]
    below = np.array([Path(p).is_relative_to(root) for p in paths], bool)
    classes = folder_labels(paths, root)
    keep = below & ~np.isin(np.array(classes, dtype=object), list(exclude))
    if not keep.any():
        raise BadInput(f"{index.path} holds no images below {root} (index it first, or check --exclude)")
    ids, vectors = ids[keep], vectors[keep]
    paths = [p for p, kept in zip(paths, keep, strict=True) if kept]
    queries = None
    if protocol == "holidays":
        labels, queries = holidays_groups(paths)
        if not queries.any():
            raise BadInput(f"no Holidays query below {root}: queries are named NNNN00.jpg (six digits)")
    elif group_regex:
        labels = regex_labels(paths, group_regex)
    else:
        labels = [c for c, kept in zip(classes, keep, strict=True) if kept]
    result = evaluate_vectors(vectors, labels, k=k, paths=paths, queries=queries, trapezoid=protocol == "holidays",
                              expansion=expansion, augmentation=augmentation)
    result.dataset, result.model, result.protocol = str(root), index.spec.name, protocol
    result.expansion = expansion.neighbours if expansion is not None else 0
    result.augmentation = augmentation.neighbours if augmentation is not None else 0
    if pca_dims:
        result.pca = pca_sweep(vectors, labels, pca_dims, k=k)
    if methods:
        result.methods = compare_methods(vectors, ids, labels, k=k, extra=_own_engine(index, ids))
        result.ms_per_image = time_one_image(index.embed, paths)
    return result


def _own_engine(index: Index, ids: np.ndarray) -> list[tuple[str, Callable]]:
    """The index's own engine, when it is not plain exact search, as one more method to compare."""
    choice = index.engine_choice()
    pca = index.search_settings.pca
    if choice.engine == "exact" and pca == 0:
        return []
    subset = set(ids.tolist())

    def build():
        index.prepare_search()

        def search(vector: np.ndarray) -> list[int]:
            answer = index.search_vectors(vector[None], 21)[1][0].tolist()
            return [i for i in answer if i in subset][:11]  # images of excluded classes do not count
        return search

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
