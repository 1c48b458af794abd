"""Index: the public face of lookalike. A store on disk, the model that fills it, and search over it.

    from lookalike import Index
    with Index.open("photos.lookalike", create=True) as index:
        index.add(["~/Pictures"])
        for hit in index.search("query.jpg", k=10):
            print(hit.rank, hit.score, hit.path)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike import images, pipeline
from lookalike.errors import ModelMismatch, NotAnImage, NotFound, NotIndexed, UsageError
from lookalike.models.embedder import Embedder
from lookalike.models.registry import ModelSpec, resolve_spec, same_model
from lookalike.search.options import ENGINES, METRICS
from lookalike.search.searcher import Searcher, SearchSettings
from lookalike.storage.sqlite import Store

DEFAULT_INDEX = "index.lookalike"


@dataclass(frozen=True)
class Hit:
    """One search result. score is the cosine similarity (higher is closer) or the euclidean distance
    between unit vectors (lower is closer), as asked."""

    rank: int
    score: float
    path: str
    id: int
    width: int
    height: int


def _store_kind(location: str):
    """The store class for an --index value: Milvus for milvus:// and .db, else the SQLite file store."""
    from lookalike.storage.milvus import MilvusStore, is_milvus

    return MilvusStore if is_milvus(location) else Store


class Results(list):
    """The hits of one search (a list of Hit), with the engine that answered and how long it took."""

    def __init__(self, hits: list[Hit], engine: str, seconds: float):
        super().__init__(hits)
        self.engine = engine
        self.seconds = seconds


class Index:
    """An image index on disk. Cheap to open; the model loads on first use, the vectors on first search."""

    def __init__(self, store: Store, *, threads: int | None = None, embedder: Embedder | None = None):
        self.store = store
        self.threads = threads
        self._embedder = embedder
        self.searcher = store.searcher()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike = DEFAULT_INDEX,
        *,
        model: str | ModelSpec | None = None,
        create: bool = False,
        threads: int | None = None,
    ) -> Index:
        """Open the index at `path`: a .lookalike file, or a Milvus collection (milvus://HOST:PORT/NAME, or a
        Milvus Lite file PATH.db). With `create`, make it if missing, for `model` (default: the default
        model). With `model`, refuse an existing index built with another model."""
        path = str(path)
        kind = _store_kind(path)
        requested = resolve_spec(model) if isinstance(model, str) else model
        if create and not kind.exists(path):
            # Load the model first: it fills in the dims and input size of an ONNX file, and a model that
            # cannot load must not leave an empty index behind.
            embedder = Embedder(requested or resolve_spec(None), threads=threads)
            return cls(kind.create(path, embedder.spec), threads=threads, embedder=embedder)
        store = kind.open(path)
        if requested is not None and not same_model(store.spec, requested):
            stored = store.spec
            store.close()
            if stored.name == requested.name and stored.precision != requested.precision:
                raise ModelMismatch(f"{path} holds {stored.precision} vectors of {stored.name}, not "
                                    f"{requested.precision}: use --precision {stored.precision}, or another --index")
            raise ModelMismatch(
                f"{path} holds vectors of {stored.name}, not {requested.name}: use --model {stored.name}, "
                "or another --index for the other model"
            )
        return cls(store, threads=threads)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.store.counts()["ok"]

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def spec(self) -> ModelSpec:
        return self.store.spec

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.spec, threads=self.threads)
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
            files.extend(images.discover(root))
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

    # -- reading -------------------------------------------------------------------------------

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], unit vectors float32 [n, dims]) of every indexed image."""
        return self.store.vectors()

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
    ) -> Results:
        """The k indexed images closest to `query`: an image file, a PIL image, or a vector. `ann` overrides
        the index's engine for this search ("exact", "hnsw", "ivfpq", "annoy", "exact-f16", "auto")."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        if ann is not None and ann not in ENGINES:
            raise UsageError(f"--ann must be one of {', '.join(ENGINES)}, not {ann!r}")
        started = time.perf_counter()
        vector = query if isinstance(query, np.ndarray) else self.embed(query)
        skip = None if exclude is None else self.store.id_of(str(exclude))
        answer = self.searcher.search(vector[None, :], k, ann=ann,
                                      exclude=None if skip is None else np.array([skip]))
        return Results(self._hits(answer.scores[0], answer.ids[0], metric), answer.engine,
                       time.perf_counter() - started)

    def similar(self, path: str | os.PathLike, k: int = 10, *, metric: str = "cosine",
                ann: str | None = None) -> Results:
        """The k images closest to an already indexed image, itself left out."""
        key = str(images.absolute(path))
        vector = self.store.vector_of(key)
        if vector is None:
            raise NotIndexed(f"{path} is not in the index {self.path} (index it first, or search it as a file)")
        return self.search(vector, k, metric=metric, exclude=key, ann=ann)

    def image_path(self, file_id: int) -> str | None:
        """The path of the image with this id, if it was indexed successfully (a failed file has none)."""
        return self.store.image_path(int(file_id))

    def roots(self) -> list[str]:
        """The folders indexed as a whole (files indexed one by one are below none of them)."""
        return self.store.roots()

    def configure(self, settings: SearchSettings) -> None:
        """Record how this index answers (kept in the index file) and build what that needs."""
        if not isinstance(self.searcher, Searcher):
            raise UsageError("--ann, --pca and --memory-budget apply to .lookalike indexes; "
                                 "Milvus answers with its own HNSW index")
        settings.save(self.store)
        self.searcher = Searcher(self.store, settings)

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

    def _hits(self, scores: np.ndarray, ids: np.ndarray, metric: str, files: dict | None = None) -> list[Hit]:
        files = files if files is not None else self.store.files(ids)
        hits: list[Hit] = []
        for score, file_id in zip(scores, ids, strict=True):
            if not np.isfinite(score) or int(file_id) not in files:
                continue
            path, width, height = files[int(file_id)]
            value = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(score)))) if metric == "euclidean" else float(score)
            hits.append(Hit(len(hits) + 1, value, path, int(file_id), width or 0, height or 0))
        return hits
