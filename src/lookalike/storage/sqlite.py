"""Store: the index on disk, one SQLite file that is the truth about what is indexed.

A file's row and its vector are written in the same transaction, in WAL mode, so a process killed at any
moment leaves a file that opens, holding every batch it committed and nothing half-written; a re-run
picks up the rest. The model an index was built with is recorded at creation, and every write is checked
against it by the caller (Index) before it reaches here.

Schema (plain tables, readable with the sqlite3 shell):
  meta(key, value)            format, model spec (JSON), generation counter
  files(id, path, size, mtime_ns, sha256, width, height, status, error, indexed_at)
  vectors(file_id, vector)    float32 little-endian blobs, one per file with status "ok"
  roots(path, added_at)       folders indexed as a whole; re-indexing one drops files gone from it
  removed(file_id, generation) every vector ever deleted and the generation it was deleted at (a trigger
                              fills it), so that the search cache can follow the store in proportion to
                              what changed: new ids are those above the last it holds (ids only grow),
                              gone ones are listed here

Paths are TEXT holding a file name's bytes exactly, UTF-8 or not (see _key): a Latin-1 name from an old
camera or share is stored and found again like any other.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import numpy as np

from lookalike.errors import DiskFull, IndexDamaged, IndexNotFound, IndexReadOnly, ModelMismatch
from lookalike.fileio import temporary_name
from lookalike.models.registry import ModelSpec, same_model
from lookalike.storage.base import FORMAT, FORMAT_VERSION, FileDetails, FileInfo, FileRecord, IndexStore, Known

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS vectors (
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY, added_at REAL NOT NULL);
"""

# Added after format 1 shipped: created on open where missing (a store that predates it has no log of what
# was removed before, and its search cache, of an older layout, is rebuilt whole once).
CHANGE_LOG = """
CREATE TABLE IF NOT EXISTS removed (file_id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_generation ON removed(generation);
CREATE TRIGGER IF NOT EXISTS vectors_removed AFTER DELETE ON vectors BEGIN
    INSERT OR REPLACE INTO removed VALUES
        (OLD.file_id, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'));
END;
"""


def explained(exc: sqlite3.Error, path: Path | str) -> Exception:
    """The LookalikeError for what SQLite said, when it is about the disk or the file; else `exc` itself."""
    text = str(exc).lower()
    if "database or disk is full" in text:
        return DiskFull(f"the disk holding {path} is full: free some space and run the same command again "
                        "(what was written before is kept)")
    if "readonly" in text or "read-only" in text:
        return IndexReadOnly(f"{path} is read-only here: it can be searched but not changed (copy it somewhere "
                             "writable, or run as its owner)")
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return IndexDamaged(f"{path} is damaged (SQLite: {exc}): build a new index from the photos with "
                            "`lookalike index PHOTOS_DIR --index NEW.lookalike`")
    return exc


P = ParamSpec("P")
R = TypeVar("R")


def _reads(method: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """A Store read that turns SQLite's word for a damaged file into IndexDamaged (one line, not a bug)."""

    @functools.wraps(method)
    def read(self: Store, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise explained(exc, self.path) from exc

    return read


class Store(IndexStore):
    """An index file. Open existing ones with `Store.open`, make new ones with `Store.create`."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self.db = connection

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return Path(path).expanduser().exists()

    @classmethod
    def open(cls, path: str | Path) -> Store:
        path = Path(path).expanduser()
        if not path.is_file():
            raise IndexNotFound(f"no index at {path}: build one with `lookalike index PHOTOS_DIR --index {path}`")
        if _format_of(path) != FORMAT:
            raise IndexNotFound(f"{path} is not a lookalike index (choose another --index path)")
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            return cls(path, _connect_read_only(path))  # searches work; a write says IndexReadOnly
        try:
            db = _connect(path)
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'vectors_removed'").fetchone() is None:
                with contextlib.suppress(sqlite3.OperationalError):  # read-only: the cache is rebuilt whole when stale
                    db.executescript(CHANGE_LOG)
        except sqlite3.Error as exc:
            raise explained(exc, path) from exc
        return cls(path, db)

    @classmethod
    def create(cls, path: str | Path, spec: ModelSpec) -> Store:
        """A new, empty index for `spec`; built aside and renamed into place, so a crash leaves nothing."""
        path = Path(path).expanduser()
        if path.exists():
            raise FileExistsError(f"{path} exists already")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_name(path)  # its own name: two processes creating one index never share it
        db = _connect(partial)
        db.executescript(SCHEMA + CHANGE_LOG)
        with _Transaction(db):
            for key, value in {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model": spec.to_json(),
                "generation": "0",
                "created_at": str(time.time()),
            }.items():
                db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
        db.execute("PRAGMA journal_mode = DELETE")  # fold the WAL in so that one file holds everything
        db.close()
        try:
            os.link(partial, path)  # published only if nobody else did meanwhile (a rename would replace theirs)
        except FileExistsError:
            pass  # another process created it first: use theirs, if it is for the same model
        finally:
            partial.unlink(missing_ok=True)
        store = cls.open(path)
        if not same_model(store.spec, spec):
            store.close()
            raise ModelMismatch(f"{path} was just created by another process for {store.spec.name}, not {spec.name}: "
                                "use another --index")
        return store

    def close(self) -> None:
        self.db.close()

    def own_paths(self) -> list[Path]:
        """The SQLite file, its journals and the search cache beside it (INDEX-cache/: vectors, engines,
        the server's thumbnails): never to be indexed as photos when the index lives among them."""
        return [self.path, *(Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm", "-journal", "-cache"))]

    def size_bytes(self) -> int:
        """The index on disk: the SQLite file, its WAL, and the derived search cache."""
        cache = Path(str(self.path) + "-cache")
        files = [p for p in self.path.parent.glob(f"{self.path.name}*") if p.is_file()]
        if cache.is_dir():
            files += [p for p in cache.rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files)

    def transaction(self) -> _Transaction:
        return _Transaction(self.db, self.path)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same generation, whatever others commit."""
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    @property
    def identity(self) -> str:
        """Tells this index from another one made later at the same path (its creation time)."""
        return self.meta("created_at") or ""

    # -- metadata --------------------------------------------------------------------------------

    @_reads
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _bump(self) -> None:
        self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    # -- files -----------------------------------------------------------------------------------

    @_reads
    def known(self, under: str | None = None) -> dict[str, Known]:
        """Every file the store holds (optionally only those below folder `under`), by path."""
        sql = "SELECT path, size, mtime_ns, sha256, status FROM files"
        args: tuple = ()
        if under is not None:
            prefix = _key(under.rstrip("/") + "/")
            width = len(prefix.encode() if isinstance(prefix, str) else prefix)
            sql += " WHERE substr(CAST(path AS BLOB), 1, ?) = CAST(? AS BLOB)"  # bytes, as names may not be UTF-8
            args = (width, prefix)
        return {row[0]: Known(*row[1:]) for row in self.db.execute(sql, args)}

    def write(self, records: Sequence[FileRecord]) -> None:
        """Insert or replace these files and their vectors, all or nothing."""
        now = time.time()
        with self.transaction():
            for rec in records:
                status = "ok" if rec.vector is not None else "failed"
                # A changed file gets a new id (ids are never reused): derived indexes tell what changed
                # from ids alone.
                self.db.execute("DELETE FROM files WHERE path = CAST(? AS TEXT)", (_key(rec.path),))
                file_id = self.db.execute(
                    "INSERT INTO files (path, size, mtime_ns, sha256, width, height, status, error, indexed_at)"
                    " VALUES (CAST(? AS TEXT), ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (_key(rec.path), rec.size, rec.mtime_ns, rec.sha256, rec.width, rec.height, status,
                     rec.error or None, now),
                ).fetchone()[0]
                if rec.vector is not None:
                    blob = np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
                    self.db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?)", (file_id, blob))
            self._bump()

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @_reads
    def ids(self) -> np.ndarray:
        """int64 [n]: the ids of every file with a vector, ascending."""
        return np.array([row[0] for row in self.db.execute("SELECT file_id FROM vectors ORDER BY file_id")],
                        dtype=np.int64)

    def touch(self, items: Iterable[tuple[str, int, int]]) -> None:
        """Record new (size, mtime) for files whose bytes did not change (same hash): no re-embedding."""
        with self.transaction():
            self.db.executemany("UPDATE files SET size = ?, mtime_ns = ? WHERE path = CAST(? AS TEXT)",
                                [(size, mtime, _key(path)) for path, size, mtime in items])

    def remove(self, paths: Iterable[str]) -> int:
        with self.transaction():
            removed = 0
            for path in paths:
                removed += self.db.execute("DELETE FROM files WHERE path = CAST(? AS TEXT)", (_key(path),)).rowcount
            if removed:
                self._bump()
        return removed

    def add_root(self, path: str) -> None:
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO roots VALUES (CAST(? AS TEXT), ?)", (_key(path), time.time()))

    @_reads
    def roots(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT path FROM roots ORDER BY path")]

    # -- reading vectors -------------------------------------------------------------------------

    @_reads
    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], vectors float32 [n, d]) of every indexed file, in id order."""
        dims = self.spec.dims
        rows = self.db.execute("SELECT file_id, vector FROM vectors ORDER BY file_id").fetchall()
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dims)
        return ids, matrix.astype(np.float32, copy=False)

    def vector_batches(self, after_id: int = -1, batch: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 [b], vectors float32 [b, d]) of every file with a vector and an id above `after_id`,
        in id order, a batch at a time: the whole collection never sits in Python objects at once."""
        dims = self.spec.dims
        while True:
            rows = self.db.execute("SELECT file_id, vector FROM vectors WHERE file_id > ? ORDER BY file_id LIMIT ?",
                                   (after_id, batch)).fetchall()
            if not rows:
                return
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), dims)
            yield ids, matrix.astype(np.float32)
            after_id = int(ids[-1])

    def removed_since(self, generation: int) -> np.ndarray | None:
        """int64 ids of the vectors deleted at or after `generation`, ascending; None when this store keeps no
        log of them (an old, read-only file)."""
        try:
            rows = self.db.execute("SELECT file_id FROM removed WHERE generation >= ? ORDER BY file_id",
                                   (generation,)).fetchall()
        except sqlite3.OperationalError:
            return None
        return np.array([row[0] for row in rows], dtype=np.int64)

    @_reads
    def vector_of(self, path: str) -> np.ndarray | None:
        row = self.db.execute(
            "SELECT v.vector FROM vectors v JOIN files f ON f.id = v.file_id WHERE f.path = CAST(? AS TEXT)",
            (_key(path),)
        ).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype="<f4").astype(np.float32)

    @_reads
    def details(self) -> dict[int, FileDetails]:
        """id -> FileDetails of every file, failed ones included."""
        rows = self.db.execute("SELECT id, path, width, height, size, mtime_ns, sha256 FROM files")
        return {row[0]: FileDetails(row[1], row[2] or 0, row[3] or 0, row[4], row[5], row[6]) for row in rows}

    @_reads
    def id_of(self, path: str) -> int | None:
        row = self.db.execute("SELECT id FROM files WHERE path = CAST(? AS TEXT)", (_key(path),)).fetchone()
        return None if row is None else row[0]

    @_reads
    def image_path(self, file_id: int) -> str | None:
        """The path of file `file_id` if it has a vector (status ok), else None."""
        row = self.db.execute("SELECT path FROM files WHERE id = ? AND status = 'ok'", (file_id,)).fetchone()
        return None if row is None else row[0]

    def records(self, batch: int = 1000) -> Iterator[list[FileRecord]]:
        """Every file, with its vector where it has one, a batch at a time (for export to another store)."""
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT f.id, f.path, f.size, f.mtime_ns, f.sha256, f.width, f.height, f.error, v.vector"
                " FROM files f LEFT JOIN vectors v ON v.file_id = f.id WHERE f.id > ? ORDER BY f.id LIMIT ?",
                (last, batch)).fetchall()
            if not rows:
                return
            yield [FileRecord(path, size, mtime, sha, width or 0, height or 0,
                              None if blob is None else np.frombuffer(blob, dtype="<f4").astype(np.float32),
                              error or "")
                   for _, path, size, mtime, sha, width, height, error, blob in rows]
            last = rows[-1][0]

    @_reads
    def files(self, ids: Iterable[int]) -> dict[int, FileInfo]:
        """id -> FileInfo (path, width, height) for these ids."""
        return {row[0]: FileInfo(row[1], row[2], row[3]) for row in self._rows_by_id("path, width, height", ids)}

    @_reads
    def known_ids(self, ids: Sequence[int]) -> dict[int, Known]:
        """id -> what the store remembers of that file (size, mtime, hash, status), for these ids."""
        return {row[0]: Known(*row[1:]) for row in self._rows_by_id("size, mtime_ns, sha256, status", ids)}

    def _rows_by_id(self, columns: str, ids: Iterable[int]) -> Iterator[tuple]:
        """(id, *columns) of the files with these ids, asked in chunks: SQLite caps bound parameters."""
        wanted = [int(i) for i in ids]
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(f"SELECT id, {columns} FROM files WHERE id IN ({marks})", chunk)

    @_reads
    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0}
        counts.update(dict(self.db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall()))
        return counts

    @_reads
    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        sql = "SELECT path, error FROM files WHERE status = 'failed' ORDER BY path"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.db.execute(sql).fetchall()


def _format_of(path: Path) -> str | None:
    """Read-only look at a file: a lookalike index says so in its meta table. Nothing is written to a file
    that turns out to be something else (not even switching it to WAL mode)."""
    for options in ("mode=ro", "mode=ro&immutable=1"):  # immutable: a WAL file where no -shm can be made
        try:
            probe = sqlite3.connect(path.absolute().as_uri() + "?" + options, uri=True)
        except sqlite3.Error:
            return None
        try:
            row = probe.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            return row[0] if row else None
        except sqlite3.OperationalError:
            continue  # cannot open it here (a read-only folder): try again as immutable
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc):  # a SQLite file with a meta table, damaged: not someone else's file
                raise explained(exc, path) from exc
            return None
        finally:
            probe.close()
    return None


def _key(path: str) -> str | bytes:
    """A path as SQL parameter, always bound as `CAST(? AS TEXT)`: itself, or, for a name that is not UTF-8
    (its bytes kept by Python as surrogate escapes), its bytes, which SQLite stores as TEXT unchanged. Read
    back through _text, it is the same str again: no name is lost or refused."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for an index in a place this process may not write. A WAL index
    there cannot get its shared-memory file, so it is read as immutable: nobody can be writing it."""
    for options in ("mode=ro", "mode=ro&immutable=1"):
        db = sqlite3.connect(path.absolute().as_uri() + "?" + options, uri=True, isolation_level=None,
                             check_same_thread=False, timeout=30)
        db.text_factory = _text
        try:
            db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
    raise IndexReadOnly(f"{path} is in a place this process cannot write, and SQLite cannot read it there")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.text_factory = _text
    db.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode survives any crash of this process; only an OS crash may drop the last commits.
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: all or nothing. What SQLite says of the
    disk or the file (full, read-only, damaged) leaves as the LookalikeError that says so."""

    def __init__(self, db: sqlite3.Connection, path: Path | str = "the index"):
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise explained(exc, self.path) from exc
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as exc:
                kind, value = type(exc), exc
        with contextlib.suppress(sqlite3.Error):  # SQLite rolled back already (a full disk does)
            self.db.execute("ROLLBACK")
        if isinstance(value, sqlite3.Error):
            raise explained(value, self.path) from value
