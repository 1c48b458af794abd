"""Searcher: the search structures derived from a store, kept in step with it, and the answers they give.

The store (SQLite) is the truth. Everything here is a cache beside it, in `INDEX-cache/`:

    vectors.npy, ids.npy   every vector, float32 [n, d], memory-mapped; rewritten when the store changes
    state.json             the store generation those two were made at
    pca.npz                the PCA projection, when the index uses one (fitted once, on the collection)
    <engine>/              an approximate index (hnsw, ivfpq, annoy, exact-f16) and what it holds

Nothing here is the only copy of anything: a file that is missing, stale or half-written (a crash) is
rebuilt or brought up to date from the store. An engine records the ids it holds, so bringing it up to
date is a difference of id sets: new ids are added, gone ids removed (a changed file gets a new id), in
place where the library allows it, else by building again.

Approximate answers are re-ranked: the engine proposes a shortlist, and the exact cosine on the full
vectors orders it, so PCA and product quantisation cost recall only where the shortlist misses.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lookalike.errors import EmptyIndex, UsageError
from lookalike.search.base import NeedsRebuild
from lookalike.search.exact import ExactIndex
from lookalike.search.options import ENGINES
from lookalike.search.pca import Projection
from lookalike.storage.sqlite import Store

EXACT_LIMIT = 50_000  # above this, auto prefers HNSW: one exact query passes ~5 ms at 1280 dims


@dataclass
class SearchSettings:
    """How an index answers, recorded in the store (meta key "search") by `lookalike index --ann ...`."""

    ann: str = "auto"
    pca: int = 0  # 0: full dims
    whiten: bool = False
    memory_budget: int | None = None  # bytes of RAM the search structures may take; None: no limit
    rerank: int = 50  # shortlist length re-ranked exactly (at least 4 k)

    def __post_init__(self) -> None:
        if self.ann not in ENGINES:
            raise UsageError(f"--ann must be one of {', '.join(ENGINES)}, not {self.ann!r}")
        if self.pca < 0:
            raise UsageError(f"--pca must be a positive number of dims, not {self.pca}")

    @classmethod
    def of(cls, store: Store) -> SearchSettings:
        text = store.meta("search")
        return cls(**json.loads(text)) if text else cls()

    def save(self, store: Store) -> None:
        store.set_meta("search", json.dumps(asdict(self)))


@dataclass
class Choice:
    engine: str
    reason: str


def choose(n: int, dims: int, settings: SearchSettings) -> Choice:
    """Which engine answers: the one asked for, or for "auto" the cheapest that fits."""
    if settings.ann != "auto":
        return Choice(settings.ann, "chosen with --ann")
    space = settings.pca or dims
    full = n * space * 4
    budget = settings.memory_budget
    if budget is not None and full > budget:
        if n >= 1000:
            return Choice("ivfpq", f"{n:,} vectors take {full / 1e6:,.0f} MB in float32, over the "
                                   f"{budget / 1e6:,.0f} MB budget: IVF-PQ keeps ~{_pq_bytes(space)} bytes each "
                                   "in RAM and re-ranks from the vectors on disk")
        return Choice("exact-f16", f"over the {budget / 1e6:,.0f} MB budget: float16 halves the memory")
    if n <= EXACT_LIMIT:
        return Choice("exact", f"{n:,} vectors: one exact matrix product is fast enough and never wrong")
    return Choice("hnsw", f"{n:,} vectors: HNSW answers in about a millisecond where an exact scan takes "
                          f"~{n * space * 4 / 4e9 * 1000:.0f} ms")


def _pq_bytes(dims: int) -> int:
    from lookalike.search.ivfpq import default_m

    return default_m(dims) + 8


@dataclass
class Answer:
    scores: np.ndarray  # float32 [m, k], cosine similarity on the full vectors
    ids: np.ndarray  # int64 [m, k], -1 where fewer than k
    engine: str
    timings: dict = field(default_factory=dict)


class Searcher:
    """Search over a store's vectors with the engine its settings pick, keeping the caches in step."""

    def __init__(self, store: Store, settings: SearchSettings | None = None):
        self.store = store
        self.settings = settings or SearchSettings.of(store)
        self.folder = Path(str(store.path) + "-cache")
        self._generation = -1
        self.ids = np.empty(0, np.int64)
        self.vectors = np.empty((0, store.spec.dims), np.float32)
        self.projection: Projection | None = None
        self._engines: dict[str, object] = {}
        self._exact_space: ExactIndex | None = None

    # -- keeping in step ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the vector matrix and PCA up to the store's generation (cheap when nothing changed)."""
        generation = self.store.generation
        if generation == self._generation:
            return
        state = self._read_state()
        if state.get("generation") == generation and (self.folder / "vectors.npy").is_file():
            self.ids = np.load(self.folder / "ids.npy")
            self.vectors = np.load(self.folder / "vectors.npy", mmap_mode="r")
        else:
            self.ids, vectors = self.store.vectors()
            self.vectors = self._write_matrix(vectors, generation)
        self._generation = generation
        self._exact_space = None
        self._engines.clear()  # loaded again, and brought up to date, on next use
        self.projection = self._projection()

    def _write_matrix(self, vectors: np.ndarray, generation: int) -> np.ndarray:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _atomic_save(self.folder / "ids.npy", self.ids)
            _atomic_save(self.folder / "vectors.npy", vectors)
            self._write_state({"generation": generation})
            return np.load(self.folder / "vectors.npy", mmap_mode="r")
        except OSError:  # a read-only place: search from memory, rebuild next time
            return vectors

    def _projection(self) -> Projection | None:
        dims = self.settings.pca
        if not dims or dims >= self.vectors.shape[1]:
            return None
        path = self.folder / "pca.npz"
        state = self._read_state()
        if path.is_file() and state.get("pca") == [dims, self.settings.whiten]:
            return Projection.load(path)
        if len(self.ids) < dims:
            return None  # too few images to fit it yet: full dims until there are
        projection = Projection.fit(np.asarray(self.vectors), dims, whiten=self.settings.whiten)
        try:
            projection.save(path)
            self._write_state({**state, "pca": [dims, self.settings.whiten]})
        except OSError:
            pass
        return projection

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Full vectors -> the vectors engines index (PCA-projected and re-normalised, when set)."""
        return self.projection.transform(vectors) if self.projection is not None else vectors

    def engine(self, kind: str):
        """The engine of this kind, loaded or built, holding exactly the store's vectors."""
        self.refresh()
        if kind == "exact":
            if self._exact_space is None:
                self._exact_space = ExactIndex(self.ids, np.asarray(self.space(self.vectors)))
            return self._exact_space
        if kind in self._engines:
            return self._engines[kind]
        engine = self._load_engine(kind)
        engine = self._build_engine(kind) if engine is None else self._update_engine(kind, engine)
        self._engines[kind] = engine
        return engine

    def _engine_folder(self, kind: str) -> Path:
        return self.folder / kind

    def _engine_stamp(self) -> dict:
        return {"pca": self.settings.pca if self.projection is not None else 0, "whiten": self.settings.whiten}

    def _load_engine(self, kind: str):
        folder = self._engine_folder(kind)
        try:
            stamp = json.loads((folder / "stamp.json").read_text())
        except (OSError, ValueError):
            return None
        if stamp != self._engine_stamp():
            return None
        try:
            return _engine_class(kind).load(folder)
        except Exception:  # a half-written or foreign file: it is only a cache
            return None

    def _build_engine(self, kind: str):
        cls = _engine_class(kind)
        engine = cls.build(self.ids, self.space(np.asarray(self.vectors)))
        self._save_engine(kind, engine)
        return engine

    def _update_engine(self, kind: str, engine):
        held = engine.ids_held()
        new = np.setdiff1d(self.ids, held, assume_unique=True)
        gone = np.setdiff1d(held, self.ids, assume_unique=True)
        if not len(new) and not len(gone):
            return engine
        try:
            if len(gone):
                engine.remove(gone)
            if len(new):
                rows = np.searchsorted(self.ids, new)
                engine.add(new, self.space(np.asarray(self.vectors[rows])))
        except NeedsRebuild:
            return self._build_engine(kind)
        self._save_engine(kind, engine)
        return engine

    def _save_engine(self, kind: str, engine) -> None:
        folder = self._engine_folder(kind)
        partial = folder.with_name(folder.name + ".partial")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            engine.save(partial)
            (partial / "stamp.json").write_text(json.dumps(self._engine_stamp()))
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)  # a crash before this leaves the old folder or none: both are safe
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)

    # -- answering --------------------------------------------------------------------------------

    def choice(self, ann: str | None = None) -> Choice:
        self.refresh()
        settings = self.settings if ann is None else SearchSettings(**{**asdict(self.settings), "ann": ann})
        return choose(len(self.ids), self.vectors.shape[1], settings)

    def search(self, queries: np.ndarray, k: int, *, ann: str | None = None,
               exclude: np.ndarray | None = None) -> Answer:
        """Unit vectors float32 [m, d] -> the k best of the collection for each, by cosine similarity."""
        self.refresh()
        if len(self.ids) == 0:
            raise EmptyIndex(f"{self.store.path} holds no images yet: add some with `lookalike index PHOTOS_DIR`")
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        choice = self.choice(ann)
        approximate = choice.engine != "exact" or self.projection is not None
        started = time.perf_counter()
        if not approximate:
            scores, ids = self.engine("exact").search(queries, k, exclude=exclude)
            return Answer(scores, ids, "exact", {"search_s": time.perf_counter() - started})
        engine = self.engine(choice.engine)
        ready = time.perf_counter()
        wanted = max(self.settings.rerank, 4 * k) + (1 if exclude is not None else 0)
        _, shortlist = engine.search(self.space(queries), min(wanted, len(self.ids)))
        scores, ids = self._rerank(queries, shortlist, k, exclude)
        name = choice.engine + (f" on PCA-{self.projection.dims}" if self.projection is not None else "")
        return Answer(scores, ids, name + ", re-ranked", {"prepare_s": ready - started,
                                                        "search_s": time.perf_counter() - ready})

    def _rerank(self, queries: np.ndarray, shortlist: np.ndarray, k: int, exclude: np.ndarray | None):
        return rerank(queries, shortlist, self.ids, self.vectors, k, exclude)

    def neighbours(self, k: int, *, ann: str | None = None, batch: int = 1024):
        """Every indexed image's k nearest others, in batches: yields (ids int64 [b], neighbour ids int64
        [b, k], scores float32 [b, k]). Memory stays at one batch of scores, never n x n."""
        self.refresh()
        for start in range(0, len(self.ids), batch):
            ids = self.ids[start:start + batch]
            answer = self.search(np.asarray(self.vectors[start:start + batch]), k, ann=ann, exclude=ids)
            yield ids, answer.ids, answer.scores

    def describe(self) -> dict:
        """What answers queries and why, and what it costs in memory."""
        self.refresh()
        choice = self.choice()
        facts = {"engine": choice.engine, "reason": choice.reason, "settings": asdict(self.settings),
                 "pca": self.projection.dims if self.projection is not None else None, "vectors": len(self.ids)}
        built = self._engine_folder(choice.engine)
        if choice.engine == "exact":
            facts["memory_bytes"] = len(self.ids) * (self.space(self.vectors[:1]).shape[1] * 4 + 8)
        elif built.is_dir():
            facts["on_disk_bytes"] = sum(p.stat().st_size for p in built.iterdir() if p.is_file())
        return facts

    # -- state file --------------------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        path = self.folder / "state.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({**self._read_state(), **state}))
        os.replace(partial, path)


def rerank(queries: np.ndarray, shortlist: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int,
           exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order each query's candidate ids (int64 [m, c], -1 for none) by exact cosine on the full vectors
    (float32 [n, d], ids int64 [n] ascending; a memory map is fine: only the candidates' rows are read) and
    keep the k best: (float32 [m, k], int64 [m, k])."""
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_ids = np.full((len(queries), k), -1, np.int64)
    for row, (query, candidates) in enumerate(zip(queries, shortlist, strict=True)):
        candidates = candidates[candidates >= 0]
        if exclude is not None:
            candidates = candidates[candidates != exclude[row]]
        rows = np.searchsorted(ids, candidates)
        exact = np.asarray(vectors[np.sort(rows)]) @ query  # sorted rows: sequential reads from a memory map
        candidates = ids[np.sort(rows)]
        order = np.argsort(-exact, kind="stable")[:k]
        out_scores[row, : len(order)] = exact[order]
        out_ids[row, : len(order)] = candidates[order]
    return out_scores, out_ids


def _engine_class(kind: str):
    from lookalike.search.annoy_index import AnnoyIndex
    from lookalike.search.exact import HalfExactIndex
    from lookalike.search.hnsw import HNSWIndex
    from lookalike.search.ivfpq import IVFPQIndex

    return {"hnsw": HNSWIndex, "ivfpq": IVFPQIndex, "annoy": AnnoyIndex, "exact-f16": HalfExactIndex}[kind]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    partial = path.with_suffix(".partial.npy")
    np.save(partial, array)
    os.replace(partial, path)
