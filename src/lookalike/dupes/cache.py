"""Verification features by file id, and the verdicts of checked pairs, kept beside the index
(INDEX-cache/dupes.sqlite): a re-run decodes and checks nothing it has seen. A derived cache: safe to
delete, rebuilt when damaged or made by other settings (other thresholds forget only the verdicts).

A changed file gets a new id in the index (ids are never reused), so an id's features never go stale; rows of
ids that left the index are dropped on save. SQLite keeps two processes at once consistent.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from lookalike import images
from lookalike.dupes import verify

VERSION = f"orb{verify.FEATURES}-thumb{verify.THUMB}-sigma{verify.SIGMA}-v5"
# Verdicts also depend on every threshold: a change of any of them forgets the verdicts (not the features).
VERDICTS = "-".join(str(getattr(verify, name)) for name in sorted(dir(verify)) if name.isupper()) + "-v2"


REFUSED = "checked before: not the same photograph"  # refusals are kept without their numbers (nobody shows them)


class FeatureCache:
    """`get(id, path)` -> Features or None (unreadable file); computed once, then read from disk."""

    def __init__(self, folder: Path | None):
        self.memory: OrderedDict[int, verify.Features | None] = OrderedDict()  # least recently used first
        self.new: dict[int, verify.Features] = {}
        self.new_verdicts: dict[tuple[int, int], verify.Evidence] = {}
        self.db: sqlite3.Connection | None = None
        if folder is None:
            return
        for attempt in range(2):
            try:
                self.db = self._open(folder / "dupes.sqlite")
                return
            except sqlite3.DatabaseError:  # not a database any more (damaged): start it again, once
                if self.db is not None:
                    self.db.close()
                self.db = None
                if attempt == 0:
                    with contextlib.suppress(OSError):
                        (folder / "dupes.sqlite").unlink()
            except (sqlite3.Error, OSError):  # a read-only place: work from memory
                self.db = None
                return

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS features (id INTEGER PRIMARY KEY, data BLOB)")
            db.execute("CREATE TABLE IF NOT EXISTS verdicts (a INTEGER, b INTEGER, same INTEGER, evidence TEXT, "
                       "PRIMARY KEY (a, b))")
            for key, value, tables in (("version", VERSION, ("features", "verdicts")),
                                       ("verdicts", VERDICTS, ("verdicts",))):
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if row is None or row[0] != value:
                    with db:
                        for table in tables:
                            db.execute(f"DELETE FROM {table}")
                        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        except BaseException:
            db.close()
            raise
        return db

    def get(self, file_id: int, path: str) -> verify.Features | None:
        if file_id in self.memory:
            self.memory.move_to_end(file_id)
            return self.memory[file_id]
        found = self._read(file_id)
        if found is None:
            found = compute(path)
            if found is not None:
                self.new[file_id] = found
        self.memory[file_id] = found
        return found

    def prefetch(self, items: list[tuple[int, str]], pool: Executor) -> None:
        """Have the features of these (id, path) in memory: read from disk here, computed on `pool`'s threads.
        Afterwards `get` of any of them touches neither the disk nor the database (safe from other threads)."""
        for i, _ in items:
            if i in self.memory:
                self.memory.move_to_end(i)
        wanted = [(i, path) for i, path in items if i not in self.memory]
        missing = []
        for i, path in wanted:
            found = self._read(i)
            if found is None:
                missing.append((i, path))
            else:
                self.memory[i] = found
        tasks = [(i, pool.submit(compute, path)) for i, path in missing]
        try:
            for _, task in tasks:
                task.result()
        finally:  # also on Ctrl-C: what was computed is kept (and saved with the rest); the others are dropped
            for i, task in tasks:
                if not task.done() or task.cancelled() or task.exception() is not None:
                    task.cancel()
                    continue
                computed = task.result()
                self.memory[i] = computed
                if computed is not None:
                    self.new[i] = computed

    def forget(self, keep: int = 0) -> None:
        """Drop all but the `keep` most recently used features held in memory, of those on disk (after `save`;
        what could not be written stays)."""
        for i in list(self.memory)[:max(0, len(self.memory) - keep)]:
            if i not in self.new:
                del self.memory[i]

    def verdict(self, a: int, b: int) -> verify.Evidence | None:
        """The evidence of an earlier check of one pair (a < b), or None."""
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT same, evidence FROM verdicts WHERE a = ? AND b = ?", (a, b)).fetchone()
            if row is None:
                return None
            return verify.Evidence(**json.loads(row[1])) if row[1] else verify.Evidence(False, REFUSED)
        except Exception:  # a damaged row: check again
            return None

    def verdicts(self, pairs: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int], verify.Evidence]]:
        """What earlier checks said of these pairs (int64 [p, 2], a < b; ids never change meaning), in one
        pass over the table: (refused bool [p], {pair: evidence} of the accepted ones). A refused pair needs
        nothing more (it got as far as the check, so it had neither the same bytes nor the same pixels);
        pairs in neither were never checked."""
        refused = np.zeros(len(pairs), bool)
        if self.db is None or len(pairs) == 0:
            return refused, {}
        try:  # in key order (the primary key's), so that the pairs are looked up with one searchsorted
            rows = self.db.execute("SELECT (a << 31) | b, same, evidence FROM verdicts ORDER BY a, b").fetchall()
        except sqlite3.Error:  # a damaged table: check again
            return refused, {}
        if not rows:
            return refused, {}
        table = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        same = np.fromiter((row[1] for row in rows), np.int64, len(rows))
        keys = pair_keys(pairs)
        at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        known = table[at] == keys
        refused = known & (same[at] == 0)
        accepted: dict[tuple[int, int], verify.Evidence] = {}
        yes = known & (same[at] != 0)
        for a, b, row in zip(*pairs[yes].T.tolist(), at[yes].tolist(), strict=True):
            try:
                accepted[(a, b)] = verify.Evidence(**json.loads(rows[row][2]))
            except Exception:  # a damaged row: check again
                continue
        return refused, accepted

    def remember(self, a: int, b: int, evidence: verify.Evidence) -> None:
        self.new_verdicts[(a, b)] = evidence

    def _read(self, file_id: int) -> verify.Features | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT data FROM features WHERE id = ?", (file_id,)).fetchone()
            return None if row is None else _decode(row[0])
        except Exception:  # a damaged row: compute it again
            return None

    def save(self, keep_ids: Iterable[int] | None = None) -> None:
        """Write what was computed; with `keep_ids`, drop rows of every other id."""
        if self.db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)",
                                    [(i, _encode(f)) for i, f in self.new.items()])
                self.db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                                    [(a, b, int(e.same), json.dumps(e.as_dict()) if e.same else None)
                                     for (a, b), e in self.new_verdicts.items()])
                if keep_ids is not None:
                    self.db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id INTEGER PRIMARY KEY)")
                    self.db.execute("DELETE FROM keep")
                    self.db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", [(int(i),) for i in keep_ids])
                    self.db.execute("DELETE FROM features WHERE id NOT IN (SELECT id FROM keep)")
                    self.db.execute("DELETE FROM verdicts WHERE a NOT IN (SELECT id FROM keep) "
                                    "OR b NOT IN (SELECT id FROM keep)")
            self.new.clear()
            self.new_verdicts.clear()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def pair_keys(pairs: np.ndarray) -> np.ndarray:
    """One int64 per id pair [p, 2], so that sets of pairs are compared with NumPy (np.isin, np.unique).
    Exact for ids below 2**31 (SQLite row ids of files: two billion files indexed)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= 1 << 31):
        raise ValueError("file ids outside 0 .. 2**31 cannot be paired into one int64")
    return (pairs[:, 0] << 31) | pairs[:, 1]


def compute(path: str) -> verify.Features | None:
    """Decode a file (reduced while decoding where the format allows) and compute its features."""
    decoded = images.load(path, draft=(verify.THUMB, verify.THUMB))
    if decoded.image is None:
        return None
    return verify.features_of(np.asarray(decoded.image))


# A row's bytes: HEADER (thumbnail height and width, keypoints and mirror keypoints, resolution), then zlib of the
# thumbnail, its detail mask (one bit a pixel), and the points and descriptors, raw. Not .npz: reading one back
# took 2.4 ms (a zip archive per row), this 1.0 ms (most of it zlib), and a first run at 100k reads back hundreds
# of thousands.
HEADER = struct.Struct("<4If")


def _encode(f: verify.Features) -> bytes:
    h, w = f.thumb.shape
    body = b"".join(np.ascontiguousarray(a).tobytes() for a in (
        f.thumb.astype(np.uint8), np.packbits(f.detail.astype(bool)), f.points.astype("<f4"),
        f.descriptors.astype(np.uint8), f.mirror_points.astype("<f4"), f.mirror_descriptors.astype(np.uint8)))
    return HEADER.pack(h, w, len(f.points), len(f.mirror_points), f.resolution) + zlib.compress(body, 1)


def _decode(data: bytes) -> verify.Features:
    h, w, n, m, resolution = HEADER.unpack_from(data)
    body = zlib.decompress(data[HEADER.size:])
    parts = []
    at = 0
    for dtype, count, shape in ((np.uint8, h * w, (h, w)), (np.uint8, (h * w + 7) // 8, None),
                                ("<f4", n * 2, (n, 2)), (np.uint8, n * 32, (n, 32)),
                                ("<f4", m * 2, (m, 2)), (np.uint8, m * 32, (m, 32))):
        part = np.frombuffer(body, dtype, count, at)
        at += part.nbytes
        parts.append(part.reshape(shape) if shape else part)
    if at != len(body):
        raise ValueError("a features row of the wrong length")
    thumb, packed, points, descriptors, mirror_points, mirror_descriptors = parts
    detail = np.unpackbits(packed, count=h * w).reshape(h, w)
    return verify.Features(thumb, detail, points.astype(np.float32), descriptors, mirror_points.astype(np.float32),
                           mirror_descriptors, float(resolution))
