"""Duplicates: the same file, the same pixels, or the same photo edited; found with k-NN, never an n x n matrix.

Evidence for a pair, strongest first:
  bytes   the same SHA-256 (the store has every file's hash);
  pixels  different files that decode to the same pixels (re-encoded losslessly, metadata changed);
  near    the same photo after an edit (resized, re-compressed, cropped a little, brightness or contrast,
          a caption or logo, mirrored): embeddings at cosine >= `threshold`, or a little lower when the
          perceptual hashes (pHash, and pHash of the mirror image) agree too. Embeddings alone also call two
          photos of one scene taken a second apart "near"; the hash check keeps the lower band for edits.

Candidate pairs come from each image's k nearest neighbours: exact for small collections, an IVF index on
PCA-256 vectors beyond (near duplicates are so close that a few cells find them). Pairs are joined into
clusters (connected components: each image in at most one), and each cluster gets an image to keep:
highest resolution, then largest file, then richest EXIF, then oldest.

Nothing here deletes anything: see quarantine.py for moving duplicates aside and back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lookalike import images
from lookalike.errors import require

DEFAULT_THRESHOLD = 0.90  # cosine at or above which embeddings alone say "the same photo"
HASH_FLOOR = 0.70  # cosine from which a close perceptual hash also says so (resized copies go this low)
HASH_DISTANCE = 8  # pHash Hamming distance (of 64 bits) that counts as close
NEIGHBOURS = 10
EXACT_LIMIT = 20_000  # candidate search: exact up to here, IVF on PCA-256 beyond


@dataclass
class Member:
    id: int
    path: str
    width: int
    height: int
    size: int
    mtime_ns: int
    sha256: str | None
    exif_tags: int = 0


@dataclass
class Pair:
    a: int
    b: int
    kind: str  # bytes, pixels or near
    cosine: float | None
    hash_distance: int | None = None


@dataclass
class Cluster:
    members: list[Member]
    keep: Member
    reason: str
    pairs: list[Pair]

    @property
    def kind(self) -> str:
        """exact when every link is bytes or pixels, else near."""
        return "exact" if all(p.kind in ("bytes", "pixels") for p in self.pairs) else "near"

    @property
    def others(self) -> list[Member]:
        return [m for m in self.members if m.id != self.keep.id]


@dataclass
class Findings:
    clusters: list[Cluster]
    scanned: int
    threshold: float
    neighbour_cosines: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # for the histogram
    seconds: float = 0.0


# -- candidates -------------------------------------------------------------------------------------------

def candidate_pairs(vectors: np.ndarray, k: int = NEIGHBOURS, floor: float = HASH_FLOOR,
                    batch: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows' k nearest other rows with cosine >= floor: (a int64 [p], b int64 [p], cosine float32 [p]) with
    a < b, each pair once; and every neighbour cosine seen, float32 [n * k], for the histogram.
    Memory: one batch of scores, never n x n."""
    n = len(vectors)
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32), np.empty(0, np.float32)
    k = min(k, n - 1)
    if n <= EXACT_LIMIT:
        rows, scores = _exact_neighbours(vectors, k, batch)
    else:
        rows, scores = _ivf_neighbours(vectors, k)
    a = np.repeat(np.arange(n), rows.shape[1])
    b, cosine = rows.ravel(), scores.ravel()
    keep = (b >= 0) & (cosine >= floor) & (a != b)
    a, b, cosine = a[keep], b[keep], cosine[keep]
    low, high = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(low * n + high, return_index=True)
    seen = scores.ravel()
    return low[first], high[first], cosine[first], seen[np.isfinite(seen)]


def _exact_neighbours(vectors: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(vectors)
    rows = np.empty((n, k), np.int64)
    scores = np.empty((n, k), np.float32)
    for start in range(0, n, batch):
        block = vectors[start:start + batch] @ vectors.T
        block[np.arange(len(block)), start + np.arange(len(block))] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        rows[start:start + batch] = top
        scores[start:start + batch] = np.take_along_axis(block, top, axis=1)
    return rows, scores


def _ivf_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """IVF-Flat on PCA-256 vectors finds candidates; their cosine is then taken on the full vectors."""
    from lookalike.search.base import import_faiss
    from lookalike.search.pca import Projection

    faiss = import_faiss()
    n = len(vectors)
    sample = vectors[np.random.default_rng(0).choice(n, min(n, 50_000), replace=False)]
    projection = Projection.fit(sample, min(256, vectors.shape[1]))
    reduced = np.concatenate([projection.transform(vectors[s:s + 50_000]) for s in range(0, n, 50_000)])
    nlist = int(max(16, min(4096, 2 * np.sqrt(n))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(reduced.shape[1]), reduced.shape[1], nlist,
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.train(reduced[np.random.default_rng(1).choice(n, min(n, 40 * nlist), replace=False)])
    index.add(reduced)
    index.nprobe = 8
    _, rows = index.search(reduced, k + 1)
    scores = np.full(rows.shape, -np.inf, np.float32)
    for start in range(0, n, 4096):
        block = rows[start:start + 4096]
        scores[start:start + 4096] = np.einsum("nd,nkd->nk", vectors[start:start + 4096],
                                               vectors[np.maximum(block, 0)])
    scores[rows < 0] = -np.inf
    scores[rows == np.arange(n)[:, None]] = -np.inf  # itself
    return rows, scores


# -- perceptual hashes ------------------------------------------------------------------------------------

def perceptual_hash(path: str) -> tuple[int, int] | None:
    """(pHash, pHash of the mirror image) as 64-bit ints, or None when the file cannot be read."""
    imagehash = require("imagehash", "dupes", "duplicate detection")
    from PIL import ImageOps

    decoded = images.load(path, draft=(64, 64))
    if decoded.image is None:
        return None
    grey = decoded.image.convert("L")
    return _as_int(imagehash.phash(grey)), _as_int(imagehash.phash(ImageOps.mirror(grey)))


def _as_int(h) -> int:
    return int("".join("1" if bit else "0" for bit in h.hash.flatten()), 2)


def hash_distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Bits that differ between two pHashes, the mirror image allowed."""
    return min((a[0] ^ b[0]).bit_count(), (a[0] ^ b[1]).bit_count())


class HashCache:
    """Perceptual hashes by file id, kept beside the index (a derived cache, safe to delete)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.hashes: dict[int, tuple[int, int] | None] = {}
        if path is not None and path.is_file():
            try:
                with np.load(path) as data:
                    for file_id, h, m, ok in zip(data["ids"], data["phash"], data["mirror"], data["ok"],
                                                 strict=True):
                        self.hashes[int(file_id)] = (int(h), int(m)) if ok else None
            except Exception:  # damaged: recompute
                self.hashes = {}

    def get(self, file_id: int, path: str) -> tuple[int, int] | None:
        if file_id not in self.hashes:
            self.hashes[file_id] = perceptual_hash(path)
        return self.hashes[file_id]

    def save(self) -> None:
        if self.path is None:
            return
        items = sorted(self.hashes.items())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial.npz")
            with open(partial, "wb") as handle:
                np.savez(handle, ids=np.array([i for i, _ in items], np.int64),
                         phash=np.array([h[0] if h else 0 for _, h in items], np.uint64),
                         mirror=np.array([h[1] if h else 0 for _, h in items], np.uint64),
                         ok=np.array([h is not None for _, h in items], bool))
            partial.replace(self.path)
        except OSError:
            pass


def pixel_digest(path: str) -> str | None:
    """A hash of the decoded pixels at full size: equal for the same image in another container."""
    decoded = images.load(path)
    if decoded.image is None:
        return None
    return hashlib.sha256(decoded.image.tobytes()).hexdigest()


# -- clustering and keeping --------------------------------------------------------------------------------

def clusters_of(pairs: Sequence[Pair], members: dict[int, Member]) -> list[Cluster]:
    """Connected components of the pairs (union-find), each with its image to keep, largest first."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        parent[root(pair.a)] = root(pair.b)
    groups: dict[int, list[int]] = {}
    for file_id in parent:
        groups.setdefault(root(file_id), []).append(file_id)
    clusters = []
    for ids in groups.values():
        chosen = [members[i] for i in sorted(ids)]
        keep, reason = choose_keeper(chosen)
        inside = set(ids)
        clusters.append(Cluster(chosen, keep, reason, [p for p in pairs if p.a in inside]))
    return sorted(clusters, key=lambda c: (-len(c.members), c.keep.path))


def choose_keeper(members: Sequence[Member]) -> tuple[Member, str]:
    """Highest resolution, then largest file, then richest EXIF, then oldest; and why, in words."""
    def rank(m: Member):
        return (m.width * m.height, m.size, m.exif_tags, -m.mtime_ns)

    ordered = sorted(members, key=rank, reverse=True)
    best, runner = ordered[0], ordered[1] if len(ordered) > 1 else ordered[0]
    if best.width * best.height != runner.width * runner.height:
        return best, f"highest resolution ({best.width}×{best.height} vs {runner.width}×{runner.height})"
    if best.size != runner.size:
        return best, f"largest file at the same resolution ({best.size:,} vs {runner.size:,} bytes)"
    if best.exif_tags != runner.exif_tags:
        return best, f"richest EXIF ({best.exif_tags} tags vs {runner.exif_tags})"
    if best.mtime_ns != runner.mtime_ns:
        return best, "oldest file"
    return best, "all alike: the first by path"


def exif_tags(path: str) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return len(image.getexif())
    except Exception:
        return 0


# -- the whole search --------------------------------------------------------------------------------------

def find(index, *, under: str | None = None, threshold: float = DEFAULT_THRESHOLD, exact_only: bool = False,
         k: int = NEIGHBOURS, hash_floor: float = HASH_FLOOR, max_hash_distance: int = HASH_DISTANCE,
         progress: Callable[[str], None] | None = None) -> Findings:
    """Every cluster of duplicates in `index` (a lookalike Index), or among its files below folder `under`."""
    started = time.perf_counter()
    ids, vectors = index.vectors()
    members = {i: Member(i, *d) for i, d in index.details().items()}
    if under is not None:
        members = {i: m for i, m in members.items() if Path(m.path).is_relative_to(under)}
        inside = np.isin(ids, np.fromiter(members, np.int64, len(members)))
        ids, vectors = ids[inside], vectors[inside]
    pairs: list[Pair] = []
    by_hash: dict[str, list[int]] = {}
    for file_id, member in members.items():
        if member.sha256:
            by_hash.setdefault(member.sha256, []).append(file_id)
    for group in by_hash.values():
        pairs += [Pair(group[0], other, "bytes", None) for other in group[1:]]
    same_bytes = {i for group in by_hash.values() if len(group) > 1 for i in group[1:]}
    if progress:
        progress(f"{len(pairs)} pairs of identical files; looking for near duplicates among {len(ids):,} images")
    floor = 0.99 if exact_only else min(hash_floor, threshold)
    a, b, cosine, seen = candidate_pairs(vectors, k, floor)
    hashes = HashCache(_cache_path(index))
    for i, j, score in zip(ids[a].tolist(), ids[b].tolist(), cosine.tolist(), strict=True):
        if i in same_bytes and j in same_bytes and members[i].sha256 == members[j].sha256:
            continue  # already a bytes pair
        first, second = members[i], members[j]
        if first.sha256 and first.sha256 == second.sha256:
            continue
        if (first.width, first.height) == (second.width, second.height) and score >= 0.99:
            digest = pixel_digest(first.path)
            if digest is not None and digest == pixel_digest(second.path):
                pairs.append(Pair(i, j, "pixels", score))
                continue
        if exact_only:
            continue
        if score >= threshold:
            pairs.append(Pair(i, j, "near", score))
            continue
        ha, hb = hashes.get(i, first.path), hashes.get(j, second.path)
        if ha is not None and hb is not None:
            distance = hash_distance(ha, hb)
            if distance <= max_hash_distance:
                pairs.append(Pair(i, j, "near", score, distance))
    hashes.save()
    clusters = clusters_of(pairs, members)
    for cluster in clusters:  # EXIF only matters for the keep rule, and only inside clusters
        for member in cluster.members:
            member.exif_tags = exif_tags(member.path)
        cluster.keep, cluster.reason = choose_keeper(cluster.members)
    return Findings(clusters, len(members), threshold, seen, time.perf_counter() - started)


def _cache_path(index) -> Path | None:
    folder = index.cache_dir
    return None if folder is None else folder / "phash.npz"
