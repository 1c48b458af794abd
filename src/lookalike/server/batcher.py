"""Concurrent requests share one model call: a queue in front of the Embedder.

Forty request threads each running the model would fight over two cores (ONNX Runtime already uses them
all for one call) and serve fewer images a second than one thread does. Instead, request threads decode
their upload and put the pixels here; one thread takes whatever is waiting (up to `max_batch`), runs the
model once for all of it, and hands each request its vector. Alone, a request waits for nobody; under
load, batches grow and the model runs at its batch throughput.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from lookalike.models.embedder import Embedder


class EmbeddingBatcher:
    def __init__(self, embedder: Embedder, max_batch: int = 32):
        self.embedder = embedder
        self.max_batch = max_batch
        self.waiting: queue.Queue[tuple[np.ndarray, Future] | None] = queue.Queue()
        self.worker = threading.Thread(target=self._run, name="lookalike-embed", daemon=True)
        self.worker.start()

    def embed(self, pixels: np.ndarray, timeout: float = 60.0) -> np.ndarray:
        """uint8 [height, width, 3] from Embedder.prepare -> its unit vector float32 [dims]."""
        done: Future = Future()
        self.waiting.put((pixels, done))
        return done.result(timeout=timeout)

    def close(self) -> None:
        self.waiting.put(None)
        self.worker.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self.waiting.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.waiting.put(None)  # stop after this batch
                    break
                batch.append(item)
            try:
                vectors = self.embedder.embed_many([pixels for pixels, _ in batch])
            except Exception as exc:  # every waiting request learns why, none hangs
                for _, done in batch:
                    done.set_exception(exc)
                continue
            for (_, done), vector in zip(batch, vectors, strict=True):
                done.set_result(vector)
