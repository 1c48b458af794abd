"""Index: the public face of lookalike. A store on disk, the model that fills it, and search over it.

    from lookalike import Index
    with Index.open("photos.lookalike", create=True) as index:
        index.add(["~/Pictures"])
        for hit in index.search("query.jpg", k=10):
            print(hit.rank, hit.score, hit.path)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from lookalike import images, pipeline
from lookalike.errors import ModelMismatch, NotAnImage, NotFound, NotIndexed, UsageError
from lookalike.models.embedder import Embedder
from lookalike.models.registry import MODELS, ModelSpec, resolve_spec, same_model
from lookalike.search.options import ENGINES, METRICS
from lookalike.search.rerank import NO_EXPANSION, Augmentation, QueryExpansion
from lookalike.search.searcher import Choice, Searcher, SearchSettings, require_engine
from lookalike.storage.base import FileDetails, FileInfo, FileRecord, IndexStore, Known
from lookalike.storage.sqlite import Store

if TYPE_CHECKING:
    from lookalike.search.milvus import MilvusSearcher
    from lookalike.storage.milvus import MilvusStore

if TYPE_CHECKING:
    from lookalike.pipeline import Steps

DEFAULT_INDEX = "index.lookalike"
# Query expansion is off by default: with the standard n = 2, α = 3 it did not help both benchmarks
# (docs/BENCHMARKS.md, holidays section); `qe=2` / `--qe 2` turns it on.
DEFAULT_QE = NO_EXPANSION
# Database-side augmentation of the shortlist is on by default: it helped both benchmarks (docs/BENCHMARKS.md,
# holidays section); `dba=0` / `--dba 0` gives plain cosine order.
DEFAULT_DBA = Augmentation()
# `similar` asks for this many results more than wanted, for other indexed paths to the query's own file
SAME_FILE_SLACK = 4
SEAL_KEY = "seal_key"  # the meta entry holding the key of `Index.seal` (hex)


@dataclass(frozen=True)
class Hit:
    """One search result. score, which orders the results, is the cosine similarity (higher is closer) or the
    euclidean distance between unit vectors (lower is closer), as asked; with database-side augmentation on
    (the default) it is taken to the image's vector augmented with its nearest other results
    (search/rerank.py; an exact copy of the query keeps its plain score, 1). cosine is always the plain
    cosine similarity of the query and this image's own vector: 1 for an exact copy."""

    rank: int
    score: float
    path: str
    id: int
    width: int
    height: int
    stale: str | None = None  # "gone" or "changed": the file on disk is not what was indexed
    bytes: int = 0  # the file's size when it was indexed
    cosine: float | None = None  # the plain cosine to the image's own vector (None where not known)


def find_index(start: str | os.PathLike | None = None) -> tuple[str, str] | None:
    """The index a command means when none is named: (location, how it was found), or None.

    First `index.lookalike` in `start` (the working directory) or the nearest folder above it, as git finds
    its repository; then the index that `lookalike index` last wrote, recorded per user (`remember_index`)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_INDEX
        if candidate.is_file():
            return str(candidate), "here" if folder == here else f"the nearest {DEFAULT_INDEX} above {here}"
    try:
        last = _last_index_file().read_text().strip()
    except OSError:
        return None
    if last and (_store_kind(last) is not Store or Path(last).is_file()):
        return last, "the index `lookalike index` last wrote"
    return None


def remember_index(location: str | os.PathLike) -> None:
    """Record the index last written, so that commands run from another folder find it (`find_index`)."""
    location = str(location)
    if "://" not in location:
        location = str(Path(location).expanduser().resolve())
    path = _last_index_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(location + "\n")
        partial.replace(path)
    except OSError:
        pass  # a read-only home: commands then need --index, as before


def _last_index_file() -> Path:
    from lookalike.models.files import cache_dir

    return cache_dir() / "last-index"


def _searcher_for(store: IndexStore) -> Searcher | MilvusSearcher:
    """The searcher that fits a store: ours over the SQLite file, Milvus' own over a Milvus collection."""
    if isinstance(store, Store):
        return Searcher(store)
    from lookalike.search.milvus import MilvusSearcher

    return MilvusSearcher(cast("MilvusStore", store))


def _store_kind(location: str):
    """The store class for an --index value: Milvus for milvus:// and .db, else the SQLite file store."""
    from lookalike.storage.milvus import MilvusStore, is_milvus

    return MilvusStore if is_milvus(location) else Store


def _older(stored: ModelSpec, current: ModelSpec) -> bool:
    """Was `stored` made by an older version of the same registry model: its descriptor, or (both int8) its int8
    recipe? Such an index works as built and is told how to rebuild."""
    if stored.version != current.version:
        return stored.version < current.version
    both_int8 = stored.precision == current.precision == "int8"
    return both_int8 and stored.calibration < current.calibration


def rebuild_hint(path: str, stored: ModelSpec, current: ModelSpec, roots: list[str]) -> str:
    """One line: what an index holds, what the model is now, and the command that rebuilds it."""
    folders = " ".join(shlex.quote(root) for root in roots) or "PHOTOS_DIR"
    new = shlex.quote(str(Path(path).with_name(Path(path).stem + f"-v{current.version}{Path(path).suffix}")))
    return (f"{path} holds {stored.name} {stored.describe()} vectors; {current.name} is now {current.describe()}: "
            f"rebuild with `lookalike index {folders} --index {new}` (or use this index without --model)")


def _hmac(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file a path leads to (links followed), or None when it cannot be reached."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _stale(path: str, record: Known | None) -> str | None:
    """"gone" or "changed" where the file at `path` is not what its index record says (missing, or another size
    or modification time), else None."""
    try:
        found = os.stat(path)
    except OSError:
        return "gone"
    same = record is None or (found.st_size == record.size and found.st_mtime_ns == record.mtime_ns)
    return None if same else "changed"


class Results(list):
    """The hits of one search (a list of Hit), with the engine that answered and how long it took."""

    def __init__(self, hits: list[Hit], engine: str, seconds: float, query_stale: str | None = None):
        super().__init__(hits)
        self.engine = engine
        self.seconds = seconds
        self.query_stale = query_stale  # `similar`: "gone" or "changed" where the query's file is not what was indexed


class Index:
    """An image index on disk. Cheap to open; the model loads on first use, the vectors on first search."""

    def __init__(self, store: IndexStore, *, threads: int | None = None, embedder: Embedder | None = None,
                 steps: Steps | None = None):
        self.store = store
        self.threads = threads
        self._embedder = embedder
        self.searcher = _searcher_for(store)
        self.steps = steps  # hears the one-off waits: a model's export, an ANN index's first build

    @classmethod
    def open(
        cls,
        path: str | os.PathLike = DEFAULT_INDEX,
        *,
        model: str | ModelSpec | None = None,
        create: bool = False,
        threads: int | None = None,
        steps: Steps | None = None,
    ) -> Index:
        """Open the index at `path`: a .lookalike file, or a Milvus collection (milvus://HOST:PORT/NAME, or a
        Milvus Lite file PATH.db). With `create`, make it if missing, for `model` (default: the default
        model). With `model`, refuse an existing index built with another model. `steps` hears the one-off
        waits (exporting the model on first use, building an ANN index): see pipeline.Steps."""
        path = str(path)
        kind = _store_kind(path)
        requested = resolve_spec(model) if isinstance(model, str) else model
        if create and not kind.exists(path):
            # Load the model first: it fills in the dims and input size of an ONNX file, and a model that
            # cannot load must not leave an empty index behind.
            embedder = Embedder(requested or resolve_spec(None), threads=threads, steps=steps)
            try:
                return cls(kind.create(path, embedder.spec), threads=threads, embedder=embedder, steps=steps)
            except FileExistsError:
                requested = embedder.spec  # another process made it meanwhile: open theirs, same model checks
        store = kind.open(path)
        if requested is not None and not same_model(store.spec, requested):
            stored = store.spec
            roots = store.roots()
            store.close()
            if stored.name == requested.name and (_older(stored, requested) or _older(requested, stored)):
                raise ModelMismatch(rebuild_hint(path, stored, requested, roots))
            if stored.name == requested.name and stored.precision != requested.precision:
                raise ModelMismatch(f"{path} holds {stored.precision} vectors of {stored.name}, not "
                                    f"{requested.precision}: use --precision {stored.precision}, or another --index")
            raise ModelMismatch(
                f"{path} holds vectors of {stored.name}, not {requested.name}: use --model {stored.name}, "
                "or another --index for the other model"
            )
        return cls(store, threads=threads, steps=steps)

    def close(self) -> None:
        self.store.close()

    def outdated(self) -> str | None:
        """One line saying how to rebuild, when this index was built with an older version of a registry
        model's descriptor (it still works, with the descriptor it was built with); else None."""
        current = MODELS.get(self.spec.name)
        if current is None or current.source == "file" or not _older(self.spec, replace(current,
                                                                                        precision=self.spec.precision)):
            return None
        return rebuild_hint(str(self.path), self.spec, current, self.store.roots())

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.counts()["ok"]

    @property
    def steps(self) -> Steps | None:
        """Who hears the one-off waits (model export, ANN builds); None once nobody is listening."""
        return self._steps

    @steps.setter
    def steps(self, steps: Steps | None) -> None:
        self._steps = steps
        self.searcher.steps = steps

    @property
    def path(self) -> Path | str:
        """The index file, or the Milvus location (milvus://HOST:PORT/NAME, PATH.db) as given."""
        return self.store.path

    @property
    def spec(self) -> ModelSpec:
        return self.store.spec

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.spec, threads=self.threads, steps=self.steps)
        return self._embedder

    # -- writing -------------------------------------------------------------------------------

    def add(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        workers: int | None = None,
        batch_size: int = 32,
        progress: pipeline.Progress | None = None,
        sync: bool = True,
    ) -> pipeline.Summary:
        """Index files and folders. Unchanged files are skipped, changed ones re-embedded. With `sync`
        (the default), files that were indexed under a given folder and are gone from it are dropped."""
        files: list[Path] = []
        folders: list[str] = []
        for given in paths:
            root = images.absolute(given)
            if not root.exists():
                raise NotFound(f"not found: {given}")
            if root.is_dir():
                folders.append(str(root))
            files.extend(images.discover(root, skip=self.store.own_paths()))
        for folder in folders:
            self.store.add_root(folder)
        return pipeline.run(
            self.store,
            self.embedder,
            files,
            remove_missing_under=folders if sync else None,
            workers=workers,
            batch_size=batch_size,
            progress=progress,
        )

    def remove(self, paths: Iterable[str | os.PathLike]) -> int:
        """Drop these files from the index (the files themselves are never touched)."""
        return self.store.remove(str(images.absolute(p)) for p in paths)

    def records_of(self, paths: Iterable[str]) -> list[FileRecord]:
        """What the index holds of these files (as stored paths), vectors included: enough to put them back
        with `restore` without embedding them again (how quarantine keeps moved files)."""
        wanted = set(paths)
        records = []
        for path, width, height, size, mtime_ns, sha256 in self.store.details().values():
            if path in wanted:
                vector = self.store.vector_of(path)
                records.append(FileRecord(path, size, mtime_ns, sha256, width, height, vector,
                                          "" if vector is not None else "not an image"))
        return records

    def restore(self, records: Iterable[FileRecord]) -> int:
        """Write these records back (files that left the index and came back unchanged): no re-embedding.
        Records whose vector does not fit this index's model are skipped. Returns how many were written."""
        dims = self.spec.dims
        fitting = [r for r in records if r.vector is None or r.vector.shape == (dims,)]
        if fitting:
            self.store.write(fitting)
        return len(fitting)

    def seal(self, payload: bytes) -> str:
        """An HMAC-SHA256 (hex) of `payload` under a secret key that only this index holds (made on first use):
        the index's signature on what it writes into a file that leaves it (a quarantine manifest's records),
        so that `vouches` can later tell them from anything written or changed by someone else."""
        return _hmac(self._seal_key(), payload)

    def vouches(self, payload: bytes, seal: object) -> bool:
        """Whether `seal` is this index's own `seal` of `payload` (compared in constant time). Writes nothing:
        an index that never sealed anything vouches for nothing."""
        key = self.store.meta(SEAL_KEY)
        if key is None or not isinstance(seal, str):
            return False
        return hmac.compare_digest(_hmac(bytes.fromhex(key), payload), seal)

    def _seal_key(self) -> bytes:
        key = self.store.meta(SEAL_KEY)
        if key is None:
            self.store.set_meta(SEAL_KEY, secrets.token_hex(32))
            key = cast(str, self.store.meta(SEAL_KEY))  # a process that raced this one may have written its own
        return bytes.fromhex(key)

    # -- reading -------------------------------------------------------------------------------

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], unit vectors float32 [n, dims]) of every indexed image."""
        return self.store.vectors()

    def ids(self) -> np.ndarray:
        """int64 [n]: the ids of every indexed image (those with a vector)."""
        return self.store.ids()

    def vector_of(self, path: str | os.PathLike) -> np.ndarray | None:
        """The stored unit vector of an indexed file, float32 [dims], or None if it has none."""
        return self.store.vector_of(str(images.absolute(path)))

    def files(self, ids: Iterable[int] | np.ndarray) -> dict[int, FileInfo]:
        """id -> FileInfo (path, width, height) for these ids; ids the index does not hold are left out."""
        return self.store.files(ids)

    def details(self) -> dict[int, FileDetails]:
        """id -> FileDetails (path, size, dimensions, mtime, sha256) of every file, failed ones included."""
        return self.store.details()

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        """(path, reason) of files that could not be indexed."""
        return self.store.failures(limit)

    def search_vectors(self, queries: np.ndarray, k: int, *, ann: str | None = None,
                       exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The batch form of search, arrays in and out, like faiss: unit queries float32 [m, dims] ->
        (cosine scores float32 [m, k], ids int64 [m, k], -1 where fewer than k). `exclude` int64 [m] leaves
        one id out of each row (a query's own id)."""
        answer = self.searcher.search(np.atleast_2d(np.asarray(queries, np.float32)), k, ann=ann, exclude=exclude)
        return answer.scores, answer.ids

    @property
    def search_settings(self) -> SearchSettings:
        """How this index answers: engine, PCA, memory budget (see `configure`)."""
        return self.searcher.settings

    def engine_choice(self, ann: str | None = None) -> Choice:
        """Which engine would answer a search now (with `ann` instead of the index's own), and why."""
        return self.searcher.choice(ann)

    @property
    def cache_dir(self) -> Path | None:
        """Where derived files live (INDEX-cache/: vectors, ANN indexes, thumbnails); None on Milvus."""
        folder = getattr(self.searcher, "folder", None)
        return Path(folder) if folder is not None else None

    def neighbour_ids(self, k: int = 10, *, ann: str | None = None, batch: int = 1024,
                      shortlist: int | None = None):
        """Every indexed image's k nearest others as arrays, a batch at a time: yields (ids int64 [b],
        neighbour ids int64 [b, k] (-1 for none), cosine float32 [b, k]). Never an n x n matrix.
        `shortlist`: with an approximate engine, how many it proposes per image (see Searcher.search)."""
        yield from self.searcher.neighbours(k, ann=ann, batch=batch, shortlist=shortlist)

    def embed(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """One image (a path or a PIL image) -> its unit vector, float32 [dims]."""
        if not isinstance(image, Image.Image):
            path = Path(image).expanduser()
            if not path.is_file():
                raise NotFound(f"query not found: {image}")
            size = self.spec.input_size
            decoded = images.load(path, draft=(size, size))
            if decoded.image is None:
                raise NotAnImage(f"{image}: {decoded.error}")
            image = decoded.image
        return self.embedder.embed_images([images.to_rgb(image)])[0]

    def search(
        self,
        query: str | os.PathLike | Image.Image | np.ndarray,
        k: int = 10,
        *,
        metric: str = "cosine",
        exclude: str | os.PathLike | None = None,
        ann: str | None = None,
        qe: int | QueryExpansion | None = None,
        dba: int | Augmentation | None = None,
    ) -> Results:
        """The k indexed images closest to `query`: an image file, a PIL image, or a vector. `ann` overrides
        the index's engine for this search ("exact", "hnsw", "ivfpq", "annoy", "exact-f16", "auto"). `qe`:
        α-query expansion with this many neighbours (0: off; None: the default, DEFAULT_QE), which searches
        twice with whatever engine answers. `dba`: the shortlist re-ranked by database-side augmentation with
        this many neighbours (0: off, plain cosine order; None: the default, DEFAULT_DBA)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if ann is not None and ann not in ENGINES:
            raise UsageError(f"--ann must be one of {', '.join(ENGINES)}, not {ann!r}")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise UsageError(f"k must be a whole number of results, 1 or more, not {k!r}")
        expansion = qe if isinstance(qe, QueryExpansion) else QueryExpansion(DEFAULT_QE.neighbours if qe is None
                                                                             else qe)
        augmentation = dba if isinstance(dba, Augmentation) else (DEFAULT_DBA if dba is None
                                                                  else Augmentation(dba))
        started = time.perf_counter()
        vector = asked = self._query_vector(query) if isinstance(query, np.ndarray) else self.embed(query)
        skip = None if exclude is None else self.store.id_of(str(exclude))
        skipped = None if skip is None else np.array([skip])
        if expansion.on:
            first = self.searcher.search(vector[None, :], expansion.neighbours, ann=ann, exclude=skipped)
            found = first.ids[0] >= 0
            neighbours = self.searcher.vectors_of(first.ids[0][found])
            vector = expansion.expand(vector[None, :], neighbours[None], first.scores[0][found][None])[0]
        wanted = max(k, augmentation.shortlist) if augmentation.on else k
        answer = self.searcher.search(vector[None, :], wanted, ann=ann, exclude=skipped, sized_for=k,
                                      with_vectors=augmentation.on)
        scores, ids = answer.scores[0], answer.ids[0]
        cosines = scores
        engine = answer.engine + (f", α-QE {expansion.neighbours}" if expansion.on else "")
        if augmentation.on:
            held = None if answer.vectors is None else answer.vectors[0]
            scores, ids, cosines = self._augmented(vector, scores, ids, augmentation, held)
            engine += f", α-DBA {augmentation.neighbours} of {augmentation.shortlist}"
        if expansion.on:  # the scores were taken to the expanded query: the plain cosine is to the query asked
            cosines = self._plain_cosines(asked, ids[:k])
        hits = self._hits(scores[:k], ids[:k], metric, cosines=cosines[:k])
        return Results(self.check_files(hits), engine, time.perf_counter() - started)

    def _query_vector(self, query: np.ndarray) -> np.ndarray:
        """A vector given as the query, checked and made unit length: float32 [dims]."""
        vector = np.asarray(query, np.float32)
        if vector.shape != (self.spec.dims,):
            raise UsageError(f"the query vector must be {self.spec.dims} numbers (float32 [{self.spec.dims}]), "
                             f"not an array of shape {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0:
            raise UsageError("the query vector must be finite and not all zeros")
        return vector / norm

    def _plain_cosines(self, vector: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids)]: the cosine of `vector` to each of these ids' own vectors (-1 ids: nan)."""
        out = np.full(len(ids), np.nan, np.float32)
        found = ids >= 0
        if found.any():
            out[found] = self._vectors(ids[found]) @ vector
        return out

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """The full vectors of these ids, in their order: float32 [len(ids), dims], read in ascending id order
        (sequential reads of the memory map)."""
        order = np.argsort(ids)
        rows = np.empty((len(ids), self.spec.dims), np.float32)
        rows[order] = self.searcher.vectors_of(ids[order])
        return rows

    def _augmented(self, vector: np.ndarray, scores: np.ndarray, ids: np.ndarray,
                   augmentation: Augmentation, held: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query's results in plain order (scores float32 [c], ids int64 [c], -1 for none), their first
        `augmentation.shortlist` re-scored and re-ordered by database-side augmentation, the rest after them as
        they were (a large k costs no more than the shortlist): (scores, ids, the plain cosine scores). `held`:
        the results' vectors [c, d] where the search handed them over (re-ranking had read them), else read here."""
        found = ids >= 0
        ids, scores = ids[found], scores[found]
        head = min(len(ids), augmentation.shortlist)
        if head < 2:
            return scores, ids, scores
        rescored = scores.copy()
        candidates = held[found][:head] if held is not None else self._vectors(ids[:head])
        rescored[:head] = augmentation.rescore(vector[None, :], candidates[None])[0]
        best = np.concatenate([np.argsort(-rescored[:head], kind="stable"), np.arange(head, len(ids))])
        return rescored[best], ids[best], scores[best]

    def check_files(self, hits: list[Hit]) -> list[Hit]:
        """The hits, each marked stale="gone" or "changed" where the file on disk is no longer what was indexed
        (missing, or another size or modification time): the index needs `lookalike index` again."""
        known = self.store.known_ids([hit.id for hit in hits])
        checked = []
        for hit in hits:
            record = known.get(hit.id)
            checked.append(replace(hit, stale=_stale(hit.path, record), bytes=record.size if record is not None else 0))
        return checked

    def similar(self, path: str | os.PathLike, k: int = 10, *, metric: str = "cosine",
                ann: str | None = None, qe: int | QueryExpansion | None = None,
                dba: int | Augmentation | None = None) -> Results:
        """The k images closest to an already indexed image, itself left out: under this path and under any
        other indexed path to the same file on disk (a symbolic or hard link; an identical copy stays)."""
        key = str(images.absolute(path))
        vector = self.store.vector_of(key)
        if vector is None:  # named through a link, perhaps
            key = self._indexed_name(key)
            vector = self.store.vector_of(key)
        if vector is None and not os.path.lexists(path):
            raise NotIndexed(f"{path} does not exist and is not in the index {self.path}")
        if vector is None:
            raise NotIndexed(f"{path} is not in the index {self.path} (index it first, or search it as a file)")
        found = self.search(vector, k + SAME_FILE_SLACK, metric=metric, exclude=key, ann=ann, qe=qe, dba=dba)
        itself = _file_identity(key)
        others = [hit for hit in found if itself is None or _file_identity(hit.path) != itself][:k]
        file_id = self.store.id_of(key)
        record = self.store.known_ids([file_id]).get(file_id) if file_id is not None else None
        return Results([replace(hit, rank=rank) for rank, hit in enumerate(others, 1)], found.engine, found.seconds,
                       _stale(key, record))

    def _indexed_name(self, path: str) -> str:
        """The path under which the index holds the file `path` (not indexed as named) leads to, links followed:
        its real path (FOLDER/photo.jpg, given LINK/photo.jpg where LINK leads to the indexed FOLDER), or the
        same file below an indexed folder named through a link (the other way round). `path` where none is."""
        real, itself = os.path.realpath(path), _file_identity(path)
        names = [real] + [os.path.join(root, os.path.relpath(real, os.path.realpath(root))) for root in self.roots()
                          if Path(real).is_relative_to(os.path.realpath(root))]
        for name in names:  # the same file; or, from a link to where an indexed file was, that path
            if _file_identity(name) == itself and self.store.vector_of(name) is not None:
                return name
        return path

    def image_path(self, file_id: int) -> str | None:
        """The path of the image with this id, if it was indexed successfully (a failed file has none)."""
        return self.store.image_path(int(file_id))

    def roots(self) -> list[str]:
        """The folders indexed as a whole (files indexed one by one are below none of them)."""
        return self.store.roots()

    def configure(self, settings: SearchSettings | None = None, /, **changes: Any) -> None:
        """Record how this index answers (kept in the index file): whole `settings`, and/or the fields named
        in `changes` (ann, pca, whiten, memory_budget, rerank) over the current ones; `memory_budget=None`
        clears the budget."""
        if not isinstance(self.searcher, Searcher):
            raise UsageError("--ann, --pca and --memory-budget apply to .lookalike indexes; "
                                 "Milvus answers with its own HNSW index")
        settings = replace(settings or self.searcher.settings, **changes)
        if settings.pca >= self.spec.dims:
            raise UsageError(f"--pca {settings.pca} is not below the model's {self.spec.dims} dims: choose "
                             "fewer, or --pca none for the full vectors")
        require_engine(settings.ann, settings.pca)
        settings.save(self.searcher.store)
        self.searcher = Searcher(self.searcher.store, settings)
        self.searcher.steps = self.steps

    def prepare_search(self, say: Callable[[str], None] | None = None) -> str:
        """Build or update (and save) the engine that will answer, so that no search has to: `lookalike index`
        calls this at the end. `say` is told what is built or updated. Returns the engine's name."""
        if len(self) == 0:
            return "exact"
        engine = self.searcher.choice().engine
        self.searcher.engine(engine, save=True, say=say)
        return engine

    def neighbours(self, k: int = 10, *, ann: str | None = None, batch: int = 1024):
        """Every indexed image with its k nearest others (itself left out): yields (path, [Hit, ...]).
        Computed a batch at a time with k-NN search, never as an n x n matrix."""
        for ids, neighbour_ids, scores in self.searcher.neighbours(k, ann=ann, batch=batch):
            files = self.store.files(np.unique(np.concatenate([ids, neighbour_ids.ravel()])))
            for file_id, row_ids, row_scores in zip(ids, neighbour_ids, scores, strict=True):
                yield files[int(file_id)][0], self._hits(row_scores, row_ids, "cosine", files)

    def info(self) -> dict:
        spec = self.spec
        counts = self.store.counts()
        return {
            "index": str(self.path),
            "images": counts["ok"],
            "failed": counts["failed"],
            "model": spec.name,
            "dims": spec.dims,
            "input_size": spec.input_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "precision": spec.precision,
            "search": self.searcher.describe(),
            "roots": self.store.roots(),
            "size_bytes": self.store.size_bytes(),
            "failures": [{"path": p, "error": e} for p, e in self.store.failures()],
        }

    def copy_to(self, location: str | os.PathLike) -> int:
        """Copy every file record, vector and setting into a new index at `location` (a .lookalike file or
        Milvus): how a collection moves between the embedded store and Milvus. Returns the files copied."""
        kind = _store_kind(str(location))
        if kind.exists(str(location)):
            raise UsageError(f"{location} exists already: copy into a new index")
        target = kind.create(str(location), self.spec)
        try:
            copied = 0
            for records in self.store.records():
                target.write(records)
                copied += len(records)
            for root in self.store.roots():
                target.add_root(root)
            if self.store.meta("search"):
                target.set_meta("search", self.store.meta("search"))
        finally:
            target.close()
        return copied

    # -- internals -----------------------------------------------------------------------------

    def _hits(self, scores: np.ndarray, ids: np.ndarray, metric: str, files: dict | None = None, *,
              cosines: np.ndarray | None = None) -> list[Hit]:
        files = files if files is not None else self.store.files(ids)
        cosines = scores if cosines is None else cosines
        hits: list[Hit] = []
        for score, file_id, cosine in zip(scores, ids, cosines, strict=True):
            if not np.isfinite(score) or int(file_id) not in files:
                continue
            path, width, height = files[int(file_id)]
            value = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(score)))) if metric == "euclidean" else float(score)
            plain = float(cosine) if np.isfinite(cosine) else None
            hits.append(Hit(len(hits) + 1, value, path, int(file_id), width or 0, height or 0, cosine=plain))
        return hits
