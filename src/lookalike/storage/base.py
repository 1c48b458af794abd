"""What every store answers to, and the rows it hands out.

`IndexStore` is a typing.Protocol: the SQLite file store (sqlite.py) and the Milvus store (milvus.py) both
implement it, and the indexing pipeline and `Index` use nothing else. A store keeps files and vectors; it
knows nothing about search (Index.open pairs a store with the searcher that fits it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from lookalike.errors import IndexNotFound
from lookalike.models.registry import ModelSpec

FORMAT = "lookalike-index"
FORMAT_VERSION = "1"


@dataclass
class FileRecord:
    """One file's outcome, ready to be written: a vector, or an error saying why there is none."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    width: int = 0
    height: int = 0
    vector: np.ndarray | None = None
    error: str = ""


@dataclass(frozen=True)
class Known:
    """What the store remembers of a file, enough to tell whether it changed."""

    size: int
    mtime_ns: int
    sha256: str | None
    status: str


class FileInfo(NamedTuple):
    """An indexed image as search results show it."""

    path: str
    width: int
    height: int


class FileDetails(NamedTuple):
    """An indexed image with what duplicate handling weighs: its size on disk, age and content hash."""

    path: str
    width: int
    height: int
    size: int
    mtime_ns: int
    sha256: str | None


class IndexStore(Protocol):
    """The files of an index and their vectors. Implementations also provide the class methods
    `exists(location)`, `open(location)` and `create(location, spec)`."""

    path: Path | str

    def close(self) -> None: ...

    def size_bytes(self) -> int: ...

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def known(self, under: str | None = None) -> dict[str, Known]:
        """Every file's remembered size, mtime, hash and status, by path (below `under` if given)."""
        ...

    def known_ids(self, ids: Sequence[int]) -> dict[int, Known]: ...

    def write(self, records: Sequence[FileRecord]) -> None:
        """Store these files' outcomes, replacing earlier rows of the same paths, all or nothing."""
        ...

    def touch(self, items: Iterable[tuple[str, int, int]]) -> None:
        """Record a new (path, size, mtime_ns) for files whose bytes did not change."""
        ...

    def remove(self, paths: Iterable[str]) -> int: ...

    def add_root(self, path: str) -> None: ...

    def roots(self) -> list[str]: ...

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], vectors float32 [n, d]) of every file with a vector."""
        ...

    def ids(self) -> np.ndarray: ...

    def vector_of(self, path: str) -> np.ndarray | None: ...

    def id_of(self, path: str) -> int | None: ...

    def image_path(self, file_id: int) -> str | None: ...

    def own_paths(self) -> list[Path]:
        """The files and folders the store keeps on the local disk (the index file, its cache; none for a
        Milvus server), which indexing must never take for photos when the index lives among them."""
        ...

    def details(self) -> dict[int, FileDetails]: ...

    def files(self, ids: Iterable[int]) -> dict[int, FileInfo]: ...

    def counts(self) -> dict[str, int]: ...

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]: ...

    def records(self, batch: int = 1000) -> Iterator[list[FileRecord]]: ...

    @property
    def spec(self) -> ModelSpec:
        """The model the index was built with, as recorded at creation."""
        model = self.meta("model")
        if model is None:
            raise IndexNotFound("this index records no model: it is damaged or not a lookalike index")
        return ModelSpec.from_json(model)

    @property
    def generation(self) -> int:
        """Bumped by every write: caches derived from the store compare it to know they are stale."""
        return int(self.meta("generation") or 0)
