"""kill -9 in the middle of indexing: the index still opens, and a re-run completes it exactly."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from lookalike import Index

FILES = 400


def slow_folder(root, n=FILES):
    """Large, smooth PNGs (small files, but a million pixels each to decode): a run lasts seconds."""
    root.mkdir()
    sources = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        ramp = np.linspace(0, 255, 1000, dtype=np.float32)
        pixels = np.stack([np.add.outer(ramp * rng.random(), ramp * rng.random()) % 256 for _ in range(3)], axis=-1)
        path = root / f"source{seed}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path, compress_level=1)
        sources.append(path)
    for i in range(n - len(sources)):
        shutil.copy(sources[i % len(sources)], root / f"copy{i:04d}.png")
    return root


def indexed_count(index_path) -> int:
    try:
        db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_kill_during_indexing_then_rerun_completes_without_duplicates(tmp_path, tiny_model):
    photos = slow_folder(tmp_path / "photos")
    index_path = tmp_path / "crash.lookalike"
    command = [sys.executable, "-m", "lookalike", "index", str(photos), "--index", str(index_path),
               "--model", str(tiny_model), "--batch-size", "8", "--workers", "1", "--threads", "1", "-q"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while indexed_count(index_path) < 16 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = indexed_count(index_path)
    assert process.returncode == -signal.SIGKILL
    assert 16 <= before < FILES, f"the kill should land mid-run, but {before} of {FILES} were indexed"

    with Index.open(index_path) as index:  # opens after the kill, and holds whole batches only
        assert len(index) == before and before % 8 == 0

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{FILES - before} indexed, {before} unchanged" in rerun.stdout

    with Index.open(index_path) as index:
        ids, vectors = index.vectors()
        assert len(index) == FILES == len(ids) == len(set(ids.tolist()))
        paths = [row[0] for row in index.store.db.execute("SELECT path FROM files")]
        assert len(paths) == len(set(paths)) == FILES
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
