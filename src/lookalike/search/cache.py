"""The search cache beside an index (`INDEX-cache/`): files derived from the store, safe for many processes.

The store (SQLite) is the truth; everything here can be rebuilt from it, and is, whenever it is missing,
stale beyond repair or damaged. Layout:

    manifest.json          the only entry point, replaced whole by an atomic rename and written LAST: it
                           names every file below with its size and a checksum, and the store generation
                           they hold. A reader that follows it never sees half an update.
    lock                   filelock: one writer at a time (reading needs no lock)
    vectors-<token>.f32    float32 rows [rows, dims], raw and append-only: rows for new files are written past
                           the end, then a new manifest counts them; a reader maps only the rows its manifest
                           counts, so a writer appending never disturbs it
    ids-<token>.i64        the file id of each row, int64, ascending (the store never reuses or lowers ids)
    dead-<token>.npy       ids of rows whose files are gone (tombstones), until the rows are compacted
    pca-<token>.npz        the PCA projection, when the index searches in fewer dims
    <engine>-<token>/      a saved approximate index (hnsw, ivfpq, annoy, exact-f16)

Every name is unique (random, created with O_EXCL in this folder), so no two processes ever write the same
file, and files a manifest no longer names are deleted only under the lock. A reader whose files vanish
under it (replaced by a writer) reads the manifest again.

Checksums are chosen to be cheap at a million rows: sha256 of the whole ids array (8 MB), of 64 sampled rows
of the vectors (a reordered, shortened or foreign file fails it), of whole small files, and of 64 sampled
4 KB blocks plus the size of big ones (a saved HNSW graph is ~1.3 GB).

Bringing the cache up to date costs what changed, not what is held: new vectors are those with ids above
the last row (read from the store by id range), removed ones come from the store's `removed` log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import re
import secrets
import shutil
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from lookalike.search.pca import Projection
from lookalike.storage.sqlite import Store

log = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "manifest.json"
LOCK = "lock"
LOCK_TIMEOUT_S = 600  # a writer holds it for one update: seconds, or minutes for a first build at 1M
COMPACT_SHARE = 0.25  # rewrite the vectors without their dead rows once this share of rows is dead
SAMPLES = 64
SMALL_FILE = 16 << 20  # files up to this size are hashed whole
# What this module may delete when no manifest names it: its own names, and those of the older layout
# (vectors.npy, ids.npy, state.json, pca.npz, <engine>/, *.partial). Others' files (thumbs/, phash.npz) stay.
OURS = re.compile(r"^(vectors|ids|dead|pca|state|manifest|hnsw|ivfpq|annoy|exact-f16)([-.].*)?$")


class Damaged(Exception):
    """A cache file does not match its manifest (the message says how): rebuild it from the store."""


@dataclass
class Vectors:
    """The store's vectors at one generation: rows in id order, with tombstones for files that are gone."""

    generation: int
    row_ids: np.ndarray  # int64 [rows], ascending
    matrix: np.ndarray  # float32 [rows, dims]; a read-only memory map when saved
    dead: np.ndarray  # bool [rows]

    @cached_property
    def ids(self) -> np.ndarray:
        """int64 [n]: the ids of the live rows, ascending."""
        return self.row_ids[~self.dead] if self.dead.any() else self.row_ids

    @cached_property
    def alive(self) -> np.ndarray:
        """int64 [n]: the positions of the live rows."""
        return np.flatnonzero(~self.dead)


class SearchCache:
    """The `INDEX-cache/` folder of one store. Warnings go to the `lookalike` logger, each at most once."""

    def __init__(self, store: Store):
        self.store = store
        self.folder = Path(str(store.path) + "-cache")
        self._said: set[str] = set()

    # -- the vectors --------------------------------------------------------------------------------

    def vectors(self) -> Vectors:
        """The vectors at the store's generation (or a later one), from the cache when it holds them, else
        brought up to date or rebuilt, under the lock. Where nothing can be written (a read-only place, a
        full disk), they are read into memory and that is said once."""
        problem = None
        for _ in range(3):
            manifest = self._manifest()
            if not manifest or not self._fits(manifest) or "vectors" not in manifest:
                break
            if manifest["generation"] < self.store.generation:
                break
            try:
                return self._open(manifest)
            except FileNotFoundError:
                continue  # replaced while we read it: read the new manifest
            except Damaged as exc:
                problem = str(exc)
                break
        try:
            return self._update(problem)
        except (OSError, Timeout) as exc:
            self.say("save", f"could not save the search cache in {self.folder} ({_reason(exc)}): searching from "
                             "memory this time")
            return self._in_memory()

    def _update(self, problem: str | None) -> Vectors:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._locked():
            manifest = self._manifest()
            current = None
            if manifest and self._fits(manifest) and "vectors" in manifest:
                try:
                    current = self._open(manifest)
                except (Damaged, FileNotFoundError) as exc:
                    problem = problem or str(exc)
            with self.store.snapshot():
                if current is not None and current.generation >= self.store.generation:
                    return current  # another process brought it up to date while we waited
                updated = None
                if current is not None and manifest is not None:
                    with contextlib.suppress(Damaged):
                        updated = self._apply_changes(manifest, current)
                if updated is None:
                    updated = self._rebuild(manifest)
            if problem:
                self.say("damaged", f"the search cache in {self.folder} was damaged ({problem}): rebuilt it from "
                                    "the index")
            return updated

    def _open(self, manifest: dict) -> Vectors:
        """The files a manifest names, checked against it (Damaged when they do not match)."""
        rows, dims = manifest["rows"], self.store.spec.dims
        vectors_path, ids_path = self.folder / manifest["vectors"], self.folder / manifest["ids"]
        size = vectors_path.stat().st_size
        if size < rows * dims * 4:
            raise Damaged(f"{vectors_path.name} holds {size // (dims * 4):,} rows of the {rows:,} its manifest "
                          "counts")
        row_ids = np.fromfile(ids_path, dtype="<i8", count=rows)
        if len(row_ids) != rows or _sha256(row_ids) != manifest["ids_sha256"]:
            raise Damaged(f"{ids_path.name} does not match its checksum")
        matrix = (np.memmap(vectors_path, dtype="<f4", mode="r", shape=(rows, dims)) if rows
                  else np.empty((0, dims), np.float32))
        if _sample_sha256(matrix) != manifest["vectors_sha256"]:
            raise Damaged(f"{vectors_path.name} does not match its checksum")
        dead = np.zeros(rows, bool)
        if manifest.get("dead"):
            dead_path = self.folder / manifest["dead"]
            if fingerprint(dead_path) != manifest["dead_fingerprint"]:
                raise Damaged(f"{dead_path.name} does not match its checksum")
            dead = np.isin(row_ids, np.load(dead_path, allow_pickle=False))
        return Vectors(manifest["generation"], row_ids, matrix, dead)

    def _apply_changes(self, manifest: dict, current: Vectors) -> Vectors | None:
        """Append the rows added since `current` and mark the removed ones dead (inside a store snapshot,
        under the lock). None when the store keeps no log of removals: rebuild instead."""
        removed = self.store.removed_since(current.generation)
        if removed is None:
            return None
        rows, dims = len(current.row_ids), self.store.spec.dims
        last = int(current.row_ids[-1]) if rows else -1
        vectors_path, ids_path = self.folder / manifest["vectors"], self.folder / manifest["ids"]
        added = 0
        with open(vectors_path, "r+b") as vectors_file, open(ids_path, "r+b") as ids_file:
            vectors_file.truncate(rows * dims * 4)  # what a writer killed mid-append left past the end
            ids_file.truncate(rows * 8)
            vectors_file.seek(0, os.SEEK_END)
            ids_file.seek(0, os.SEEK_END)
            for ids, block in self.store.vector_batches(after_id=last):
                _write_rows(vectors_file, block.astype("<f4", copy=False))
                _write_rows(ids_file, ids.astype("<i8", copy=False))
                added += len(ids)
        row_ids = np.fromfile(ids_path, dtype="<i8", count=rows + added)
        if rows and added and row_ids[rows] <= last:
            raise Damaged("the store handed out an id below the last one cached")
        dead_ids = np.union1d(current.row_ids[current.dead], removed)
        dead_ids = dead_ids[np.isin(dead_ids, row_ids)]
        if len(dead_ids) > COMPACT_SHARE * max(1, len(row_ids)):
            return self._rebuild(manifest)
        matrix = (np.memmap(vectors_path, dtype="<f4", mode="r", shape=(len(row_ids), dims)) if len(row_ids)
                  else np.empty((0, dims), np.float32))
        entry = {"vectors": manifest["vectors"], "ids": manifest["ids"], "rows": len(row_ids),
                 "ids_sha256": _sha256(row_ids), "vectors_sha256": _sample_sha256(matrix),
                 "dead": None, "dead_fingerprint": None}
        if len(dead_ids):
            if manifest.get("dead") and len(dead_ids) == int(current.dead.sum()):
                entry["dead"], entry["dead_fingerprint"] = manifest["dead"], manifest["dead_fingerprint"]
            else:
                dead_path = self._new_file("dead-", ".npy")
                with open(dead_path, "wb") as handle:
                    np.save(handle, dead_ids)
                entry["dead"], entry["dead_fingerprint"] = dead_path.name, fingerprint(dead_path)
        updated = {**manifest, **entry, "generation": self.store.generation}
        self._commit(updated)
        return Vectors(updated["generation"], row_ids, matrix, np.isin(row_ids, dead_ids))

    def _rebuild(self, manifest: dict | None) -> Vectors:
        """Every vector of the store into new files (inside a store snapshot, under the lock)."""
        dims = self.store.spec.dims
        vectors_path, ids_path = self._new_file("vectors-", ".f32"), self._new_file("ids-", ".i64")
        try:
            with open(vectors_path, "wb") as vectors_file, open(ids_path, "wb") as ids_file:
                for ids, block in self.store.vector_batches():
                    _write_rows(vectors_file, block.astype("<f4", copy=False))
                    _write_rows(ids_file, ids.astype("<i8", copy=False))
            row_ids = np.fromfile(ids_path, dtype="<i8")
            matrix = (np.memmap(vectors_path, dtype="<f4", mode="r", shape=(len(row_ids), dims)) if len(row_ids)
                      else np.empty((0, dims), np.float32))
            generation = self.store.generation
            fresh = {"format": FORMAT, "store": self.store.identity, "dims": dims,
                     "generation": generation, "vectors": vectors_path.name, "ids": ids_path.name,
                     "rows": len(row_ids), "ids_sha256": _sha256(row_ids), "vectors_sha256": _sample_sha256(matrix),
                     "dead": None, "dead_fingerprint": None}
            kept = {key: manifest[key] for key in ("pca", "engines") if manifest and self._fits(manifest)
                    and key in manifest}  # they hold their own ids: still valid, brought up to date on use
            self._commit({**fresh, **kept})
        except BaseException:
            vectors_path.unlink(missing_ok=True)
            ids_path.unlink(missing_ok=True)
            raise
        return Vectors(generation, row_ids, matrix, np.zeros(len(row_ids), bool))

    def _in_memory(self) -> Vectors:
        """Every vector read from the store into RAM: when the cache cannot be written."""
        with self.store.snapshot():
            generation = self.store.generation
            blocks = list(self.store.vector_batches())
        dims = self.store.spec.dims
        row_ids = np.concatenate([b[0] for b in blocks]) if blocks else np.empty(0, np.int64)
        matrix = np.concatenate([b[1] for b in blocks]) if blocks else np.empty((0, dims), np.float32)
        return Vectors(generation, row_ids, matrix, np.zeros(len(row_ids), bool))

    # -- PCA and engines --------------------------------------------------------------------------------

    def projection(self, dims: int, whiten: bool, fit: Callable[[], Projection],
                   load: Callable[[Path], Projection]) -> tuple[Projection, str]:
        """(the saved projection of these settings, or a new one from `fit`, saved; its checksum)."""
        manifest = self._manifest()
        entry = (manifest or {}).get("pca") if manifest and self._fits(manifest) else None
        if entry and entry["dims"] == dims and entry["whiten"] == whiten:
            path = self.folder / entry["file"]
            try:
                if fingerprint(path) != entry["fingerprint"]:
                    raise Damaged(f"{path.name} does not match its checksum")
                return load(path), entry["fingerprint"]["sha256"]
            except (Damaged, FileNotFoundError) as exc:
                self.say("damaged", f"the search cache in {self.folder} was damaged ({_reason(exc)}): rebuilt it "
                                    "from the index")
        projection = fit()
        checksum = None
        try:
            with self._locked():
                path = self._new_file("pca-", ".npz")
                try:
                    projection.save(path)
                    entry = {"file": path.name, "dims": dims, "whiten": whiten, "fingerprint": fingerprint(path)}
                    self._commit({**self._base(), "pca": entry})
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
                checksum = entry["fingerprint"]["sha256"]
        except (OSError, Timeout) as exc:
            self.say("save", f"could not save the search cache in {self.folder} ({_reason(exc)}): searching from "
                             "memory this time")
        return projection, checksum or _sha256(np.asarray(projection.components))

    def load_engine(self, kind: str, stamp: dict, load: Callable[[Path], object]):
        """The saved engine of this kind, if one was saved with this stamp (settings) and its files check."""
        for _ in range(3):
            manifest = self._manifest()
            entry = (manifest.get("engines") or {}).get(kind) if manifest and self._fits(manifest) else None
            if not entry or entry["stamp"] != stamp:
                return None
            folder = self.folder / entry["folder"]
            try:
                for name, expected in entry["files"].items():
                    if fingerprint(folder / name) != expected:
                        raise Damaged(f"{entry['folder']}/{name} does not match its checksum")
                return load(folder)
            except FileNotFoundError:
                continue  # replaced while we read it
            except Exception as exc:
                self.say("damaged", f"the search cache in {self.folder} was damaged ({_reason(exc)}): rebuilt it "
                                    "from the index")
                return None
        return None

    def save_engine(self, kind: str, stamp: dict, engine) -> bool:
        """Save an engine into a new folder and name it in the manifest. On a full disk (OSError, or the
        RuntimeError faiss raises) the partial folder is removed and that is said once: the engine in memory
        still answers."""
        partial = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._locked():
                partial = self._new_folder(f"{kind}-", ".partial")
                engine.save(partial)
                files = {p.name: fingerprint(p) for p in partial.iterdir() if p.is_file()}
                saved = partial.with_name(partial.name.removesuffix(".partial"))
                partial.rename(saved)
                partial = saved
                manifest = self._base()
                engines = {**(manifest.get("engines") or {}),
                           kind: {"folder": saved.name, "stamp": stamp, "files": files}}
                self._commit({**manifest, "engines": engines})
                partial = None
            return True
        except (OSError, RuntimeError, Timeout) as exc:
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            self.say(f"save {kind}", f"could not save the {kind} index in {self.folder} ({_reason(exc)}): it "
                                     "answers from memory")
            return False

    def engine_bytes(self, kind: str) -> int | None:
        """The size on disk of the saved engine of this kind, if any."""
        manifest = self._manifest() or {}
        entry = (manifest.get("engines") or {}).get(kind)
        return None if not entry else sum(f["size"] for f in entry["files"].values())

    # -- the manifest -------------------------------------------------------------------------------------

    def say(self, key: str, message: str) -> None:
        """A warning, once per kind of trouble for the life of this cache object."""
        if key not in self._said:
            self._said.add(key)
            log.warning(message)

    def _manifest(self) -> dict | None:
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _fits(self, manifest: dict) -> bool:
        """Made by this layout, for this store (not an older index at the same path) and these dims."""
        return (manifest.get("format") == FORMAT and manifest.get("store") == self.store.identity
                and manifest.get("dims") == self.store.spec.dims)

    def _base(self) -> dict:
        """The current manifest to build on (under the lock), or an empty one for this store."""
        manifest = self._manifest()
        if manifest and self._fits(manifest):
            return manifest
        return {"format": FORMAT, "store": self.store.identity, "dims": self.store.spec.dims, "generation": -1}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with FileLock(self.folder / LOCK, timeout=LOCK_TIMEOUT_S):
            yield

    def _new_file(self, prefix: str, suffix: str) -> Path:
        """A new, empty file of a unique name, with the permissions the umask gives (mkstemp's are 0600: a
        server running as another user could not read the cache)."""
        while True:
            path = self.folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
                return path
            except FileExistsError:
                continue

    def _new_folder(self, prefix: str, suffix: str) -> Path:
        while True:
            path = self.folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue

    def _commit(self, manifest: dict) -> None:
        """Write the manifest by atomic rename (under the lock), then delete what it no longer names."""
        name = self._new_file("manifest-", ".partial")
        try:
            name.write_text(json.dumps(manifest))
            os.replace(name, self.folder / MANIFEST)
        except BaseException:
            name.unlink(missing_ok=True)
            raise
        named = {manifest.get("vectors"), manifest.get("ids"), manifest.get("dead"), MANIFEST,
                 (manifest.get("pca") or {}).get("file")}
        named |= {entry["folder"] for entry in (manifest.get("engines") or {}).values()}
        for path in self.folder.iterdir():
            if path.name not in named and OURS.match(path.name):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def fingerprint(path: Path) -> dict:
    """Size and sha256 of a file: of all of it up to 16 MB, else of 64 evenly spaced 4 KB blocks."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= SMALL_FILE:
            digest.update(handle.read())
        else:
            for offset in np.linspace(0, size - 4096, SAMPLES).astype(np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(4096))
    return {"size": size, "sha256": digest.hexdigest()}


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _sample_sha256(matrix: np.ndarray) -> str:
    """sha256 of 64 evenly spaced rows (first and last included), and of how many rows there are."""
    rows = len(matrix)
    positions = np.unique(np.linspace(0, rows - 1, min(rows, SAMPLES)).astype(np.int64)) if rows else np.empty(0, int)
    digest = hashlib.sha256(str(rows).encode())
    for position in positions:
        digest.update(np.asarray(matrix[int(position)]).tobytes())
    return digest.hexdigest()


class RowReader:
    """Random rows of a memory-mapped matrix, for re-ranking, without the mapped pages piling up in RSS.

    Re-ranking reads a few hundred random rows per query out of gigabytes. Through one long-lived map the
    kernel keeps every faulted page mapped, and maps 64 KB around each: at a million vectors a searching
    process held 4.5 GB of the vectors file's pages after 1,300 queries. So a file larger than `cap` is not
    mapped at all: each row is one pread from the page cache, which costs RSS nothing and was twice as fast
    as faulting it in through a map that is handed back now and then (200 rows of 1280 dims at a million
    vectors: 0.8 ms against 1.7-2.1 ms, a 2-core AMD EPYC at load ~1, measured ad hoc). A file no larger than
    the cap keeps its own map, whose pages stay mapped: after the first pass a bulk caller (duplicates at
    100,000 vectors) reads rows with no system call at all. The map keeps the kernel's normal advice:
    MADV_RANDOM (no read-ahead, no fault-around) made every row missing from the page cache two 4 KB disk
    reads, 13-23 ms a query instead of 0.3-0.8 ms from a cold cache at 200,000 vectors. A matrix in memory
    (not mapped) is read as it is."""

    def __init__(self, matrix: np.ndarray, cap: int = 512 << 20):
        self.matrix = matrix
        self._file: int | None = None
        filename = getattr(matrix, "filename", None)
        if isinstance(matrix, np.memmap) and filename and len(matrix):
            if matrix.nbytes > cap and matrix.flags.c_contiguous:
                self._file = os.open(filename, os.O_RDONLY)
                weakref.finalize(self, os.close, self._file)
                self._offset, self._row = int(matrix.offset), int(matrix.strides[0])
            else:
                self.matrix = np.memmap(filename, dtype=matrix.dtype, mode="r", offset=matrix.offset,
                                        shape=matrix.shape)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """A copy of these rows, [len(positions), d], in the order asked (ascending positions read fastest)."""
        if self._file is None:
            return np.asarray(self.matrix[positions])
        positions = np.asarray(positions, np.int64).ravel()
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self.matrix)):
            raise IndexError(f"row positions must be within 0..{len(self.matrix) - 1}")
        fd, row, offset = self._file, self._row, self._offset
        data = b"".join([os.pread(fd, row, offset + position * row) for position in positions.tolist()])
        return np.frombuffer(data, self.matrix.dtype).reshape(len(positions), *self.matrix.shape[1:]).copy()


def release(matrix: np.ndarray) -> None:
    """Hand a memory-mapped matrix's pages back to the page cache (they stay cached, but stop counting in
    this process's RSS): after a pass over every row, as building an engine makes."""
    mapped = getattr(matrix, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_DONTNEED)


def _write_rows(handle, array: np.ndarray) -> None:
    """Append an array's bytes to an open file (one place, so that a full disk can be simulated in tests)."""
    handle.write(np.ascontiguousarray(array).tobytes())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Timeout):
        return "another process holds its lock"
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
    return text.strip().splitlines()[0][:200]
