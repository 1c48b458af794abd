"""faiss IVF-PQ: vectors compressed to a few dozen bytes each, for collections that do not fit in memory.

The vectors are split into `nlist` cells by k-means; each is stored as `m` one-byte codes (product
quantisation), so a 1280-d float32 vector (5,120 bytes) takes m + 8 bytes. A query scans the `nprobe`
nearest cells. PQ scores are approximate, so the Searcher re-ranks a shortlist with the full vectors, which
stay on disk (memory-mapped) rather than in RAM. Adding and removing work in place (ids are stored).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lookalike.errors import BadInput
from lookalike.search.base import as_queries, faiss_answer, import_faiss

MIN_VECTORS = 1000  # fewer than this, and k-means has nothing to learn from: use exact search


def default_m(dims: int) -> int:
    """The number of PQ codes: the largest of 64, 48, 32, ... that divides dims."""
    return next(m for m in (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dims % m == 0)


class IVFPQIndex:
    kind = "ivfpq"

    def __init__(self, index, nprobe: int):
        self.index = index
        self.dims = index.d
        self.set_nprobe(nprobe)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, *, nlist: int | None = None, m: int | None = None,
              nprobe: int = 32, train_size: int = 100_000, seed: int = 0) -> IVFPQIndex:
        """Train on (a sample of at most `train_size` of) `vectors`, then add them all."""
        faiss = import_faiss()
        n, dims = vectors.shape
        if n < MIN_VECTORS:

            raise BadInput(f"IVF-PQ needs at least {MIN_VECTORS} images to train on (have {n}): "
                                 "use --ann exact or hnsw")
        # faiss wants ~39 training points per centroid, for the cells and for the 2^nbits PQ codewords
        nlist = nlist or int(min(4096, max(16, 2 * math.sqrt(n))))
        nlist = min(nlist, max(1, min(n, train_size) // 39))
        nbits = int(min(8, math.floor(math.log2(max(2, min(n, train_size) / 39)))))
        m = m or default_m(dims)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dims), dims, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10  # k-means converges enough for coarse cells; 25 would triple training time
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_size else vectors[np.sort(rng.choice(n, train_size, replace=False))]
        index.train(np.ascontiguousarray(sample, np.float32))
        built = cls(index, min(nprobe, nlist))
        built.add(ids, vectors)
        return built

    def __len__(self) -> int:
        return self.index.ntotal

    def set_nprobe(self, nprobe: int) -> None:
        """How many cells a query scans: more, better recall, slower."""
        self.nprobe = min(nprobe, self.index.nlist)
        import_faiss().extract_index_ivf(self.index).nprobe = self.nprobe

    def add(self, ids: np.ndarray, vectors: np.ndarray, chunk: int = 65536) -> None:
        ids = np.asarray(ids, np.int64)
        for start in range(0, len(ids), chunk):
            self.index.add_with_ids(np.ascontiguousarray(vectors[start:start + chunk], np.float32),
                                    ids[start:start + chunk])

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(import_faiss().IDSelectorBatch(np.asarray(ids, np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_answer(*self.index.search(as_queries(queries, self.dims), k))

    def ids_held(self) -> np.ndarray:
        faiss = import_faiss()
        invlists = self.index.invlists
        held = [faiss.rev_swig_ptr(invlists.get_ids(c), invlists.list_size(c)).copy()
                for c in range(self.index.nlist) if invlists.list_size(c)]
        return np.sort(np.concatenate(held)) if held else np.empty(0, np.int64)

    def memory_bytes(self) -> int:
        codes = self.index.pq.code_size + 8  # PQ codes + the id, per vector
        return int(len(self) * codes + self.index.nlist * self.dims * 4 + self.index.pq.M * 256 * 4 * 4)

    def save(self, folder: Path) -> None:
        import_faiss().write_index(self.index, str(folder / "index.faiss"))
        (folder / "nprobe").write_text(str(self.nprobe))

    @classmethod
    def load(cls, folder: Path) -> IVFPQIndex:
        index = import_faiss().read_index(str(folder / "index.faiss"))
        return cls(index, int((folder / "nprobe").read_text()))
