"""Searcher: the search structures derived from a store, kept in step with it, and the answers they give.

The store (SQLite) is the truth. Everything here is a cache beside it, in `INDEX-cache/` (cache.py: the
memory-mapped vectors, the PCA projection, saved engines, one manifest naming them, a lock for writers).
Nothing there is the only copy of anything: a file that is missing, stale, damaged or half-written (a
crash) is rebuilt or brought up to date from the store. An engine records the ids it holds, so bringing it
up to date is a difference of id sets: new ids are added, gone ids removed (a changed file gets a new id),
in place where the library allows it, else by building again. Within one process an engine stays in
memory and follows the store change by change.

Approximate answers are re-ranked: the engine proposes a shortlist, and the exact cosine on the full
vectors orders it, so PCA and product quantisation cost recall only where the shortlist misses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import EmptyIndex, UsageError
from lookalike.search.base import NeedsRebuild
from lookalike.search.cache import RowReader, SearchCache, Vectors, release
from lookalike.search.exact import ExactIndex, top_k
from lookalike.search.options import ENGINES
from lookalike.search.pca import Projection
from lookalike.storage.sqlite import Store

if TYPE_CHECKING:
    from lookalike.pipeline import Steps

EXACT_LIMIT = 50_000  # above this, auto prefers HNSW: one exact query passes ~5 ms at 1280 dims
AUTO_PCA = 256  # auto's HNSW searches in this many PCA dims above EXACT_LIMIT
HNSW_LINK_BYTES = 290  # per vector in faiss HNSW32: 64 level-0 links of 4 B, upper levels, the id map
HNSW_DIM_BYTES = 1  # per dimension in the default 8-bit graph (hnsw.GRAPH); float32 would be 4
PCA_SAMPLE = 100_000  # PCA is fitted on at most this many vectors
SAVE_SHARE = 0.01  # a search saves an updated engine once the changes not yet saved reach this share...
PREPARE_SAVE = 1000  # ...`lookalike index` once they reach this many...
ALWAYS_SAVE = 100_000  # ...and both always, up to this many vectors (saving is cheap there)
RERANK_ROWS = 16_384  # candidate rows re-ranked at once (16k x 1280 dims x 4 B = 84 MB)
ANNOUNCE_BUILD = 10_000  # a build inside a search says so (through the logger) from this many vectors

log = logging.getLogger(__name__)


@dataclass
class SearchSettings:
    """How an index answers, recorded in the store (meta key "search") by `lookalike index --ann ...`."""

    ann: str = "auto"
    pca: int = 0  # 0: full dims
    whiten: bool = False
    memory_budget: int | None = None  # bytes of RAM the search structures may take; None: no limit
    rerank: int = 200  # shortlist length re-ranked exactly (at least 4 k): 100 gave recall@10 0.944 at 200k

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
    pca: int = 0  # the dims the engine searches in (0: full dims); answers are re-ranked on the full vectors


def choose(n: int, dims: int, settings: SearchSettings) -> Choice:
    """Which engine answers: the one asked for, or for "auto" the cheapest that fits.

    Above EXACT_LIMIT, auto builds HNSW over the vectors projected to AUTO_PCA dims (unless --pca says
    otherwise) and re-ranks on the full ones: at a million vectors a graph over the full 1280 dims takes
    hours to build on two cores and 6 GB of RAM, one over 256 dims (8-bit) about half an hour under load and
    0.6 GB (docs/BENCHMARKS.md)."""
    if settings.ann != "auto":
        return Choice(settings.ann, "chosen with --ann", settings.pca)
    space = settings.pca or dims
    full = n * space * 4
    budget = settings.memory_budget
    if budget is not None and full > budget and n <= EXACT_LIMIT:
        return Choice("exact-f16", f"over the {budget / 1e6:,.0f} MB budget: float16 halves the memory",
                      settings.pca)
    if n <= EXACT_LIMIT:
        return Choice("exact", f"{n:,} vectors: one exact matrix product is fast enough and never wrong",
                      settings.pca)
    pca = settings.pca or (AUTO_PCA if dims > AUTO_PCA else 0)
    graph = n * ((pca or dims) * HNSW_DIM_BYTES + HNSW_LINK_BYTES)
    if budget is not None and graph > budget:
        return Choice("ivfpq", f"{n:,} vectors take {graph / 1e6:,.0f} MB in an HNSW graph, over the "
                               f"{budget / 1e6:,.0f} MB budget: IVF-PQ keeps ~{_pq_bytes(space)} bytes each "
                               "in RAM and re-ranks from the vectors on disk", settings.pca)
    where = f" over PCA-{pca}" if pca else ""
    return Choice("hnsw", f"{n:,} vectors: HNSW{where} answers in milliseconds where an exact scan takes "
                          f"~{n * dims * 4 / 4e9 * 1000:.0f} ms", pca)


def require_engine(ann: str | None, pca: int = 0) -> None:
    """Refuse, before any work, an engine (or PCA) whose library is not installed, naming the extra."""
    from lookalike.errors import require

    if ann in ("hnsw", "ivfpq"):
        require("faiss", "ann", f"--ann {ann}")
    elif ann == "annoy":
        require("annoy", "ann", "--ann annoy")
    if pca:
        require("sklearn", "eval", "--pca")


def _pq_bytes(dims: int) -> int:
    from lookalike.search.ivfpq import default_m

    return default_m(dims) + 8


@dataclass
class Answer:
    scores: np.ndarray  # float32 [m, k], cosine similarity on the full vectors
    ids: np.ndarray  # int64 [m, k], -1 where fewer than k
    engine: str
    timings: dict = field(default_factory=dict)
    vectors: np.ndarray | None = None  # float32 [m, k, d]: the answers' full vectors, when asked and at hand


class Searcher:
    """Search over a store's vectors with the engine its settings pick, keeping the caches in step."""

    def __init__(self, store: Store, settings: SearchSettings | None = None):
        self.store = store
        self.settings = settings or SearchSettings.of(store)
        self.cache = SearchCache(store)
        self.folder = self.cache.folder
        self._generation = -1
        self.data = Vectors(-1, np.empty(0, np.int64), np.empty((0, store.spec.dims), np.float32),
                            np.zeros(0, bool))
        self.projection: Projection | None = None
        self._projection_sum: str | None = None
        self._engines: dict[str, object] = {}
        self._engine_generation: dict[str, int] = {}
        self._unsaved: dict[str, int] = {}
        self._exact_space: ExactIndex | None = None
        self._reader: RowReader | None = None  # re-ranking's reads of the full vectors
        self.steps: Steps | None = None  # told when an engine is built, the one wait that is long

    @property
    def ids(self) -> np.ndarray:
        """int64 [n]: the ids of every indexed vector, ascending."""
        return self.data.ids

    @property
    def vectors(self) -> np.ndarray:
        """float32 [rows, d], memory-mapped: every cached row, in the order of `row_ids` (dead rows included)."""
        return self.data.matrix

    @property
    def row_ids(self) -> np.ndarray:
        return self.data.row_ids

    # -- keeping in step ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the vectors and PCA up to the store's generation (cheap when nothing changed)."""
        if self.store.generation == self._generation:
            return
        self.data = self.cache.vectors()
        self._generation = self.data.generation
        self._exact_space = None
        self._reader = None
        previous = self._projection_sum
        self.projection = self._projection()
        if self._projection_sum != previous:
            self._engines.clear()  # they search the old projection's space

    def _projection(self) -> Projection | None:
        dims = choose(len(self.ids), self.vectors.shape[1], self.settings).pca
        if not dims or dims >= self.vectors.shape[1] or len(self.ids) < dims:
            self._projection_sum = None
            return None  # full dims, or too few images to fit it yet: full dims until there are

        def fit() -> Projection:
            rows = self.data.alive
            if len(rows) > PCA_SAMPLE:  # a sample fits the same axes, in a fraction of the time and memory
                rows = np.sort(np.random.default_rng(0).choice(rows, PCA_SAMPLE, replace=False))
            sample = np.asarray(self.vectors[rows])
            release(self.vectors)
            return Projection.fit(sample, dims, whiten=self.settings.whiten)

        projection, self._projection_sum = self.cache.projection(dims, self.settings.whiten, fit, Projection.load)
        return projection

    def _projected(self, engine: str) -> bool:
        """Whether this engine searches the PCA space: every engine when --pca set one, and all but exact when
        auto chose it (an exact search asked for at search time is exact)."""
        return self.projection is not None and (bool(self.settings.pca) or engine != "exact")

    def space(self, vectors: np.ndarray) -> np.ndarray:
        """Full vectors -> the vectors engines index (PCA-projected and re-normalised, when set)."""
        return self.projection.transform(vectors) if self.projection is not None else vectors

    def _live_space(self) -> np.ndarray:
        """The engines' vectors of every live row, float32 [n, d'], projected a block at a time."""
        rows = None if not self.data.dead.any() else self.data.alive
        count = len(self.vectors) if rows is None else len(rows)
        if self.projection is None:
            return np.asarray(self.vectors if rows is None else self.vectors[rows])
        out = np.empty((count, self.projection.dims), np.float32)
        for start in range(0, count, 100_000):
            block = self.vectors[start:start + 100_000] if rows is None else self.vectors[rows[start:start + 100_000]]
            out[start:start + len(block)] = self.space(np.asarray(block))
            release(self.vectors)  # 5 GB read once at a million: leave it to the page cache, not this process
        return out

    def engine(self, kind: str, *, save: bool = False, say: Callable[[str], None] | None = None):
        """The engine of this kind, loaded or built, holding exactly the store's vectors. `save`: write it to
        the cache after a smaller update than a search would (what `lookalike index` asks); `say`: told what
        is built or updated."""
        self.refresh()
        return self._engine(kind, save=save, say=say)

    def _engine(self, kind: str, *, save: bool = False, say: Callable[[str], None] | None = None):
        """`engine`, the caches already refreshed (a search asks the store for its generation once, not per step)."""
        if kind == "exact":
            if self._exact_space is None:
                dead = self.data.dead if self.data.dead.any() else None
                space = self.vectors if not self._projected("exact") else self.space(np.asarray(self.vectors))
                self._exact_space = ExactIndex(self.row_ids, np.asarray(space), skip=dead)
            return self._exact_space
        engine = self._engines.get(kind)
        if engine is None:
            engine = self.cache.load_engine(kind, self._engine_stamp(kind), _engine_class(kind).load)
            self._unsaved[kind] = 0
        if engine is None:
            engine = self._build_engine(kind, say)
        elif self._engine_generation.get(kind) != self._generation:
            engine = self._update_engine(kind, engine, say)
        self._maybe_save(kind, engine, save)
        self._engines[kind] = engine
        self._engine_generation[kind] = self._generation
        return engine

    def _maybe_save(self, kind: str, engine, asked: bool) -> None:
        """Saving rewrites the whole engine (1.3 GB for HNSW at a million): after a small change it is cheaper
        to re-apply the change when the next process loads it. So a search saves once the unsaved changes
        reach SAVE_SHARE of the collection, `lookalike index` from PREPARE_SAVE changes, and both always for
        a collection of up to ALWAYS_SAVE vectors."""
        unsaved = self._unsaved.get(kind, 0)
        if not unsaved:
            return
        threshold = PREPARE_SAVE if asked else SAVE_SHARE * len(self.ids)
        if len(self.ids) <= ALWAYS_SAVE or unsaved >= threshold:
            self._save_engine(kind, engine)

    def _engine_stamp(self, kind: str) -> dict:
        """What a saved engine must have been built with to be used: the space it searches, and for an engine
        with build parameters (HNSW) those, so that a release that changes them builds the engine again."""
        stamp = {"pca": self.projection.dims if self.projection is not None else 0, "whiten": self.settings.whiten,
                 "projection": self._projection_sum}
        defaults = getattr(_engine_class(kind), "defaults", None)
        return {**stamp, "build": defaults()} if defaults is not None else stamp

    def _build_engine(self, kind: str, say: Callable[[str], None] | None = None):
        n = len(self.ids)
        message = f"building the {kind} index over {n:,} images"
        if say is not None:
            say(message)
        elif self.steps is not None:  # a progress display: the message while it builds, with the time it takes
            self.steps(message, 0, None)
        elif n >= ANNOUNCE_BUILD:
            log.info(message + " (`lookalike index` builds it ahead of the first search)")
        engine = _engine_class(kind).build(self.ids, self._live_space())
        self._unsaved[kind] = 0
        self._save_engine(kind, engine)  # a build is never cheap to repeat
        if say is None and self.steps is not None:
            self.steps(message, 1, 1)
        return engine

    def _update_engine(self, kind: str, engine, say: Callable[[str], None] | None = None):
        held = engine.ids_held()
        new = np.setdiff1d(self.ids, held, assume_unique=True)
        gone = np.setdiff1d(held, self.ids, assume_unique=True)
        if not len(new) and not len(gone):
            return engine
        if say is not None:
            say(f"updating the {kind} index: {len(new):,} added, {len(gone):,} removed")
        try:
            if len(gone):
                engine.remove(gone)
            if len(new):
                rows = np.searchsorted(self.row_ids, new)
                engine.add(new, self.space(np.asarray(self.vectors[rows])))
        except NeedsRebuild:
            return self._build_engine(kind, say)
        self._unsaved[kind] = self._unsaved.get(kind, 0) + len(new) + len(gone)
        return engine

    def _save_engine(self, kind: str, engine) -> None:
        if self.cache.save_engine(kind, self._engine_stamp(kind), engine):
            self._unsaved[kind] = 0

    # -- answering --------------------------------------------------------------------------------

    def choice(self, ann: str | None = None) -> Choice:
        self.refresh()
        return self._choice(ann)

    def _choice(self, ann: str | None = None) -> Choice:
        settings = self.settings if ann is None else SearchSettings(**{**asdict(self.settings), "ann": ann})
        return choose(len(self.ids), self.vectors.shape[1], settings)

    def search(self, queries: np.ndarray, k: int, *, ann: str | None = None,
               exclude: np.ndarray | None = None, shortlist: int | None = None,
               sized_for: int | None = None, with_vectors: bool = False) -> Answer:
        """Unit vectors float32 [m, d] -> the k best of the collection for each, by cosine similarity.
        `shortlist`: how many an approximate engine proposes for re-ranking (default: the settings' rerank,
        at least 4 k), and for HNSW also how broadly it walks the graph: a bulk caller that wants only close
        neighbours (duplicate candidates) trades a little recall of far ones for several times the speed.
        `sized_for`: size that default for this many results instead of k: re-ranking by augmentation takes
        the best 100 of the shortlist a search for 10 re-ranks, not a shortlist of 400. `with_vectors`: hand back
        the answers' full vectors where re-ranking read them anyway (Answer.vectors; None after an exact
        search), so that re-ranking by augmentation does not read them a second time."""
        self.refresh()
        if len(self.ids) == 0:
            raise EmptyIndex(f"{self.store.path} holds no images yet: add some with `lookalike index PHOTOS_DIR`")
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        choice = self._choice(ann)
        projected = self._projected(choice.engine)
        approximate = choice.engine != "exact" or projected
        started = time.perf_counter()
        if not approximate:
            scores, ids = self._engine("exact").search(queries, k, exclude=exclude)
            return Answer(scores, ids, "exact", {"search_s": time.perf_counter() - started})
        engine = self._engine(choice.engine)
        ready = time.perf_counter()
        wanted = max(k, shortlist or max(self.settings.rerank, 4 * (sized_for or k))) + (exclude is not None)
        wanted = min(wanted, len(self.ids))
        breadth = {"ef_search": wanted} if shortlist and getattr(engine, "kind", "") == "hnsw" else {}
        _, proposed = engine.search(self.space(queries), wanted, **breadth)
        held = np.zeros((len(queries), k, self.vectors.shape[1]), np.float32) if with_vectors else None
        scores, ids = self._rerank(queries, proposed, k, exclude, held)
        name = choice.engine + (f" on PCA-{self.projection.dims}" if projected and self.projection else "")
        return Answer(scores, ids, name + ", re-ranked", {"prepare_s": ready - started,
                                                        "search_s": time.perf_counter() - ready}, held)

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Full unit vectors float32 [m, d] of these indexed ids (query expansion, re-ranking by augmentation),
        read through re-ranking's own map (ascending ids read fastest)."""
        self.refresh()
        if self._reader is None:
            self._reader = RowReader(self.vectors)
        return np.asarray(self._reader.rows(np.searchsorted(self.row_ids, ids)), np.float32)

    def _rerank(self, queries: np.ndarray, shortlist: np.ndarray, k: int, exclude: np.ndarray | None,
                held: np.ndarray | None = None):
        if self._reader is None:
            self._reader = RowReader(self.vectors)
        return rerank(queries, shortlist, self.row_ids, self._reader.rows, k, exclude, held)

    def neighbours(self, k: int, *, ann: str | None = None, batch: int = 1024, shortlist: int | None = None):
        """Every indexed image's k nearest others, in batches: yields (ids int64 [b], neighbour ids int64
        [b, k], scores float32 [b, k]). Memory stays at one batch of scores, never n x n. `shortlist`: as in
        `search`."""
        self.refresh()
        alive = self.data.alive
        for start in range(0, len(alive), batch):
            rows = alive[start:start + batch]
            ids = self.row_ids[rows]
            answer = self.search(np.asarray(self.vectors[rows]), k, ann=ann, exclude=ids, shortlist=shortlist)
            yield ids, answer.ids, answer.scores

    def describe(self) -> dict:
        """What answers queries and why, and what it costs in memory."""
        self.refresh()
        choice = self.choice()
        facts = {"engine": choice.engine, "reason": choice.reason, "settings": asdict(self.settings),
                 "pca": self.projection.dims if self.projection is not None else None, "vectors": len(self.ids)}
        if choice.engine == "exact":
            facts["memory_bytes"] = len(self.ids) * (self.space(self.vectors[:1]).shape[1] * 4 + 8)
        elif (on_disk := self.cache.engine_bytes(choice.engine)) is not None:
            facts["on_disk_bytes"] = on_disk
        return facts


def rerank(queries: np.ndarray, shortlist: np.ndarray, ids: np.ndarray,
           vectors: np.ndarray | Callable[[np.ndarray], np.ndarray], k: int,
           exclude: np.ndarray | None = None, held: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order each query's candidate ids (int64 [m, c], -1 for none) by exact cosine on the full vectors
    (float32 [n, d], ids int64 [n] ascending; a memory map is fine: only the candidates' rows are read; or a
    function from row positions to those rows, as `RowReader.rows`) and keep the k best:
    (float32 [m, k], int64 [m, k]); `held` (float32 [m, k, d], zeros), when given, receives the kept candidates'
    vectors (left zero where fewer than k). Vectorised over RERANK_ROWS candidate rows at a time (a Python loop per
    query cost more than the engine's search for bulk callers)."""
    read = vectors if callable(vectors) else (lambda rows: np.asarray(vectors[rows]))
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_ids = np.full((len(queries), k), -1, np.int64)
    m, c = shortlist.shape
    if m == 0 or c == 0 or len(ids) == 0:
        return out_scores, out_ids
    step = max(1, RERANK_ROWS // c)
    for start in range(0, m, step):
        block = shortlist[start:start + step]
        valid = block >= 0
        if exclude is not None:
            valid &= block != np.asarray(exclude)[start:start + step, None]
        rows = np.searchsorted(ids, np.where(valid, block, ids[0]))
        # One gather, in the shortlist's own order: sorting the rows first (np.unique, then indexing the held
        # rows again) copied every row twice and cost bulk callers (dupes at 100k) twice the time
        rows_of = np.asarray(read(rows.ravel()), np.float32).reshape(*rows.shape, -1)
        batch = np.asarray(queries[start:start + step], np.float32)
        exact = np.matmul(rows_of, batch[:, :, None])[:, :, 0]  # a BLAS product: einsum took 3x longer
        exact[~valid] = -np.inf
        top, top_scores = top_k(exact, k)
        found = np.take_along_axis(np.where(valid, block, -1), top, axis=1)
        out_scores[start:start + step, : top.shape[1]] = top_scores
        out_ids[start:start + step, : top.shape[1]] = np.where(np.isfinite(top_scores), found, -1)
        if held is not None:  # plain indexing: take_along_axis over [m, c, d] took 20x longer
            kept = held[start:start + step, : top.shape[1]]
            kept[:] = rows_of[np.arange(len(top))[:, None], top]
            kept[~np.isfinite(top_scores)] = 0.0
    return out_scores, out_ids


def _engine_class(kind: str):
    from lookalike.search.annoy_index import AnnoyIndex
    from lookalike.search.exact import HalfExactIndex
    from lookalike.search.hnsw import HNSWIndex
    from lookalike.search.ivfpq import IVFPQIndex

    return {"hnsw": HNSWIndex, "ivfpq": IVFPQIndex, "annoy": AnnoyIndex, "exact-f16": HalfExactIndex}[kind]
