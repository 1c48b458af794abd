"""The same index on Milvus, for collections beyond one machine: a store and a searcher over a collection.

Where an index lives is named by `--index`:

    milvus://HOST:PORT/COLLECTION     a Milvus server (a cluster's proxy, or `milvus-lite server`)
    PATH.db  or  PATH.db#COLLECTION   a Milvus Lite file, embedded, started by pymilvus (default "lookalike")

`MilvusStore` answers to the same methods as the SQLite `Store` (known, write, touch, remove, vectors,
files, meta...), so the indexing pipeline, the Index API and the CLI run unchanged on it; `MilvusSearcher`
lets Milvus answer queries (an HNSW index, inner product on unit vectors: the cosine). Metadata (the
model spec, folders, generation) lives in a small second collection, `COLLECTION__meta`.

Milvus has no multi-row transactions: a batch is deleted-then-inserted by path, so a crash can leave a
batch half written; the next `lookalike index` run sees those files as new or changed and writes them again.
A failed file is a row with status "failed" and a zero vector (Milvus wants a vector in every row);
searches filter on status.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from lookalike.errors import IndexBusy, IndexNotFound, StoreUnavailable, UsageError, require
from lookalike.models.registry import ModelSpec
from lookalike.storage.base import FORMAT, FORMAT_VERSION, FileDetails, FileInfo, FileRecord, IndexStore, Known

DEFAULT_COLLECTION = "lookalike"
PATH_LENGTH = 4096
LEASE_S = 60.0  # how long a writer's claim lasts unless renewed (a killed writer blocks others this long)
CLAIM_SETTLE_S = 0.5  # a first claim waits this long, then checks it still holds the lease
FIELDS = ["id", "path", "size", "mtime_ns", "sha256", "width", "height", "status", "error"]


def is_milvus(location: str) -> bool:
    text = str(location)
    return text.startswith("milvus://") or text.split("#", 1)[0].endswith(".db")


def parse(location: str) -> tuple[str, str]:
    """An --index value -> (pymilvus uri, collection name)."""
    text = str(location)
    if text.startswith("milvus://"):
        parts = urlparse(text)
        collection = parts.path.strip("/")
        if not parts.hostname or not parts.port or not collection or "/" in collection:
            raise UsageError(f"a Milvus index is milvus://HOST:PORT/COLLECTION, not {text!r}")
        return f"http://{parts.hostname}:{parts.port}", collection
    path, _, collection = text.partition("#")
    return path, collection or DEFAULT_COLLECTION


def _client(uri: str):
    import logging

    MilvusClient = require("pymilvus", "milvus", "Milvus indexes").MilvusClient
    # pymilvus warns on every iterator over Milvus Lite, and Milvus Lite logs tracebacks for what we report
    # in one line below.
    for name in ["pymilvus", "milvus_lite", *logging.root.manager.loggerDict]:
        if name.startswith(("pymilvus", "milvus_lite")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, timeout=10)
    except Exception as exc:
        if not uri.startswith("http"):
            raise StoreUnavailable(f"cannot open the Milvus Lite file {uri}: another process is probably using it "
                                 "(a Milvus Lite file serves one process at a time; `milvus-lite server` shares "
                                 "one)") from None
        raise StoreUnavailable(f"cannot reach Milvus at {uri}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _quoted(text: str) -> str:
    """A string literal for a Milvus filter expression: JSON quoting, but characters as themselves (Milvus'
    parser knows no \\u escapes, so "café" must not become "caf\\u00e9")."""
    return json.dumps(text, ensure_ascii=False)


def _listed(texts: Iterable[str]) -> str:
    return "[" + ", ".join(_quoted(text) for text in texts) + "]"


# A Milvus string must be valid UTF-8; a file name need not be (Python keeps its odd bytes as surrogate
# escapes U+DC80-U+DCFF). Stored, each such byte becomes a private-use character U+F780-U+F7FF, and a name's
# own characters in U+F700-U+F7FF are prefixed with U+F700: reversible for every name, and every name that is
# UTF-8 and free of those rare characters is stored as itself.
_MARK = "\uf700"


def _to_milvus(path: str) -> str:
    if not any("\udc80" <= c <= "\udcff" or "\uf700" <= c <= "\uf7ff" for c in path):
        return path
    return "".join(chr(ord(c) - 0xDC80 + 0xF780) if "\udc80" <= c <= "\udcff"
                   else _MARK + c if "\uf700" <= c <= "\uf7ff" else c for c in path)


def _from_milvus(stored: str) -> str:
    if not any("\uf700" <= c <= "\uf7ff" for c in stored):
        return stored
    out, escaped = [], False
    for c in stored:
        if escaped:
            out.append(c)
            escaped = False
        elif c == _MARK:
            escaped = True
        elif "\uf780" <= c <= "\uf7ff":
            out.append(chr(ord(c) - 0xF780 + 0xDC80))
        else:
            out.append(c)
    return "".join(out)


class MilvusStore(IndexStore):
    """A lookalike index in a Milvus collection: the Store interface (see store.py) on pymilvus."""

    def __init__(self, location: str, client, collection: str):
        self.path = location  # shown to people, as a file index shows its path
        self.client = client
        self.collection = collection
        self.meta_collection = f"{collection}__meta"
        self._writer = {"token": secrets.token_hex(8), "pid": os.getpid(), "host": socket.gethostname()}
        self._lease_until = 0.0  # when this store's writer lease runs out (0: it holds none)

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def exists(cls, location: str) -> bool:
        uri, collection = parse(location)
        if not uri.startswith("http") and not _file_exists(uri):
            return False
        client = _client(uri)
        try:
            return client.has_collection(f"{collection}__meta")
        finally:
            client.close()

    @classmethod
    def open(cls, location: str) -> MilvusStore:
        uri, collection = parse(location)
        if not uri.startswith("http") and not _file_exists(uri):
            raise IndexNotFound(f"no index at {location}: build one with "
                                f"`lookalike index PHOTOS_DIR --index {location}`")
        client = _client(uri)
        store = cls(location, client, collection)
        if not client.has_collection(store.meta_collection):
            client.close()
            raise IndexNotFound(f"{location} holds no lookalike index (collection {collection!r})")
        client.load_collection(store.meta_collection)
        if store.meta("format") != FORMAT or not client.has_collection(collection):
            client.close()
            raise IndexNotFound(f"{location} holds no lookalike index (collection {collection!r})")
        client.load_collection(store.collection)
        return store

    @classmethod
    def create(cls, location: str, spec: ModelSpec) -> MilvusStore:
        from pymilvus import DataType

        uri, collection = parse(location)
        client = _client(uri)
        store = cls(location, client, collection)
        if client.has_collection(collection) or client.has_collection(store.meta_collection):
            client.close()
            raise UsageError(f"Milvus collection {collection!r} already exists at {uri}: choose another name")
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_LENGTH)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime_ns", DataType.INT64)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("width", DataType.INT64)
        schema.add_field("height", DataType.INT64)
        schema.add_field("status", DataType.VARCHAR, max_length=16)
        schema.add_field("error", DataType.VARCHAR, max_length=1024)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dims)
        index = client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="IP",
                        params={"M": 32, "efConstruction": 200})
        client.create_collection(collection, schema=schema, index_params=index)
        meta = client.create_schema(auto_id=False, enable_dynamic_field=False)
        meta.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        meta.add_field("value", DataType.VARCHAR, max_length=65535)
        meta.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field in every collection
        meta_index = client.prepare_index_params()
        meta_index.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
        client.create_collection(store.meta_collection, schema=meta, index_params=meta_index)
        for key, value in {"model": spec.to_json(), "generation": "0", "next_id": "1", "roots": "[]",
                           "created_at": str(time.time()), "format_version": FORMAT_VERSION,
                           "format": FORMAT}.items():  # format last: a store without it is not one
            store.set_meta(key, value)
        return store

    def close(self) -> None:
        if self._lease_until:
            with contextlib.suppress(Exception):  # an unreachable server: the lease runs out on its own
                self.set_meta("writer", "")
        self.client.close()

    # -- one writer at a time ----------------------------------------------------------------------------
    # Milvus has no transactions: two processes writing one collection would take the same ids from the
    # next_id counter. So a writer holds a lease (a row in the meta collection, renewed as it writes, given
    # back on close, lapsing LEASE_S after a writer was killed); a second writer is refused with IndexBusy.

    def _lease(self) -> dict | None:
        rows = self.client.query(self.meta_collection, filter='key == "writer"', output_fields=["value"],
                                 consistency_level="Strong")
        return json.loads(rows[0]["value"]) if rows and rows[0]["value"] else None

    def _claim(self) -> None:
        """Hold (or renew) the writer lease, or raise IndexBusy when another process holds it."""
        now = time.time()
        if self._lease_until - now > LEASE_S / 2:
            return
        held = self._lease()
        if held and held["token"] != self._writer["token"] and held["until"] > now:
            raise IndexBusy(f"{self.path} is being written by another process (pid {held['pid']} on "
                            f"{held['host']}): run this when it is done (a killed writer's claim lapses "
                            f"within {LEASE_S:.0f} s)")
        self.set_meta("writer", json.dumps({**self._writer, "until": now + LEASE_S}))
        if not self._lease_until:  # a first claim: let a writer that claimed at the same moment show itself
            time.sleep(CLAIM_SETTLE_S)
            held = self._lease()
            if held is None or held["token"] != self._writer["token"]:
                raise IndexBusy(f"{self.path} is being written by another process that started at the same "
                                "moment: run this when it is done")
        self._lease_until = now + LEASE_S

    # -- metadata --------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self.client.query(self.meta_collection, filter=f"key == {_quoted(key)}", output_fields=["value"])
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.client.upsert(self.meta_collection, [{"key": key, "value": value, "unused": [0.0, 0.0]}])

    def _bump(self) -> None:
        self.set_meta("generation", str(self.generation + 1))

    def _new_ids(self, count: int) -> np.ndarray:
        self._claim()  # the counter is read, then written: safe only for the one writer
        first = int(self.meta("next_id") or 1)
        self.set_meta("next_id", str(first + count))
        return np.arange(first, first + count, dtype=np.int64)

    # -- files -----------------------------------------------------------------------------------------

    def _scan(self, filter: str, fields: list[str]) -> Iterator[dict]:
        iterator = self.client.query_iterator(self.collection, batch_size=1000, filter=filter,
                                              output_fields=fields)
        try:
            while batch := iterator.next():
                yield from batch
        finally:
            iterator.close()

    def known(self, under: str | None = None) -> dict[str, Known]:
        prefix = "" if under is None else under.rstrip("/") + "/"
        # `like` reads _ and % in a folder name as wildcards: it finds a superset, kept exact by startswith
        filter = f"path like {_quoted(_to_milvus(prefix) + '%')}" if prefix else ""
        found = {_from_milvus(row["path"]): Known(row["size"], row["mtime_ns"], row["sha256"] or None, row["status"])
                 for row in self._scan(filter, ["path", "size", "mtime_ns", "sha256", "status"])}
        return {path: known for path, known in found.items() if path.startswith(prefix)}

    def write(self, records: Sequence[FileRecord]) -> None:
        if not records:
            return
        self._claim()
        self._delete_paths([r.path for r in records])
        ids = self._new_ids(len(records))
        zero = [0.0] * self.spec.dims
        rows = [{"id": int(file_id), "path": _to_milvus(r.path), "size": r.size, "mtime_ns": r.mtime_ns,
                 "sha256": r.sha256 or "", "width": r.width, "height": r.height,
                 "status": "ok" if r.vector is not None else "failed", "error": (r.error or "")[:1000],
                 "vector": zero if r.vector is None else np.asarray(r.vector, np.float32).tolist()}
                for file_id, r in zip(ids, records, strict=True)]
        self.client.insert(self.collection, rows)
        self._bump()

    def touch(self, items: Iterable[tuple[str, int, int]]) -> None:
        updates = {path: (size, mtime) for path, size, mtime in items}
        if not updates:
            return
        self._claim()
        rows = self.client.query(self.collection, filter=f"path in {_listed(map(_to_milvus, updates))}",
                                 output_fields=[*FIELDS, "vector"])
        for row in rows:
            row["size"], row["mtime_ns"] = updates[_from_milvus(row["path"])]
        self.client.upsert(self.collection, rows)

    def remove(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        if not paths:
            return 0
        self._claim()
        removed = self._delete_paths(paths)
        if removed:
            self._bump()
        return removed

    def _delete_paths(self, paths: list[str]) -> int:
        removed = 0
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            result = self.client.delete(self.collection, filter=f"path in {_listed(map(_to_milvus, chunk))}")
            removed += result.get("delete_count", 0) if isinstance(result, dict) else len(result or [])
        return removed

    def add_root(self, path: str) -> None:
        self._claim()
        roots = self.roots()
        if path not in roots:
            self.set_meta("roots", json.dumps(sorted([*roots, path])))

    def roots(self) -> list[str]:
        return json.loads(self.meta("roots") or "[]")

    # -- reading ---------------------------------------------------------------------------------------

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = sorted(((row["id"], row["vector"]) for row in self._scan('status == "ok"', ["id", "vector"])),
                      key=lambda row: row[0])
        ids = np.array([row[0] for row in rows], np.int64)
        vectors = np.array([row[1] for row in rows], np.float32).reshape(len(rows), self.spec.dims)
        return ids, vectors

    def ids(self) -> np.ndarray:
        return np.sort(np.array([row["id"] for row in self._scan('status == "ok"', ["id"])], np.int64))

    def vector_of(self, path: str) -> np.ndarray | None:
        rows = self.client.query(self.collection, filter=f'path == {_quoted(_to_milvus(path))} and status == "ok"',
                                 output_fields=["vector"])
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    def details(self) -> dict[int, FileDetails]:
        return {int(r["id"]): FileDetails(_from_milvus(r["path"]), r["width"], r["height"], r["size"], r["mtime_ns"],
                                          r["sha256"] or None)
                for r in self._scan("", ["id", "path", "width", "height", "size", "mtime_ns", "sha256"])}

    def id_of(self, path: str) -> int | None:
        rows = self.client.query(self.collection, filter=f"path == {_quoted(_to_milvus(path))}",
                                 output_fields=["id"])
        return int(rows[0]["id"]) if rows else None

    def own_paths(self) -> list[Path]:
        uri, _ = parse(self.path)
        return [] if uri.startswith("http") else [Path(uri).absolute()]

    def image_path(self, file_id: int) -> str | None:
        rows = self.client.query(self.collection, filter=f'id == {int(file_id)} and status == "ok"',
                                 output_fields=["path"])
        return _from_milvus(rows[0]["path"]) if rows else None

    def files(self, ids: Iterable[int]) -> dict[int, FileInfo]:
        ids = [int(i) for i in ids if int(i) >= 0]
        if not ids:
            return {}
        rows = self.client.get(self.collection, ids=ids, output_fields=["path", "width", "height"])
        return {int(row["id"]): FileInfo(_from_milvus(row["path"]), row["width"], row["height"]) for row in rows}

    def known_ids(self, ids: Sequence[int]) -> dict[int, Known]:
        ids = [int(i) for i in ids if int(i) >= 0]
        if not ids:
            return {}
        rows = self.client.get(self.collection, ids=ids, output_fields=["size", "mtime_ns", "sha256", "status"])
        return {int(row["id"]): Known(row["size"], row["mtime_ns"], row["sha256"] or None, row["status"])
                for row in rows}

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "failed": 0}
        for status in counts:
            rows = self.client.query(self.collection, filter=f"status == {_quoted(status)}",
                                     output_fields=["count(*)"])
            counts[status] = int(rows[0]["count(*)"]) if rows else 0
        return counts

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        rows = sorted((_from_milvus(row["path"]), row["error"])
                      for row in self._scan('status == "failed"', ["path", "error"]))
        return rows if limit is None else rows[:limit]

    def records(self, batch: int = 1000) -> Iterator[list[FileRecord]]:
        chunk: list[FileRecord] = []
        for row in self._scan("", [*FIELDS, "vector"]):
            vector = np.asarray(row["vector"], np.float32) if row["status"] == "ok" else None
            chunk.append(FileRecord(_from_milvus(row["path"]), row["size"], row["mtime_ns"], row["sha256"] or None,
                                    row["width"], row["height"], vector, row["error"] or ""))
            if len(chunk) == batch:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def size_bytes(self) -> int:
        uri, _ = parse(self.path)
        return _file_size(uri)


def _file_exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).expanduser().exists()


def _file_size(path: str) -> int:
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_file():
        return target.stat().st_size
    if target.is_dir():
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return 0
