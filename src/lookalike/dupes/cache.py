"""Verification features by file id, kept beside the index (INDEX-cache/dupes.sqlite): a re-run decodes
nothing it has seen. A derived cache: safe to delete, rebuilt when damaged or made by other settings.

A changed file gets a new id in the index (ids are never reused), so an id's features never go stale; rows of
ids that left the index are dropped on save. SQLite keeps two processes at once consistent.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lookalike import images
from lookalike.dupes import verify

VERSION = f"orb{verify.FEATURES}-thumb{verify.THUMB}-sigma{verify.SIGMA}-v2"


class FeatureCache:
    """`get(id, path)` -> Features or None (unreadable file); computed once, then read from disk."""

    def __init__(self, folder: Path | None):
        self.memory: dict[int, verify.Features | None] = {}
        self.new: dict[int, verify.Features] = {}
        self.db: sqlite3.Connection | None = None
        if folder is None:
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(folder / "dupes.sqlite", timeout=30)
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS features (id INTEGER PRIMARY KEY, data BLOB)")
            row = self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None or row[0] != VERSION:
                with self.db:
                    self.db.execute("DELETE FROM features")
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (VERSION,))
        except (sqlite3.Error, OSError):  # a read-only place or a damaged file: work from memory
            self.db = None

    def get(self, file_id: int, path: str) -> verify.Features | None:
        if file_id in self.memory:
            return self.memory[file_id]
        found = self._read(file_id)
        if found is None:
            found = compute(path)
            if found is not None:
                self.new[file_id] = found
        self.memory[file_id] = found
        return found

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
                if keep_ids is not None:
                    self.db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id INTEGER PRIMARY KEY)")
                    self.db.execute("DELETE FROM keep")
                    self.db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", [(int(i),) for i in keep_ids])
                    self.db.execute("DELETE FROM features WHERE id NOT IN (SELECT id FROM keep)")
            self.new.clear()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def compute(path: str) -> verify.Features | None:
    """Decode a file (reduced while decoding where the format allows) and compute its features."""
    decoded = images.load(path, draft=(verify.THUMB, verify.THUMB))
    if decoded.image is None:
        return None
    return verify.features(verify.thumbnail(np.asarray(decoded.image)))


def _encode(f: verify.Features) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, thumb=f.thumb, detail=f.detail, points=f.points, descriptors=f.descriptors,
                        mirror_points=f.mirror_points, mirror_descriptors=f.mirror_descriptors)
    return buffer.getvalue()


def _decode(data: bytes) -> verify.Features:
    with np.load(io.BytesIO(data)) as arrays:
        return verify.Features(arrays["thumb"], arrays["detail"], arrays["points"], arrays["descriptors"],
                               arrays["mirror_points"], arrays["mirror_descriptors"])
