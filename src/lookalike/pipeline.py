"""Indexing: files -> decoded pixels -> vectors -> store, with decoding overlapped with inference.

Decode threads read each file once, hash those bytes, decode (JPEG at reduced scale) and resize to the
model's input; the calling thread batches the results and normalises them; an inference thread runs the
model and writes each batch in one transaction, while the next batch is being put together.
Pillow, NumPy and ONNX Runtime all release the GIL, so threads are enough.
A file that cannot be read or decoded becomes a "failed" row with its reason; nothing aborts a run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from lookalike import images
from lookalike.models.embedder import Embedder
from lookalike.storage.base import FileRecord, IndexStore, Known

Progress = Callable[[int, int], None]  # (files done, files to do)
# What a long one-off step reports (exporting a model, building an ANN index, a t-SNE layout), so that no wait
# is silent: (what it is doing, units done, units in all or None where the work cannot be counted).
# Called with done == total when the step ends.
Steps = Callable[[str, int, "int | None"], None]


@dataclass
class Summary:
    """What one indexing run did."""

    indexed: int = 0  # embedded and stored (new or changed files)
    unchanged: int = 0  # skipped: same size and mtime, or same bytes
    removed: int = 0  # gone from disk, dropped from the index
    failed: int = 0  # recorded with a reason, no vector
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return (self.indexed + self.failed) / self.seconds if self.seconds else 0.0


@dataclass
class _Job:
    path: str
    size: int
    mtime_ns: int
    known: Known | None


@dataclass
class _Prepared:
    record: FileRecord
    pixels: np.ndarray | None = None
    same_bytes: bool = False


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def plan(paths: Iterable[Path], known: dict[str, Known]) -> tuple[list[_Job], int]:
    """Which of these files need work: new ones, and known ones whose size or mtime changed."""
    jobs, unchanged = [], 0
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue  # vanished since discovery: the next run drops it if it was indexed
        key = str(path)
        old = known.get(key)
        if old is not None and old.size == stat.st_size and old.mtime_ns == stat.st_mtime_ns:
            unchanged += 1
            continue
        jobs.append(_Job(key, stat.st_size, stat.st_mtime_ns, old))
    return jobs, unchanged


def run(
    store: IndexStore,
    embedder: Embedder,
    paths: Iterable[Path],
    *,
    remove_missing_under: list[str] | None = None,
    workers: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Summary:
    """Index `paths` into `store`; with `remove_missing_under`, drop indexed files below those folders
    that are not among `paths` (they were deleted or moved)."""
    started = time.perf_counter()
    paths = list(paths)
    summary = Summary()
    if remove_missing_under:
        present = {str(p) for p in paths}
        gone = [p for root in remove_missing_under for p in store.known(under=root) if p not in present]
        summary.removed = store.remove(gone)
    jobs, summary.unchanged = plan(paths, store.known())
    if progress:
        progress(0, len(jobs))
    workers = workers or default_workers()
    draft = (embedder.spec.input_size, embedder.spec.input_size)
    budget = images.MemoryBudget(2 * images.MAX_DECODED_BYTES)  # shared by the decode threads
    # A model that keeps the aspect ratio gives arrays of a few shapes (sides are multiples of 32): one
    # batch is gathered per shape, so at most a few dozen partly filled batches wait at any time.
    batches: dict[tuple[int, ...], list[_Prepared]] = {}
    failed: list[FileRecord] = []
    touched: list[tuple[str, int, int]] = []
    done = 0  # jobs taken off the queue, whatever their outcome

    def embed_and_write(inputs: np.ndarray | None, records: list[FileRecord], n_failed: int,
                        touches: list[tuple[str, int, int]], done_so_far: int) -> None:
        """The inference stage, on its own thread: the model, then one transaction for the batch."""
        if inputs is not None:
            for record, vector in zip(records, embedder.embed_inputs(inputs), strict=False):
                record.vector = vector
        if records:
            store.write(records)
        if touches:
            store.touch(touches)
        summary.indexed += len(records) - n_failed
        summary.failed += n_failed
        summary.failures += [(r.path, r.error) for r in records[len(records) - n_failed:]]
        if progress:
            progress(done_so_far, len(jobs))

    # Three stages overlap: decode threads read and decode files; this thread stacks and normalises a
    # batch (of one shape); the inference thread runs the model on the previous batch and writes it. At most one batch
    # waits for the inference thread, so memory stays flat.
    with ThreadPoolExecutor(workers, thread_name_prefix="lookalike-decode") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="lookalike-infer") as infer:
        pending: deque[Future[_Prepared]] = deque()
        in_flight: deque[Future[None]] = deque()

        def flush(shape: tuple[int, ...] | None = None) -> None:
            nonlocal failed, touched
            batch = batches.pop(shape, []) if shape is not None else []
            inputs = embedder.inputs(np.stack([cast(np.ndarray, item.pixels) for item in batch])) if batch else None
            records = [item.record for item in batch] + failed
            while len(in_flight) > 1:
                in_flight.popleft().result()
            in_flight.append(infer.submit(embed_and_write, inputs, records, len(failed), touched, done))
            failed, touched = [], []

        queue = iter(jobs)
        window = max(2 * batch_size, 4 * workers)  # bounded read-ahead: memory stays flat on any folder
        try:
            while True:
                while len(pending) < window:
                    job = next(queue, None)
                    if job is None:
                        break
                    pending.append(pool.submit(_prepare, job, embedder, draft, budget))
                if not pending:
                    break
                item = pending.popleft().result()
                done += 1
                if item.same_bytes:
                    touched.append((item.record.path, item.record.size, item.record.mtime_ns))
                    summary.unchanged += 1
                elif item.pixels is None:
                    failed.append(item.record)
                else:
                    batches.setdefault(item.pixels.shape, []).append(item)
                    if len(batches[item.pixels.shape]) >= batch_size:
                        flush(item.pixels.shape)
                if len(failed) >= batch_size or len(touched) >= 4 * batch_size:
                    flush()
            for shape in list(batches):
                flush(shape)
            flush()
            while in_flight:
                in_flight.popleft().result()
        finally:
            for future in pending:
                future.cancel()
    summary.seconds = time.perf_counter() - started
    return summary


def _prepare(job: _Job, embedder: Embedder, draft: tuple[int, int], budget: images.MemoryBudget) -> _Prepared:
    """Runs on a decode thread: read once, hash, decode, prepare the model input. A file bigger than
    READ_WHOLE_BYTES is hashed in chunks and decoded from disk, so no file is ever read whole into memory."""
    record = FileRecord(job.path, job.size, job.mtime_ns, None)
    try:
        with open(job.path, "rb") as handle:
            if job.size <= images.READ_WHOLE_BYTES:
                data = handle.read()
                record.sha256 = hashlib.sha256(data).hexdigest()
                source: bytes | BinaryIO = data
            else:
                record.sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
                handle.seek(0)
                source = handle
            if job.known is not None and job.known.status == "ok" and job.known.sha256 == record.sha256:
                return _Prepared(record, same_bytes=True)
            decoded = images.decode(source, draft, budget)
    except OSError as exc:
        record.error = f"cannot read: {exc.strerror or exc}"
        return _Prepared(record)
    record.width, record.height = decoded.width, decoded.height
    if decoded.image is None:
        record.error = decoded.error
        return _Prepared(record)
    return _Prepared(record, embedder.prepare(decoded.image))
