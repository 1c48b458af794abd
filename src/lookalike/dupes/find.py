"""Duplicates: the same photograph in other files, found with k-NN candidates and verified pair by pair.

A duplicate is *the same photograph*: the same bytes, the same pixels in another file, or the photo after an
edit (re-encoded, resized, cropped keeping about 60 % of it or more, brightness/contrast/colour changed,
captioned or watermarked, mirrored, rotated a little). Another shot of the same thing is not one.

1. Candidates: each image's k nearest neighbours in the index (its own k-NN search, batch by batch, never an
   n x n matrix) at cosine >= CANDIDATE_FLOOR. Embeddings only propose: they cannot tell an edit from
   another shot.
2. Evidence for a pair, strongest first: `bytes` (the same SHA-256), `pixels` (the same decoded pixels),
   `same photo` (verify.py: local features, a similarity transform, and the aligned pixels agreeing).
3. Clusters: connected components of the proven pairs (scipy.sparse.csgraph), then every member is checked
   against the file to keep (keep.py), not through a chain: members that fail that check leave the cluster.
   So a candidate pair whose two pictures proven pairs already join is not checked (see FOREST_ROUNDS; it is
   where the check against the one kept parts them): a photo with 7 copies is 28 candidate pairs, of which 7
   prove the cluster.
4. One physical file reached by several paths (a symbolic link, a hard link, a folder indexed twice) is one
   file: never its own duplicate; its other paths are listed as aliases. A file that a link points at (or
   that is a link) is never moved (`movable`), and is the one kept where it is in a cluster.

Nothing here deletes or moves anything: see quarantine.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lookalike import images
from lookalike.dupes import keep as keep_rule
from lookalike.dupes import verify
from lookalike.dupes.cache import FeatureCache, pair_keys
from lookalike.pipeline import Steps

if TYPE_CHECKING:
    from scipy.cluster.hierarchy import DisjointSet

CANDIDATE_FLOOR = 0.70  # cosine from which a neighbour is checked (edited copies: dev set, 99 % above 0.70)
NEIGHBOURS = 10
SHORTLIST = 2  # above the exact limit, HNSW proposes SHORTLIST x NEIGHBOURS per image for re-ranking (and walks
# that broadly): at 100k synthetic vectors it found 988,615 pairs at cosine >= 0.70 in 31 s, against 992,922
# in 59 s with 4 x and 997,663 in 254 s with the searcher's defaults (load ~5): the lost pairs are far ones
PIXELS_FLOOR = 0.99  # cosine from which two same-size images are compared pixel for pixel
SAME_PIXELS = "same pixels"  # the reason of a cached verdict for two files whose decoded pixels are the same
# Pairs are checked CHUNK at a time, on one thread per core (OpenCV and the decoders let go of Python's lock:
# 1.7x on 2 cores), and after a chunk the features and verdicts so far are written once SAVE_EVERY seconds have
# passed since they last were, and when a run is stopped (Ctrl-C, an error): a first run of hours keeps what it
# did, a kill -9 all but its last seconds (a write after every chunk was a fifth of benchmarks/dupes.py's 100k run
# whose checks cost nothing).
CHUNK = 500
SAVE_EVERY = 2.0
BATCH = 8  # pairs a thread checks in one task
POLL = 0.05  # seconds the main thread waits for a task before it looks for Ctrl-C again
PROGRESS_EVERY = 25  # pairs between two progress reports
# Features of up to IN_MEMORY pictures stay in memory between chunks (about 200 kB each: 2 GB), the least recently
# used leaving first; the pairs are checked in an order that keeps a picture's pairs close together (reverse
# Cuthill-McKee on the graph of candidate pairs), so that features are read back from disk (1 ms each) far less
# often than in the order of file ids (100k points' 8-NN pairs in 16 dimensions: 388k reads against 593k).
IN_MEMORY = 10_000
CHECKING = "checking candidate pairs"  # the progress step (pipeline.Steps) of the pair checks
KEEPER = "checking each duplicate against the file kept"  # ... and of the checks against the one kept
# Candidate pairs are checked in rounds, and a pair whose pictures the pairs proven so far already join is
# skipped (its verdict could not change the clusters; see `_clusters`). The first FOREST_ROUNDS rounds check only
# a spanning forest of what is left (for every two groups candidate pairs connect, their pair of highest cosine:
# the likeliest to be proven, which joins the most); the last round checks the rest chunk by chunk, skipping what
# the chunks before it joined. On the dev set of benchmarks/dupes.py (13,674 candidate pairs, 6,878 of them the same
# photo, whose checks cost 3-4x a refusal's), replayed from its cached verdicts: two rounds check 8,247 pairs,
# 1,618 of them the same photo; checking all: 13,674; a third round saves 32 more.
FOREST_ROUNDS = 2


@dataclass
class Member:
    id: int
    path: str
    width: int
    height: int
    size: int
    mtime_ns: int
    sha256: str | None
    aliases: list[str] = field(default_factory=list)  # other paths to this same physical file


@dataclass
class Link:
    """Why a member belongs with the one kept: kind bytes, pixels or photo, and for photo the evidence."""

    kind: str
    evidence: verify.Evidence | None = None

    def describe(self) -> str:
        if self.kind == "bytes":
            return "same bytes"
        if self.kind == "pixels":
            return "same pixels"
        return self.evidence.describe() if self.evidence else "same photo"


@dataclass
class Cluster:
    members: list[Member]
    keep: Member
    reason: str
    links: dict[int, Link]  # member id -> its link to `keep`

    @property
    def kind(self) -> str:
        """exact when every member has the same bytes or pixels as the one kept, else near."""
        return "exact" if all(link.kind in ("bytes", "pixels") for link in self.links.values()) else "near"

    @property
    def others(self) -> list[Member]:
        return [m for m in self.members if m.id != self.keep.id]


@dataclass
class Findings:
    clusters: list[Cluster]
    scanned: int
    candidates: int = 0  # candidate pairs
    neighbour_cosines: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    seconds: float = 0.0
    floor: float = CANDIDATE_FLOOR
    skipped: int = 0  # candidate pairs not checked: proven pairs already joined their two pictures
    checked_now: int = 0  # candidate pairs checked by this run (the others checked were cached by earlier runs)

    def pairs_text(self) -> str:
        """How many candidate pairs, and how many needed a check, for a person."""
        checked = self.candidates - self.skipped
        now = f" ({self.checked_now:,} by this run, the others before)" if self.checked_now != checked else ""
        skipped = f"; {self.skipped:,} others already joined by proven pairs" if self.skipped else ""
        return f"{checked:,} candidate pairs checked{now}{skipped}"


# -- physical files --------------------------------------------------------------------------------------

def physical_groups(members: dict[int, Member]) -> dict[int, int]:
    """member id -> the id of the member that stands for its physical file (same st_dev and st_ino). The one
    standing for it is a path that is not a symbolic link where there is one, else the lowest id."""
    by_file: dict[tuple[int, int], list[int]] = {}
    for member in members.values():
        try:
            stat = os.stat(member.path)
        except OSError:
            continue
        by_file.setdefault((stat.st_dev, stat.st_ino), []).append(member.id)
    canonical = {i: i for i in members}
    for ids in by_file.values():
        if len(ids) > 1:
            head = min(ids, key=lambda i: (os.path.islink(members[i].path), i))
            for i in ids:
                canonical[i] = head
            members[head].aliases = sorted(members[i].path for i in ids if i != head)
    return canonical


def movable(member: Member) -> bool:
    """Can this file be moved aside without breaking another path to it? Not when it is a symbolic link, has
    a hard link, or a symbolic link among the indexed paths points at it. (A folder indexed twice gives
    aliases whose parent is a link: moving the file through its real path is fine.)"""
    try:
        stat = os.lstat(member.path)
    except OSError:
        return False
    return (not os.path.islink(member.path) and stat.st_nlink == 1
            and not any(os.path.islink(alias) for alias in member.aliases))


def why_held(member: Member) -> str:
    """Why `movable` said no, in a few words for the user."""
    if not os.path.lexists(member.path):
        return "gone"
    if os.path.islink(member.path):
        return "a symbolic link: the file it leads to is not moved through it"
    if member.aliases:
        return f"other paths lead to it ({', '.join(member.aliases)})"
    return "other paths lead to it (a hard link outside the index)"


def pixel_digest(path: str) -> str | None:
    """A hash of the decoded pixels at full size: equal for the same picture in another container."""
    decoded = images.load(path)
    if decoded.image is None:
        return None
    return hashlib.sha256(decoded.image.tobytes()).hexdigest()


# -- the search -----------------------------------------------------------------------------------------

class _Prover:
    """Decides pairs, remembering every answer: bytes, then pixels, then verification (or its cached
    verdict, read for all candidate pairs at once)."""

    def __init__(self, members: dict[int, Member], features: FeatureCache):
        self.members = members
        self.features = features
        self.known: dict[tuple[int, int], Link | None] = {}
        self.digests: dict[int, str | None] = {}
        self.verdicts: dict[tuple[int, int], verify.Evidence] = {}
        self.fresh: set[tuple[int, int]] = set()  # pairs decided by this run from the pictures (not the cache)

    def preload(self, pairs: np.ndarray) -> np.ndarray:
        """Read the cached verdicts of these pairs (int64 [p, 2], a < b) in one pass; returns the pairs still
        to decide (the ones refused before need nothing more)."""
        refused, accepted = self.features.verdicts(pairs)
        self.verdicts.update(accepted)
        return ~refused

    def needs_features(self, i: int, j: int) -> bool:
        """Whether deciding this pair (i < j) may need the pictures' features: not when its verdict is cached
        or the files have the same bytes."""
        a, b = self.members[i].sha256, self.members[j].sha256
        return (i, j) not in self.verdicts and not (a and a == b)

    def link(self, i: int, j: int, cosine: float | None = None, *, preloaded: bool = False) -> Link | None:
        """The proof that i and j are one photograph, or None. `preloaded`: the cache was already asked
        about this pair (see `preload`), so it is not asked again."""
        key = (min(i, j), max(i, j))
        if key not in self.known:
            self.known[key] = self._decide(*key, cosine, preloaded)
        return self.known[key]

    def _decide(self, i: int, j: int, cosine: float | None, preloaded: bool) -> Link | None:
        a, b = self.members[i], self.members[j]
        if a.sha256 and a.sha256 == b.sha256:
            return Link("bytes")
        evidence = self.verdicts.get((i, j)) if preloaded else self.features.verdict(i, j)
        if evidence is not None and evidence.reason == SAME_PIXELS:
            return Link("pixels")
        if evidence is None:
            self.fresh.add((i, j))
        if evidence is None and (a.width, a.height) == (b.width, b.height) and \
                (cosine is None or cosine >= PIXELS_FLOOR):
            for m in (a, b):
                if m.id not in self.digests:
                    self.digests[m.id] = pixel_digest(m.path)
            if self.digests[i] is not None and self.digests[i] == self.digests[j]:
                self.features.remember(i, j, verify.Evidence(True, SAME_PIXELS))  # a re-run decodes neither
                return Link("pixels")
        if evidence is None:
            fa = self.features.get(i, a.path)
            fb = self.features.get(j, b.path) if fa is not None else None
            if fa is None or fb is None:
                return None
            evidence = verify.compare(fa, fb)
            if evidence.same:
                first, second = (keep_rule.read_facts(m.path, m.width, m.height, m.mtime_ns) for m in (a, b))
                if keep_rule.taken_apart(first, second):  # the pixels agree, the cameras say two exposures
                    evidence.same = False
                    evidence.reason = (f"taken at another moment ({first.taken} and {second.taken}, EXIF "
                                       "DateTimeOriginal): another shot")
            self.features.remember(i, j, evidence)
        if evidence.same and not evidence.file_scale:  # checked now, or by a version that did not measure it
            # Both thumbnails are THUMB pixels on their longer side: in the files' own pixels the scale is the
            # thumbnails' times the ratio of the longer sides
            evidence.file_scale = evidence.scale * max(b.width, b.height) / max(1, a.width, a.height)
        return Link("photo", evidence) if evidence.same else None


def candidate_pairs(index, heads: np.ndarray, canonical: np.ndarray, groups: np.ndarray, *, k: int,
                    floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs worth checking, from the index's own k-NN search (exact, or ANN above its limit), batch by
    batch: (pairs int64 [p, 2] of physical files, lower id first; their best cosine float32 [p]; every
    neighbour cosine seen, for the report). `heads` int64 [n] sorted: the member ids (every indexed path in
    scope); `canonical` [n]: the id standing for each one's physical file; `groups` [n]: the first id of
    its same-bytes group (pairs inside one are already proven). Memory O(N k): arrays only, no n x n."""
    found: list[np.ndarray] = []
    best: list[np.ndarray] = []
    seen: list[np.ndarray] = []

    def place(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(heads, ids), len(heads) - 1)
        return at, heads[at] == ids

    for ids, neighbours, scores in index.neighbour_ids(k, shortlist=SHORTLIST * k):
        seen.append(scores[np.isfinite(scores)].ravel())
        rows, cols = np.nonzero((scores >= floor) & (neighbours >= 0))
        at_a, in_a = place(ids[rows])
        at_b, in_b = place(neighbours[rows, cols])
        keep = in_a & in_b
        at_a, at_b, score = at_a[keep], at_b[keep], scores[rows, cols][keep]
        a, b = canonical[at_a], canonical[at_b]
        keep = (a != b) & (groups[at_a] != groups[at_b])
        a, b, score = a[keep], b[keep], score[keep]
        found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        best.append(score.astype(np.float32))
    cosines = np.concatenate(seen) if seen else np.empty(0, np.float32)
    if not found:
        return np.empty((0, 2), np.int64), np.empty(0, np.float32), cosines
    pairs, score = np.concatenate(found), np.concatenate(best)
    order = np.lexsort((-score, pair_keys(pairs)))  # by pair, best cosine first
    pairs, score = pairs[order], score[order]
    first = np.ones(len(pairs), bool)
    first[1:] = np.any(pairs[1:] != pairs[:-1], axis=1)
    return pairs[first], score[first], cosines


def find(index, *, under: str | None = None, exact_only: bool = False, k: int = NEIGHBOURS,
         floor: float = CANDIDATE_FLOOR, steps: Steps | None = None, workers: int | None = None) -> Findings:
    """Every cluster of duplicates in `index` (a lookalike Index), or among its files below folder `under`.
    `steps` hears how many candidate pairs are checked (CHECKING); `workers`: threads (default one per core)."""
    from scipy.cluster.hierarchy import DisjointSet
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    started = time.perf_counter()
    details = index.details()
    members = {i: Member(i, *d) for i, d in details.items()}
    if under is not None:
        members = {i: m for i, m in members.items() if _below(m.path, under)}
    canonical = physical_groups(members)
    heads = {i: m for i, m in members.items() if canonical[i] == i}
    features = FeatureCache(index.cache_dir)
    prover = _Prover(heads, features)

    edges: set[tuple[int, int]] = set()
    by_hash: dict[str, list[int]] = {}
    for i, member in heads.items():
        if member.sha256:
            by_hash.setdefault(member.sha256, []).append(i)
    for group in by_hash.values():
        edges.update((group[0], other) for other in group[1:])
    same_bytes = {i: group[0] for group in by_hash.values() for i in group}

    ids = np.array(sorted(members), np.int64)
    pairs, scores = np.empty((0, 2), np.int64), np.empty(0, np.float32)
    cosines = np.empty(0, np.float32)
    if len(index) > 1 and len(ids):
        canon = np.array([canonical[i] for i in ids.tolist()], np.int64)
        groups = np.array([same_bytes.get(canonical[i], canonical[i]) for i in ids.tolist()], np.int64)
        pairs, scores, cosines = candidate_pairs(index, ids, canon, groups, k=min(k, len(index) - 1),
                                                 floor=PIXELS_FLOOR if exact_only else floor)
    open_pairs = prover.preload(pairs)
    todo, todo_scores = pairs[open_pairs], scores[open_pairs]
    joined = DisjointSet(heads)  # the pictures proven pairs join so far
    for a, b in edges:
        joined.merge(a, b)
    pool = _Pool(workers or len(os.sched_getaffinity(0)))
    checker = _Checker(prover, features, pool, steps, exact_only)
    completed = False
    try:
        proven, skipped = _prove(todo, todo_scores, checker, joined)
        edges |= proven
        clusters = _clusters(edges, skipped, heads, prover, connected_components, coo_matrix, exact_only,
                             checker.decide)
        completed = True
    finally:  # also after Ctrl-C or an error: what was decided before it is kept (a re-run goes on from there)
        checker.stopping = not completed
        try:
            pool.finish()
        finally:
            everything = completed and under is None  # only then are ids missing from it gone from the index
            with _ctrl_c_deferred():  # a KeyboardInterrupt inside the write would roll all of it back
                features.save(keep_ids=np.fromiter(details, np.int64, len(details)) if everything else None)
                features.close()
    return Findings(clusters, len(members), len(pairs), cosines, time.perf_counter() - started, floor,
                    sum(pair not in prover.known for pair in skipped),
                    sum(pair in prover.fresh for pair in map(tuple, pairs.tolist())))


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C during the block takes effect after it (on the main thread; elsewhere signals do not arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's own handler raises KeyboardInterrupt


class _Pool(ThreadPoolExecutor):
    """The checks' threads, which `finish` waits for even through Ctrl-C: a thread still inside OpenCV when Python
    exits aborts the process ("terminate called without an active exception", SIGABRT), and a Thread.join that
    Ctrl-C interrupts lets Python 3.11 take that thread for ended (bpo-45274's handling)."""

    def __init__(self, workers: int):
        super().__init__(workers)
        self.running: set[Future] = set()  # submitted and not done

    def submit(self, fn, /, *args, **kwargs) -> Future:
        task = super().submit(fn, *args, **kwargs)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        return task

    def finish(self) -> None:
        """Drop what has not started, wait for what has (then the threads end), and only then let a Ctrl-C that
        came meanwhile through."""
        self.shutdown(wait=False, cancel_futures=True)
        stopped: BaseException | None = None
        while self.running:
            try:
                wait(list(self.running), timeout=POLL)
            except KeyboardInterrupt as exc:
                stopped = exc
        if stopped is not None:
            raise stopped


class _Checker:
    """Checks pairs on the pool's threads (OpenCV and the decoders let go of Python's lock), CHUNK at a time,
    BATCH a task, writing the features and verdicts every SAVE_EVERY seconds; tells `steps` how far it is."""

    def __init__(self, prover: _Prover, features: FeatureCache, pool: ThreadPoolExecutor, steps: Steps | None,
                 exact_only: bool):
        self.prover, self.features, self.pool, self.steps, self.exact_only = prover, features, pool, steps, exact_only
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.started: set[str] = set()  # a step is shown once it checks something: a re-run may check nothing
        self.saved_at = time.monotonic()
        self.stopping = False  # set by `find` on Ctrl-C or an error: the batches running stop early

    def proves(self, link: Link | None) -> bool:
        return link is not None and (not self.exact_only or link.kind != "photo")

    def expect(self, step: str, pairs: int) -> None:
        self.done.setdefault(step, 0)
        self.total[step] = self.total.get(step, 0) + pairs

    def _report(self, step: str | None) -> None:
        if self.steps and step in self.started:
            self.steps(step, self.done[step], self.total[step])

    def run(self, pairs: np.ndarray, scores: np.ndarray | None, step: str | None,
            joined: DisjointSet | None = None) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        """Check these pairs (int64 [p, 2], lower id first; their cosines float32 [p], or None) in `local_order`,
        each counted done in `step` (None: not counted). With `joined`: a pair whose two pictures are joined when
        its chunk starts is skipped (and counted done), and each proven pair joins its two. Returns (the proven
        pairs, the skipped ones). An interruption (Ctrl-C, an error) cancels the rest of its chunk; the chunks
        before it are saved."""
        proven: set[tuple[int, int]] = set()
        skipped: set[tuple[int, int]] = set()
        order = local_order(pairs)
        listed = pairs[order].tolist()
        cosines = scores[order].tolist() if scores is not None else [None] * len(listed)
        for start in range(0, len(listed), CHUNK):
            chunk, chunk_cosines = listed[start:start + CHUNK], cosines[start:start + CHUNK]
            if joined is not None:
                open_ = [not joined.connected(a, b) for a, b in chunk]
                skipped.update(tuple(pair) for pair, o in zip(chunk, open_, strict=True) if not o)
                chunk = [pair for pair, o in zip(chunk, open_, strict=True) if o]
                chunk_cosines = [c for c, o in zip(chunk_cosines, open_, strict=True) if o]
            if step is not None:
                self.done[step] += len(listed[start:start + CHUNK]) - len(chunk)
                if chunk:
                    self.started.add(step)
            self._report(step)
            ids = sorted({i for pair in chunk if self.prover.needs_features(*pair) for i in pair})
            self.features.prefetch([(i, self.prover.members[i].path) for i in ids], self.pool)
            # BATCH pairs a task: a task per pair cost more than a refused pair's check where most are cached.
            batches = [list(zip(chunk[at:at + BATCH], chunk_cosines[at:at + BATCH], strict=True))
                       for at in range(0, len(chunk), BATCH)]
            # On Ctrl-C or an error, `find` sets `stopping` and drops the tasks not started (`_Pool.finish`).
            tasks = [self.pool.submit(self._links, batch) for batch in batches]
            done = 0
            for batch, task in zip(batches, tasks, strict=True):
                for (pair, _), link in zip(batch, _result(task), strict=True):
                    done += 1
                    if self.proves(link):
                        proven.add((pair[0], pair[1]))
                        if joined is not None:
                            joined.merge(*pair)
                    if step is not None:
                        self.done[step] += 1
                    if done % PROGRESS_EVERY == 0:
                        self._report(step)
            if time.monotonic() - self.saved_at >= SAVE_EVERY:  # the work so far is kept, and the least recently
                self.features.save()                             # used features leave memory
                self.features.forget(keep=IN_MEMORY)
                self.saved_at = time.monotonic()
        if len(listed):
            self._report(step)
        return proven, skipped

    def _links(self, batch: list[tuple[list[int], float | None]]) -> list[Link | None]:
        """A task: one batch's pairs decided in turn; none more once the run is stopping."""
        links = []
        for pair, cosine in batch:
            if self.stopping:
                break
            links.append(self.prover.link(pair[0], pair[1], cosine, preloaded=True))
        return links

    def decide(self, pairs: list[tuple[int, int]]) -> None:
        """Decide these pairs ahead, on every core (step KEEPER): the prover then has their answers. Verdicts an
        earlier run cached are read here, on this thread (the database's)."""
        todo = []
        for pair in sorted({(min(a, b), max(a, b)) for a, b in pairs}):
            if pair in self.prover.known or not self.prover.needs_features(*pair):  # decided, or the same bytes
                continue
            evidence = self.features.verdict(*pair)
            if evidence is None:
                todo.append(pair)
            elif evidence.same:
                self.prover.verdicts[pair] = evidence
            else:  # it got as far as the check: neither the same bytes nor the same pixels
                self.prover.known[pair] = None
        if todo:
            self.expect(KEEPER, len(todo))
            self.run(np.array(todo, np.int64), None, KEEPER)


def _result(task: Future) -> list:
    """A task's result, waited for a little at a time: a signal (Ctrl-C) that another thread received is acted
    on within POLL seconds, not once the task is done."""
    while True:
        try:
            return task.result(timeout=POLL)
        except TimeoutError:
            continue


def _prove(pairs: np.ndarray, scores: np.ndarray, checker: _Checker,
           joined: DisjointSet) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """Check the candidate pairs (int64 [p, 2]; cosines float32 [p]) in rounds (see FOREST_ROUNDS): first those
    whose verdict is cached (no pixels needed), then FOREST_ROUNDS spanning forests, then the rest; a pair whose
    pictures are joined by then is skipped. Returns (proven pairs, skipped pairs)."""
    proven: set[tuple[int, int]] = set()
    skipped: set[tuple[int, int]] = set()
    left = np.ones(len(pairs), bool)
    cached = np.array([pair in checker.prover.verdicts for pair in map(tuple, pairs.tolist())], bool)
    checker.expect(CHECKING, int((~cached).sum()))  # the cached ones are not "checked" again
    for round_ in range(FOREST_ROUNDS + 2):
        if round_ == 0:
            chosen = left & cached
        elif round_ <= FOREST_ROUNDS:
            chosen = _forest(pairs, scores, left, joined)
        else:
            chosen = left.copy()
        found, passed = checker.run(pairs[chosen], scores[chosen], CHECKING if round_ else None, joined)
        proven |= found
        skipped |= passed
        left &= ~chosen
    return proven, skipped


def _forest(pairs: np.ndarray, scores: np.ndarray, left: np.ndarray, joined: DisjointSet) -> np.ndarray:
    """bool [p]: of the `left` pairs whose pictures are not joined, a spanning forest of the graph whose nodes
    are `joined`'s groups, of highest cosine: what Kruskal takes going best first (a pair where it joins two
    trees), computed by scipy.sparse.csgraph.minimum_spanning_tree with each pair's rank in that order as its
    weight (ranks are distinct, so that forest is the only minimal one)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    chosen = np.zeros(len(pairs), bool)
    at = np.flatnonzero(left)
    if not len(at):  # a re-run with every verdict cached: nothing left
        return chosen
    at = at[np.argsort(-scores[at], kind="stable")]  # best first
    group = _group_numbers(joined, pairs[at])
    apart = group[:, 0] != group[:, 1]
    at, group = at[apart], np.sort(group[apart], axis=1)
    if not len(at):
        return chosen
    # Between two groups only the best pair can be taken (after it, the two are one tree)
    size = int(group.max()) + 1
    _, first = np.unique(group[:, 0] * size + group[:, 1], return_index=True)
    first.sort()
    graph = coo_matrix((np.arange(1, len(first) + 1, dtype=np.float64), (group[first, 0], group[first, 1])),
                       shape=(size, size)).tocsr()
    taken = minimum_spanning_tree(graph).tocoo().data.astype(np.int64) - 1  # ranks of the pairs taken
    chosen[at[first[taken]]] = True
    return chosen


def _group_numbers(joined: DisjointSet, pairs: np.ndarray) -> np.ndarray:
    """int64 like `pairs` ([p, 2] ids): each picture's group in `joined` as a number (one per group)."""
    nodes, numbers = [], []
    for number, subset in enumerate(joined.subsets()):
        nodes.extend(subset)
        numbers.extend([number] * len(subset))
    ids = np.array(nodes, np.int64)
    order = np.argsort(ids)
    return np.array(numbers, np.int64)[order][np.searchsorted(ids[order], pairs)]


def local_order(pairs: np.ndarray) -> np.ndarray:
    """An order of the pairs (int64 [p, 2]) in which the pairs of one picture, and of its neighbours, come
    close together: pictures numbered by reverse Cuthill-McKee (scipy.sparse.csgraph) on the graph of the pairs,
    which keeps linked pictures' numbers near each other, then the pairs sorted by their pictures' numbers."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    if len(pairs) == 0:
        return np.arange(0)
    ids, at = np.unique(pairs, return_inverse=True)
    at = at.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(at), np.int8), (at[:, 0], at[:, 1])), shape=(len(ids), len(ids))).tocsr()
    rank = np.empty(len(ids), np.int64)
    rank[reverse_cuthill_mckee(graph, symmetric_mode=False)] = np.arange(len(ids))
    first, second = np.sort(rank[at], axis=1).T
    return np.lexsort((second, first))


def _clusters(edges: set[tuple[int, int]], skipped: set[tuple[int, int]], heads: dict[int, Member], prover,
              connected_components, coo_matrix, exact_only: bool, decide=None) -> list[Cluster]:
    """Components of the proven pairs; each member then proven against the one kept, or dropped, and the dropped
    ones clustered again among themselves. Candidate pairs that were `skipped` (proven pairs joined their
    pictures) are checked where that matters: between members dropped from one cluster, whose join may have
    gone through the ones that stayed. `decide(pairs)`, when given, decides pairs ahead on every core (the
    prover then has their answers)."""
    clusters: list[Cluster] = []
    edges = set(edges)
    pending = [{i for e in edges for i in e}]
    while pending:
        where = {node: n for n, nodes in enumerate(pending) for node in nodes}
        inside: list[list[tuple[int, int]]] = [[] for _ in pending]
        for a, b in edges:
            if a in where and where[a] == where.get(b):
                inside[where[a]].append((a, b))
        groups = []
        for nodes, proven in zip(pending, inside, strict=True):
            if proven:
                groups += _components(nodes, proven, heads, connected_components, coo_matrix)
        if decide:
            decide([(keeper.id, m.id) for chosen, keeper, _ in groups for m in chosen if m.id != keeper.id])
        pending = []
        for chosen, keeper, reason in groups:
            links: dict[int, Link] = {}
            dropped = set()
            for member in chosen:
                if member.id == keeper.id:
                    continue
                link = prover.link(keeper.id, member.id)
                if link is None or (exact_only and link.kind == "photo"):
                    dropped.add(member.id)
                else:
                    links[member.id] = link
            if links:
                kept = [m for m in chosen if m.id not in dropped]
                clusters.append(Cluster(sorted(kept, key=lambda m: m.path), keeper, reason, links))
            if len(dropped) > 1:
                pending.append(dropped)
        where = {node: n for n, nodes in enumerate(pending) for node in nodes}
        unchecked = [(a, b) for a, b in skipped if a in where and where[a] == where.get(b)]
        if unchecked and decide:
            decide(unchecked)
        for a, b in unchecked:
            link = prover.link(a, b)
            if link is not None and not (exact_only and link.kind == "photo"):
                edges.add((a, b))
        skipped = skipped - set(unchecked)
    return sorted(clusters, key=lambda c: (-len(c.members), c.keep.path))


def _components(nodes: set[int], edges: list[tuple[int, int]], heads: dict[int, Member], connected_components,
                coo_matrix) -> list[tuple[list[Member], Member, str]]:
    """The connected components (two members or more) of these proven pairs among `nodes`, each with the member
    to keep and why (keep.py)."""
    order = sorted(nodes)
    position = {n: p for p, n in enumerate(order)}
    rows = [position[a] for a, _ in edges]
    cols = [position[b] for _, b in edges]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(order), len(order)))
    count, labels = connected_components(graph, directed=False)
    found = []
    for label in range(count):
        group = [order[p] for p in np.flatnonzero(labels == label)]
        if len(group) < 2:
            continue
        chosen = [heads[i] for i in group]
        facts = {m.id: keep_rule.read_facts(m.path, m.width, m.height, m.mtime_ns) for m in chosen}
        for m in chosen:
            facts[m.id].symlink = os.path.islink(m.path)
            facts[m.id].linked = not facts[m.id].symlink and not movable(m)
        keeper, reason = keep_rule.choose(chosen, facts)
        found.append((chosen, keeper, reason))
    return found


def _below(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
