"""Index: the public face of lookalike. A store on disk, the model that fills it, and search over it.

    from lookalike import Index
    with Index.open("photos.lookalike", create=True) as index:
        index.add(["~/Pictures"])
        for hit in index.search("query.jpg", k=10):
            print(hit.rank, hit.score, hit.path)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike import images, pipeline
from lookalike.errors import EmptyIndex, ModelMismatch, NotAnImage, NotIndexed
from lookalike.models.embedder import Embedder
from lookalike.models.registry import ModelSpec, resolve_spec, same_model
from lookalike.search import ExactIndex
from lookalike.store import Store

DEFAULT_INDEX = "index.lookalike"
METRICS = ("cosine", "euclidean")


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


class Index:
    """An image index on disk. Cheap to open; the model loads on first use, the vectors on first search."""

    def __init__(self, store: Store, *, threads: int | None = None, embedder: Embedder | None = None):
        self.store = store
        self.threads = threads
        self._embedder = embedder
        self._exact: ExactIndex | None = None
        self._exact_generation = -1

    @classmethod
    def open(
        cls,
        path: str | os.PathLike = DEFAULT_INDEX,
        *,
        model: str | ModelSpec | None = None,
        create: bool = False,
        threads: int | None = None,
    ) -> Index:
        """Open the index at `path`. With `create`, make it if missing, for `model` (default: the default
        model). With `model`, refuse an existing index built with another model."""
        path = Path(path).expanduser()
        requested = resolve_spec(model) if isinstance(model, str) else model
        if create and not path.exists():
            # Load the model first: it fills in the dims and input size of an ONNX file, and a model that
            # cannot load must not leave an empty index behind.
            embedder = Embedder(requested or resolve_spec(None), threads=threads)
            return cls(Store.create(path, embedder.spec), threads=threads, embedder=embedder)
        store = Store.open(path)
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
                raise NotAnImage(f"not found: {given}")
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
                raise NotAnImage(f"query not found: {image}")
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
    ) -> list[Hit]:
        """The k indexed images closest to `query`: an image file, a PIL image, or a vector."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        exact = self._search_index()
        vector = query if isinstance(query, np.ndarray) else self.embed(query)
        skip = None
        if exclude is not None:
            skip = self._id_of(exclude)
        scores, ids = exact.search(vector[None, :], k, exclude=None if skip is None else np.array([skip]))
        return self._hits(scores[0], ids[0], metric)

    def similar(self, path: str | os.PathLike, k: int = 10, *, metric: str = "cosine") -> list[Hit]:
        """The k images closest to an already indexed image, itself left out."""
        key = str(images.absolute(path))
        vector = self.store.vector_of(key)
        if vector is None:
            raise NotIndexed(f"{path} is not in the index {self.path} (index it first, or search it as a file)")
        return self.search(vector, k, metric=metric, exclude=key)

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
            "search": "exact",
            "roots": self.store.roots(),
            "size_bytes": sum(p.stat().st_size for p in self.path.parent.glob(f"{self.path.name}*") if p.is_file()),
            "failures": [{"path": p, "error": e} for p, e in self.store.failures()],
        }

    # -- internals -----------------------------------------------------------------------------

    def _search_index(self) -> ExactIndex:
        generation = self.store.generation
        if self._exact is None or generation != self._exact_generation:
            ids, vectors = self.store.vectors()
            if len(ids) == 0:
                raise EmptyIndex(f"{self.path} holds no images yet: add some with `lookalike index PHOTOS_DIR`")
            self._exact, self._exact_generation = ExactIndex(ids, vectors), generation
        return self._exact

    def _id_of(self, path: str | os.PathLike) -> int | None:
        row = self.store.db.execute("SELECT id FROM files WHERE path = ?", (str(path),)).fetchone()
        return None if row is None else row[0]

    def _hits(self, scores: np.ndarray, ids: np.ndarray, metric: str) -> list[Hit]:
        files = self.store.files(ids)
        hits = []
        for score, file_id in zip(scores, ids, strict=True):
            if not np.isfinite(score) or int(file_id) not in files:
                continue
            path, width, height = files[int(file_id)]
            value = float(np.sqrt(max(0.0, 2.0 - 2.0 * float(score)))) if metric == "euclidean" else float(score)
            hits.append(Hit(len(hits) + 1, value, path, int(file_id), width or 0, height or 0))
        return hits
