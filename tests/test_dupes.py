"""Duplicates: the same photograph only (edits proven by the pixels, other shots left alone), clusters checked
against the one kept, the keep rule, physical files reached twice, and safe moves that a kill cannot break."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lookalike import Index
from lookalike.dupes import quarantine, verify
from lookalike.dupes.find import Link, Member, _clusters
from lookalike.dupes.keep import Facts, choose, jpeg_quality, read_facts, taken_apart
from lookalike.fileio import sha256_file
from tests.conftest import CALTECH, run_cli

THUMBNAIL = ["--mean", "0.5", "--std", "0.5"]


def index_with(model, folder, index, *extra):
    result = run_cli("index", str(folder), *extra, "--index", str(index), "--model", str(model), *THUMBNAIL, "-q")
    assert result.returncode == 0, result.stderr


def scene(seed: int, size=(240, 180), subject_shift: int = 0, view_shift: int = 0) -> Image.Image:
    """A generated 'photo': textured background with small shapes, and a subject of large shapes. Another
    shot of the same scene: the subject moved by `subject_shift` pixels, the view by `view_shift`."""
    rng = np.random.default_rng(seed)
    w, h = size
    big_w, big_h = w + 40, h + 40
    yy, xx = np.mgrid[0:big_h, 0:big_w]
    base = np.stack([(xx * rng.uniform(0.3, 1.0) + yy * rng.uniform(-0.6, 0.6) + rng.uniform(0, 255)) % 256
                     for _ in range(3)], -1)
    noise = np.asarray(Image.fromarray(rng.integers(0, 255, (big_h // 4, big_w // 4), dtype=np.uint8))
                       .resize((big_w, big_h), Image.BICUBIC), np.float32)
    image = Image.fromarray(np.clip(base * 0.6 + noise[..., None] * 0.4, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y, r = int(rng.integers(0, big_w)), int(rng.integers(0, big_h)), int(rng.integers(3, 14))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x - r, y - r, x + r, y + r), fill=colour)
    for _ in range(4):
        x = int(rng.integers(40, big_w - 40)) + subject_shift
        y, r = int(rng.integers(40, big_h - 40)), int(rng.integers(18, 34))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.polygon([(x - r, y), (x, y - r), (x + r, y + r // 2), (x - r // 3, y + r)], fill=colour,
                     outline=(0, 0, 0))
        draw.line((x - r, y - r, x + r, y + r), fill=(255, 255, 255), width=2)
    return image.crop((20 + view_shift, 20, 20 + view_shift + w, 20 + h))


def set_mtime(path, seconds):
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


@pytest.fixture
def collection(tmp_path):
    """8 different photos (older), then: an exact copy, a PNG of the same pixels, a half-size copy, a
    captioned copy, a brighter copy re-saved at a higher quality, a crop, another shot of p6 (its subject
    moved), and a corrupt file."""
    root = tmp_path / "photos"
    root.mkdir()
    for n in range(8):
        scene(n).save(root / f"p{n}.jpg", quality=75)
        set_mtime(root / f"p{n}.jpg", 1_600_000_000)
    shutil.copy(root / "p0.jpg", root / "p0-copy.jpg")
    Image.open(root / "p1.jpg").save(root / "p1.png")
    original = Image.open(root / "p2.jpg")
    original.resize((120, 90)).save(root / "p2-small.jpg", quality=90)
    captioned = Image.open(root / "p3.jpg")
    ImageDraw.Draw(captioned).text((5, 5), "(c) 2024 lookalike", fill="white")
    captioned.save(root / "p3-caption.jpg", quality=90)
    ImageEnhance.Brightness(Image.open(root / "p4.jpg")).enhance(1.25).save(root / "p4-bright.jpg", quality=95)
    Image.open(root / "p5.jpg").crop((24, 18, 216, 162)).save(root / "p5-crop.jpg", quality=90)
    scene(6, subject_shift=14, view_shift=3).save(root / "p6-next-shot.jpg", quality=75)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def dupes_json(*args, cwd=None) -> dict:
    result = run_cli("dupes", *args, "--json", "-q", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def groups(found: dict) -> set[frozenset[str]]:
    return {frozenset(os.path.basename(p) for p in [c["keep"], *(d["path"] for d in c["duplicates"])])
            for c in found["clusters"]}


def files_of(folder) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


# -- what counts as the same photograph ------------------------------------------------------------------

def test_finds_edited_copies_and_not_another_shot(collection, thumbnail_model, tmp_path):
    index = tmp_path / "d.lookalike"
    index_with(thumbnail_model, collection, index)
    found = dupes_json(str(collection), "--index", str(index))
    assert groups(found) == {frozenset({"p0.jpg", "p0-copy.jpg"}), frozenset({"p1.jpg", "p1.png"}),
                             frozenset({"p2.jpg", "p2-small.jpg"}), frozenset({"p3.jpg", "p3-caption.jpg"}),
                             frozenset({"p4.jpg", "p4-bright.jpg"}), frozenset({"p5.jpg", "p5-crop.jpg"})}
    assert found["candidate_pairs_checked"] >= 6  # the other shot was a candidate, and the pixels said no
    links = {os.path.basename(d["path"]): d for c in found["clusters"] for d in c["duplicates"]}
    assert links["p0-copy.jpg"]["evidence"] == "same bytes" or links.get("p0.jpg", {}).get("evidence") == "same bytes"
    assert "same pixels" in {d["evidence"] for d in links.values()}
    crop = links["p5-crop.jpg"]
    assert crop["link"] == "photo" and crop["checks"]["inliers"] >= verify.MIN_INLIERS
    assert "matching points" in crop["evidence"] and "scaled" in crop["evidence"]
    # a half-size copy reads as one: "scaled ×1.00" was the thumbnails' scale (a tester's finding)
    assert "scaled ×2.00" in links["p2-small.jpg"]["evidence"], links["p2-small.jpg"]["evidence"]
    assert links["p2-small.jpg"]["checks"]["scale"] == pytest.approx(1.0, abs=0.05)  # thumbnails: kept as it was
    exact = dupes_json(str(collection), "--index", str(index), "--exact-only")
    assert groups(exact) == {frozenset({"p0.jpg", "p0-copy.jpg"}), frozenset({"p1.jpg", "p1.png"})}


def with_capture_time(image: Image.Image, path: Path, taken: str, fraction: str = "") -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = taken  # DateTimeOriginal
    if fraction:
        exif.get_ifd(0x8769)[0x9291] = fraction  # SubSecTimeOriginal
    image.save(path, quality=90, exif=exif)


def test_two_exposures_whose_pixels_agree_are_not_one_photograph_when_their_capture_times_differ(
        thumbnail_model, tmp_path):
    """A tripod shot twice (another exposure's noise, nothing moved) passes every pixel check; when both files
    say when the shutter fired and the moments differ, they are two shots. An edit keeps the time or drops it."""
    root = tmp_path / "shots"
    root.mkdir()
    original = scene(31, size=(320, 240))

    def exposure(seed: int) -> Image.Image:  # the same view, another exposure's noise
        noise = np.random.default_rng(seed).normal(0, 3, (240, 320, 3))
        return Image.fromarray(np.clip(np.asarray(original, np.float32) + noise, 0, 255).astype(np.uint8))

    again = exposure(0)
    with_capture_time(original, root / "a.jpg", "2024:05:01 10:00:00", "25")
    with_capture_time(again, root / "b-later.jpg", "2024:05:01 10:00:07")  # seven seconds later
    with_capture_time(exposure(1), root / "c-burst.jpg", "2024:05:01 10:00:00", "50")  # a burst's next frame
    with_capture_time(original.resize((240, 180)), root / "a-small.jpg", "2024:05:01 10:00:00", "25")
    original.crop((20, 20, 300, 220)).save(root / "a-crop.jpg", quality=90)  # an export that dropped EXIF
    index = tmp_path / "t.lookalike"
    index_with(thumbnail_model, root, index)
    found = dupes_json(str(root), "--index", str(index))
    assert groups(found) == {frozenset({"a.jpg", "a-small.jpg", "a-crop.jpg"})}
    assert verify.compare(features_of(original), features_of(again)).same  # the pixels alone said "the same"


def test_checks_are_cached_beside_the_index_and_a_damaged_cache_is_rebuilt(collection, thumbnail_model, tmp_path):
    import sqlite3

    index = tmp_path / "c.lookalike"
    index_with(thumbnail_model, collection, index)
    first = dupes_json(str(index))
    cache = tmp_path / "c.lookalike-cache" / "dupes.sqlite"
    with sqlite3.connect(cache) as db:
        features = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        verdicts = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert features >= 8 and verdicts >= 5  # every checked file and pair, for the next run
    assert dupes_json(str(index))["clusters"] == first["clusters"]  # the same answer from the cache
    cache.write_bytes(b"not a database at all" * 100)
    assert groups(dupes_json(str(index))) == groups(first)
    with sqlite3.connect(cache) as db:  # and the cache was made again
        assert db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == verdicts


def test_a_first_run_stopped_part_way_keeps_the_pairs_it_checked(collection, thumbnail_model, tmp_path,
                                                                   monkeypatch):
    """A first run at 100k checks pairs for hours: the features and verdicts so far are written as a chunk ends
    (every SAVE_EVERY seconds), so that Ctrl-C (or kill) loses seconds, not the run. One thread or two give the
    same answer."""
    import sqlite3

    from lookalike import Index
    from lookalike.dupes import find as finder

    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    monkeypatch.setattr(finder, "CHUNK", 2)
    monkeypatch.setattr(finder, "SAVE_EVERY", 0.0)  # written after every chunk (a real run: every 2 s)
    monkeypatch.setattr(finder, "IN_MEMORY", 3)  # features leave memory between chunks and are read back
    checked: list[tuple[int, int]] = []
    real_compare = verify.compare

    def counting(a, b):
        checked.append((id(a), id(b)))
        return real_compare(a, b)

    def stop_after_two_chunks(what, done, total):
        assert what == finder.CHECKING and total is not None and total > 4  # enough pairs to stop part-way
        if done >= 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(verify, "compare", counting)
    with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
        finder.find(opened, steps=stop_after_two_chunks, workers=2)
    assert len(checked) >= 2
    with sqlite3.connect(tmp_path / "k.lookalike-cache" / "dupes.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert kept >= 2  # the two chunks that ended before the stop are on disk
    checked.clear()
    with Index.open(index) as opened:
        two = finder.find(opened, workers=2)
    assert len(checked) <= two.candidates - kept  # the pairs checked before the stop were not checked again
    with Index.open(index) as opened:
        one = finder.find(opened, workers=1)
    assert [sorted(m.path for m in c.members) for c in one.clusters] == \
        [sorted(m.path for m in c.members) for c in two.clusters] and len(two.clusters) == 6


def test_ctrl_c_keeps_every_pair_checked_before_it(collection, thumbnail_model, tmp_path, monkeypatch):
    """A tester's finding: the cache is written every SAVE_EVERY seconds, and Ctrl-C threw away what was checked
    since (a short first run stopped kept nothing), though the message says the work was kept."""
    import sqlite3

    from lookalike import Index
    from lookalike.dupes import find as finder

    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    monkeypatch.setattr(finder, "SAVE_EVERY", 1e9)  # no timed write before the stop
    monkeypatch.setattr(finder, "PROGRESS_EVERY", 1)
    checked: list[int] = []
    real_compare = verify.compare
    monkeypatch.setattr(verify, "compare", lambda a, b: checked.append(1) or real_compare(a, b))

    def stop(what, done, total):
        if what == finder.CHECKING and done >= 4:
            raise KeyboardInterrupt

    with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
        finder.find(opened, steps=stop, workers=2)
    with sqlite3.connect(tmp_path / "k.lookalike-cache" / "dupes.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert len(checked) >= 2 and kept >= len(checked), (len(checked), kept)


def test_a_second_ctrl_c_during_the_write_on_the_way_out_does_not_lose_it(collection, thumbnail_model, tmp_path,
                                                                          monkeypatch):
    """A tester's finding: Ctrl-C twice, 0.3 s apart, kept no verdict: the second landed in the cache's write,
    which it rolled back. The write now finishes first, then the second Ctrl-C takes effect."""
    import signal
    import sqlite3
    import threading
    import time as clock

    from lookalike import Index
    from lookalike.dupes import cache as store
    from lookalike.dupes import find as finder

    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    monkeypatch.setattr(finder, "SAVE_EVERY", 1e9)
    monkeypatch.setattr(finder, "PROGRESS_EVERY", 1)
    checked: list[int] = []
    real_compare, real_save = verify.compare, store.FeatureCache.save
    monkeypatch.setattr(verify, "compare", lambda a, b: checked.append(1) or real_compare(a, b))
    stopped = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def stop(what, done, total):
        if what == finder.CHECKING and done >= 4:
            stopped.set()
            raise KeyboardInterrupt  # the first Ctrl-C

    def save_under_a_second_ctrl_c(self, keep_ids=None):
        if stopped.is_set():
            stopped.clear()
            signal.pthread_kill(main, signal.SIGINT)  # the second, as the write begins
            clock.sleep(0.05)
        return real_save(self, keep_ids)

    monkeypatch.setattr(store.FeatureCache, "save", save_under_a_second_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
            finder.find(opened, steps=stop, workers=2)
    finally:
        signal.signal(signal.SIGINT, before)
    with sqlite3.connect(tmp_path / "k.lookalike-cache" / "dupes.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert len(checked) >= 2 and kept >= len(checked), (len(checked), kept)


def test_ctrl_c_while_features_are_computed_keeps_those_computed(collection, thumbnail_model, tmp_path,
                                                                 monkeypatch):
    """Features were kept only up to the first one not yet computed, in order: Ctrl-C while one slow file was
    decoded threw away every other file's features computed meanwhile (a tester saw none kept)."""
    import signal
    import sqlite3
    import threading
    import time as clock

    from lookalike import Index
    from lookalike.dupes import cache as store
    from lookalike.dupes import find as finder

    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    real_compute = store.compute
    calls = {"n": 0}
    main = threading.main_thread().ident
    assert main is not None

    def slow_first(path):
        calls["n"] += 1
        if calls["n"] == 1:  # a large file: the others are computed on the other thread meanwhile
            threading.Timer(0.6, signal.pthread_kill, (main, signal.SIGINT)).start()  # Ctrl-C
            clock.sleep(1.2)
        return real_compute(path)

    monkeypatch.setattr(store, "compute", slow_first)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
            finder.find(opened, workers=2)
    finally:
        signal.signal(signal.SIGINT, before)
    with sqlite3.connect(tmp_path / "k.lookalike-cache" / "dupes.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    assert calls["n"] >= 3 and kept >= 2, (calls, kept)


def test_a_second_ctrl_c_while_a_check_runs_waits_for_it(thumbnail_model, tmp_path, monkeypatch):
    """A tester's finding: Ctrl-C sometimes ended in "terminate called without an active exception" (SIGABRT,
    exit 134): a Ctrl-C that interrupts the pool's Thread.join lets Python take the thread for ended, and it
    exits while the thread is still inside OpenCV. find() now returns only once no check runs."""
    import signal
    import threading
    import time as clock

    from lookalike import Index
    from lookalike.dupes import find as finder

    photos, index = tmp_path / "many", tmp_path / "c.lookalike"
    photos.mkdir()
    for n in range(6):
        scene(n).save(photos / f"s{n}.jpg", quality=80)
    index_with(thumbnail_model, photos, index)
    state = {"calls": 0, "inside": 0}

    def poke() -> None:  # Ctrl-C, and again while the first is being handled: real signals, to the main thread
        main = threading.main_thread().ident
        assert main is not None
        clock.sleep(0.2)
        signal.pthread_kill(main, signal.SIGINT)
        clock.sleep(0.3)
        signal.pthread_kill(main, signal.SIGINT)

    def slow(a, b):
        state["calls"] += 1
        state["inside"] += 1
        try:
            if state["calls"] == 1:
                threading.Thread(target=poke, daemon=True).start()
            clock.sleep(1.5)  # a long check, out of Python's lock as OpenCV's are
            return verify.Evidence(False, "not checked")
        finally:
            state["inside"] -= 1

    monkeypatch.setattr(verify, "compare", slow)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
            finder.find(opened, workers=1, floor=-1.0)
        assert state["calls"] >= 1 and state["inside"] == 0, state
    finally:
        signal.signal(signal.SIGINT, before)
        clock.sleep(1.6)  # a check still running (before the fix) ends before the next test


def test_ctrl_c_in_the_middle_of_a_chunk_stops_without_checking_the_rest_of_it(thumbnail_model, tmp_path,
                                                                                monkeypatch):
    """Ctrl-C waited for every pair left in the chunk (2,000 pairs, seconds to a minute) before it stopped."""
    import _thread
    import signal
    import time as clock

    from lookalike import Index
    from lookalike.dupes import find as finder

    photos, index = tmp_path / "many", tmp_path / "c.lookalike"
    photos.mkdir()
    for n in range(30):
        scene(n).save(photos / f"s{n}.jpg", quality=80)
    index_with(thumbnail_model, photos, index)
    calls: list[float] = []

    def interrupted(a, b):
        calls.append(clock.perf_counter())
        if len(calls) == 2:
            _thread.interrupt_main()  # as Ctrl-C does: KeyboardInterrupt in the main thread
        clock.sleep(0.2)
        return verify.Evidence(False, "not checked")

    with Index.open(index) as opened:
        pairs = finder.find(opened, workers=1, floor=-1.0).candidates  # every neighbour a candidate
    (tmp_path / "c.lookalike-cache" / "dupes.sqlite").unlink()  # what that run checked is to be checked again
    monkeypatch.setattr(verify, "compare", interrupted)
    # Ctrl-C as a terminal sends it, whatever handler an earlier test (a server's) left for SIGINT
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Index.open(index) as opened, pytest.raises(KeyboardInterrupt):
            finder.find(opened, workers=1, floor=-1.0)
    finally:
        signal.signal(signal.SIGINT, before)
    assert pairs >= 8 and len(calls) <= 3, (pairs, len(calls))  # the one running when it came, and no more


def test_pairs_are_checked_in_an_order_that_keeps_a_pictures_pairs_together():
    """A first run at 100k cannot hold every picture's features in memory; read back from disk, each costs
    about a millisecond. Pairs along a chain of pictures numbered at random come out chain-wise."""
    from lookalike.dupes.find import local_order

    rng = np.random.default_rng(3)
    ids = rng.permutation(10_000)[:500]
    chain = np.stack([ids[:-1], ids[1:]], axis=1)
    pairs = np.sort(chain, axis=1)[rng.permutation(len(chain))]
    order = local_order(pairs)
    assert sorted(order.tolist()) == list(range(len(pairs)))  # every pair once
    walked = pairs[order]
    shared = [len(set(walked[i]) & set(walked[i + 1])) for i in range(len(walked) - 1)]
    assert sum(shared) == len(walked) - 1  # each pair shares a picture with the next: a walk along the chain
    assert local_order(np.empty((0, 2), np.int64)).tolist() == []


def test_each_round_checks_the_spanning_forest_kruskal_takes_best_first():
    """The forest of a round (scipy's minimum spanning tree, ranks as weights) is the one Kruskal's loop takes,
    best cosine first, ties in the pairs' order: over groups already joined, pairs left out, repeated pairs."""
    from scipy.cluster.hierarchy import DisjointSet

    from lookalike.dupes.find import _forest

    def kruskal(pairs, scores, left, joined):
        chosen, trees = np.zeros(len(pairs), bool), DisjointSet()
        at = np.flatnonzero(left)
        for p in at[np.argsort(-scores[at], kind="stable")].tolist():
            a, b = joined[int(pairs[p, 0])], joined[int(pairs[p, 1])]
            if a != b:
                trees.add(a)
                trees.add(b)
                chosen[p] = trees.merge(a, b)
        return chosen

    rng = np.random.default_rng(5)
    for _ in range(30):
        nodes = rng.permutation(1000)[:40] * 7 + 3  # ids far from 0 .. n
        pairs = np.sort(nodes[rng.integers(0, 40, (120, 2))], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        scores = np.round(rng.random(len(pairs)), 1).astype(np.float32)  # ties
        left = rng.random(len(pairs)) < 0.8
        joined = DisjointSet(nodes.tolist())
        for a, b in pairs[rng.random(len(pairs)) < 0.1].tolist():
            joined.merge(a, b)
        expected = kruskal(pairs, scores, left, joined)
        assert expected.any()
        assert _forest(pairs, scores, left, joined).tolist() == expected.tolist()
    assert not _forest(pairs, scores, np.zeros(len(pairs), bool), joined).any()


def test_stored_features_come_back_the_same_and_a_damaged_row_is_computed_again(tmp_path):
    from lookalike.dupes import cache as store

    picture = tmp_path / "p.jpg"
    scene(4).save(picture, quality=85)
    features = store.compute(str(picture))
    again = store._decode(store._encode(features))
    for name in ("thumb", "detail", "points", "descriptors", "mirror_points", "mirror_descriptors"):
        assert np.array_equal(getattr(again, name), getattr(features, name)), name
        assert getattr(again, name).dtype == getattr(features, name).dtype, name
    assert again.resolution == pytest.approx(features.resolution)
    kept = store.FeatureCache(tmp_path / "cache")
    kept.get(7, str(picture))
    kept.save()
    kept.db.execute("UPDATE features SET data = substr(data, 1, 40)")  # cut short
    kept.db.commit()
    kept.close()
    reopened = store.FeatureCache(tmp_path / "cache")
    assert np.array_equal(reopened.get(7, str(picture)).thumb, features.thumb)  # computed again, not an error
    reopened.close()


def test_progress_moves_while_a_chunk_is_checked(collection, thumbnail_model, tmp_path, monkeypatch):
    """The bar stood at 0 for a whole chunk (2,000 pairs: half a minute), then jumped."""
    from lookalike import Index
    from lookalike.dupes import find as finder

    index = tmp_path / "p.lookalike"
    index_with(thumbnail_model, collection, index)
    monkeypatch.setattr(finder, "PROGRESS_EVERY", 1)
    heard: dict[str, list[int]] = {}
    with Index.open(index) as opened:
        total = finder.find(opened, floor=-1.0,
                            steps=lambda what, done, total: heard.setdefault(what, []).append(done)).candidates
    checking = heard[finder.CHECKING]
    assert total > 5 and len(set(checking)) > 3 and checking == sorted(checking)
    assert all(done == sorted(done) for done in heard.values())


def test_progress_counts_every_candidate_pair_and_a_re_run_with_nothing_new_shows_no_check(thumbnail_model,
                                                                                         tmp_path, monkeypatch):
    """A tester's findings: the bar's total dropped part-way (168, then 137: pairs joined already were taken off
    it), and a re-run with every verdict cached showed "checking candidate pairs 19/19", though it checked
    nothing. Now a pair joined already counts as done, and a step shows only once it checks something."""
    from lookalike.dupes import find as finder

    index = tmp_path / "p.lookalike"
    index_with(thumbnail_model, photo_with_copies(tmp_path / "copies"), index)
    monkeypatch.setattr(finder, "PROGRESS_EVERY", 1)
    monkeypatch.setattr(finder, "CHUNK", 3)
    heard: dict[str, list[tuple[int, int]]] = {}

    def listen(what, done, total):
        heard.setdefault(what, []).append((done, total))

    with Index.open(index) as opened:
        first = finder.find(opened, floor=-1.0, steps=listen)
    assert first.skipped > 0  # some pairs were joined already (else this test shows nothing)
    totals = {total for _, total in heard[finder.CHECKING]}
    assert totals == {first.candidates}, totals  # one total, all along: every candidate pair
    assert heard[finder.CHECKING][-1] == (first.candidates, first.candidates)
    heard.clear()
    checked: list[int] = []
    real_compare = verify.compare
    monkeypatch.setattr(verify, "compare", lambda a, b: checked.append(1) or real_compare(a, b))
    with Index.open(index) as opened:
        again = finder.find(opened, floor=-1.0, steps=listen)
    assert checked == [] and heard == {}, heard  # nothing to check, nothing shown (nor decoded: same pixels)
    assert first.checked_now == first.candidates - first.skipped and again.checked_now == 0
    assert "(0 by this run, the others before)" in again.pairs_text()  # it read "N checked" as if it checked them
    assert [sorted(m.path for m in c.members) for c in again.clusters] == \
        [sorted(m.path for m in c.members) for c in first.clusters]


def test_dupes_on_an_indexed_folder_shows_no_empty_indexing_bar(collection, thumbnail_model, tmp_path):
    """A tester's finding: `lookalike dupes FOLDER` printed an "indexing" bar with no count on every run,
    though nothing needed indexing."""
    index = tmp_path / "i.lookalike"
    index_with(thumbnail_model, collection, index)
    result = run_cli("dupes", str(collection), "--index", str(index))
    assert result.returncode == 0, result.stderr
    assert "indexing" not in result.stderr, result.stderr
    assert "clusters" in result.stdout


def test_the_summary_counts_one_cluster_in_the_singular(thumbnail_model, tmp_path):
    """It said "1 clusters" (a tester's finding)."""
    photos, index = photo_with_copies(tmp_path / "copies"), tmp_path / "one.lookalike"
    index_with(thumbnail_model, photos, index)
    result = run_cli("dupes", str(photos), "--index", str(index), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 cluster, 6 duplicates among 10 images"), result.stdout


def test_ctrl_c_says_what_it_left_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    """Typer turned Ctrl-C into a silent exit 130: the line meant for it never showed."""
    import sys

    from lookalike import cli
    from lookalike.index import Index as Opened

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Opened, "open", stopped)
    monkeypatch.setattr(sys, "argv", ["lookalike", "dupes", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 130
    assert "interrupted: run the same command again" in capsys.readouterr().err


def test_cached_verdicts_are_read_back_for_exactly_the_pairs_asked(tmp_path):
    """A re-run reads every verdict in one pass: refusals as a mask, acceptances with their evidence; pairs
    never checked are in neither (they must be checked)."""
    from lookalike.dupes.cache import FeatureCache

    cache = FeatureCache(tmp_path)
    cache.remember(3, 9, verify.Evidence(False, "too few matching points (2)"))
    cache.remember(1, 2, verify.Evidence(True, "", inliers=40, scale=0.5))
    cache.remember(2, 7, verify.Evidence(False, "the aligned pixels differ (another shot)"))
    cache.save()
    cache.close()
    again = FeatureCache(tmp_path)
    pairs = np.array([[1, 2], [2, 5], [2, 7], [3, 9], [4, 1 << 20]], np.int64)
    refused, accepted = again.verdicts(pairs)
    again.close()
    assert refused.tolist() == [False, False, True, True, False]
    assert list(accepted) == [(1, 2)] and accepted[(1, 2)].inliers == 40 and accepted[(1, 2)].scale == 0.5


def features_of(image: Image.Image) -> verify.Features:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return verify.features_of(np.asarray(Image.open(buffer).convert("RGB")))


@pytest.mark.parametrize("edit", [
    lambda im: im.resize((120, 90)),
    lambda im: ImageEnhance.Contrast(im).enhance(1.4),
    lambda im: ImageOps.mirror(im),
    lambda im: im.crop((24, 18, 216, 162)),
    lambda im: im.rotate(4, Image.BICUBIC),
    lambda im: ImageOps.grayscale(im).convert("RGB"),
], ids=["resized", "contrast", "mirrored", "cropped", "rotated", "greyscale"])
def test_verification_accepts_edits(edit):
    original = scene(11)
    evidence = verify.compare(features_of(original), features_of(edit(original)))
    assert evidence.same, evidence


def test_evidence_says_which_picture_lies_inside_the_other():
    """A crop lies wholly inside its original, which reaches beyond it: the evidence tells the two apart (the
    coverage of "the smaller" alone does not say which one that is)."""
    original = scene(11)
    crop = original.crop((24, 18, 216, 162))
    for a, b, inside in ((crop, original, "a"), (original, crop, "b")):
        evidence = verify.compare(features_of(a), features_of(b))
        assert evidence.same, evidence
        of_crop, of_original = ((evidence.coverage_of_a, evidence.coverage_of_b) if inside == "a" else
                                (evidence.coverage_of_b, evidence.coverage_of_a))
        assert of_crop >= 0.95 and of_original < 0.8, evidence
        assert evidence.coverage == max(of_crop, of_original)
        assert evidence.larger_coverage == min(of_crop, of_original)


def test_verification_refuses_another_shot_and_another_photo():
    original = features_of(scene(12))
    burst = verify.compare(original, features_of(scene(12, subject_shift=14, view_shift=3)))
    assert not burst.same and burst.inliers >= verify.MIN_INLIERS  # the background matched; the pixels did not
    assert "differ" in burst.reason or "overlap" in burst.reason
    other = verify.compare(original, features_of(scene(13)))
    assert not other.same
    far = verify.compare(original, features_of(scene(12).crop((0, 0, 90, 70))))  # 15 % of the picture
    assert not far.same
    zoomed = verify.compare(original, features_of(scene(12).crop((40, 30, 200, 150))))  # a 1.5x zoom: 44 %
    assert not zoomed.same and "overlap" in zoomed.reason, zoomed  # (holidays 114400/114401: 1.8x, ~30 %)


def turned(image: Image.Image, seed: int, parallax: float = 1.0) -> Image.Image:
    """Another shot from nearly the same spot: the camera turned a little (each corner moved up to 1.2 % of
    the frame) and a smooth parallax field of about `parallax` pixels at the checks' thumbnail size."""
    import cv2

    rng = np.random.default_rng(seed)
    rgb = np.asarray(image.convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    moved = (corners + rng.uniform(-0.012, 0.012, (4, 2)) * (w, h)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    source = np.einsum("ij,jhw->ihw", cv2.getPerspectiveTransform(moved, corners), np.stack([xx, yy, np.ones_like(xx)]))
    field = rng.normal(0, 1, (2, 4, 4)).astype(np.float32) * parallax * max(h, w) / verify.THUMB
    map_x = (source[0] / source[2]).astype(np.float32) + cv2.resize(field[0], (w, h), interpolation=cv2.INTER_CUBIC)
    map_y = (source[1] / source[2]).astype(np.float32) + cv2.resize(field[1], (w, h), interpolation=cv2.INTER_CUBIC)
    out = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def test_verification_refuses_a_reshot_whose_parts_moved_against_each_other():
    """holidays re-shots from nearly the same spot passed every check (6.2 % of the test half flagged): the
    matches barely bend and most cells agree. Once aligned, an edit's patches sit still; a re-shot's move."""
    original = scene(22, size=(320, 240))
    reshot = verify.compare(features_of(original), features_of(turned(original, 2)))
    assert not reshot.same and "parallax" in reshot.reason, reshot
    assert reshot.local_shift > verify.MAX_LOCAL_SHIFT
    assert reshot.cells_agreeing >= verify.MIN_CELLS_AGREEING  # what let it through before
    resized = verify.compare(features_of(original), features_of(original.resize((200, 150))))
    assert resized.same and resized.local_shift <= verify.MAX_LOCAL_SHIFT, resized


def walked_on(image: Image.Image, seed: int, by: int = 3) -> Image.Image:
    """Another shot from a tripod: the same view, but a part of the scene (a person, a boat: a sixth of the
    width by half the height) moved `by` pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image)
    out = pixels.copy()
    h, w = pixels.shape[:2]
    ph, pw = h // 2, w // 4
    y, x = int(rng.integers(by, h - ph - by)), int(rng.integers(by, w - pw - by))
    dy, dx = (int(v) or by for v in rng.integers(-by, by + 1, 2))
    out[y:y + ph, x:x + pw] = pixels[y + dy:y + dy + ph, x + dx:x + dx + pw]
    return Image.fromarray(out)


def test_verification_refuses_a_re_shot_where_a_part_of_the_scene_moved():
    """holidays 110700/110701 (a street, people moved) passed: the median patch sits still, and with most fine
    detail agreeing the shift check did not even run. The patches where something moved show it."""
    original = scene(22, size=(320, 240))
    for seed in range(3):
        shot = verify.compare(features_of(original), features_of(walked_on(original, seed)))
        assert shot.cells_agreeing >= verify.MIN_CELLS_AGREEING  # the coarse check passed it
        assert not shot.same and "a part of it moved" in shot.reason, shot
        assert shot.local_shift <= verify.MAX_LOCAL_SHIFT < verify.MAX_PART_SHIFT < shot.part_shift


def test_verification_accepts_a_bar_covering_part_of_the_picture():
    """The caption-bar edit (recall 0.49): the bar's strong edges dragged the whole overlap's gradient
    correlation under its threshold, though the rest of the picture agreed. Covered cells are left out of it."""
    original = scene(11)
    barred = original.copy()
    band = int(original.height * 0.18)
    draw = ImageDraw.Draw(barred)
    draw.rectangle((0, original.height - band, original.width, original.height), fill=(20, 20, 20))
    draw.text((6, original.height - band + 2), "Summer 2003, with love", fill=(240, 240, 200))
    evidence = verify.compare(features_of(original), features_of(barred))
    assert evidence.gradient_correlation < verify.MIN_GRADIENT_CORRELATION  # the whole overlap's, as before
    assert evidence.same, evidence


def reshot(image: Image.Image, bend: float, seed: int) -> Image.Image:
    """Another shot from a step aside: the view bends (a perspective warp moving the corners up to `bend`
    pixels) and the sensor noise is new."""
    import cv2

    pixels = np.asarray(image)
    h, w = pixels.shape[:2]
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = corners + np.float32([[1, 0.5], [-0.3, 0], [0, -0.2], [0.6, -0.4]]) * bend
    warped = cv2.warpPerspective(pixels, cv2.getPerspectiveTransform(corners, moved), (w, h),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    noise = np.random.default_rng(seed).normal(0, 6, warped.shape)
    return Image.fromarray(np.clip(warped + noise, 0, 255).astype(np.uint8))


def test_verification_refuses_a_re_shot_whose_view_bends_though_its_coarse_pixels_agree():
    """holidays_dev's close re-shots (104800/104801): aligned and blurred they agree, but the matched points
    bend (perspective) and the fine detail differs. The coarse check alone accepted this one."""
    original = scene(21)
    evidence = verify.compare(features_of(original), features_of(reshot(original, 10, seed=1)))
    assert evidence.cells_agreeing >= verify.MIN_CELLS_AGREEING  # what the coarse check saw
    assert not evidence.same and "another point" in evidence.reason, evidence


def studio_bike(body: int, hubs: int, parts: int) -> Image.Image:
    """A studio shot on black (Caltech's Ducatis): the same wheels where the stand holds them (smooth rings,
    `hubs` sharp marks on each: few points to match), and a body of `parts` dark shapes that `body` seeds."""
    import cv2

    wheels = Image.new("L", (320, 240), 0)
    draw = ImageDraw.Draw(wheels)
    for cx in (80, 240):
        draw.ellipse((cx - 50, 120, cx + 50, 220), outline=200, width=14)
        draw.ellipse((cx - 25, 145, cx + 25, 195), outline=120, width=6)
    smooth = cv2.GaussianBlur(np.asarray(wheels, np.float32), (0, 0), 10)
    image = Image.fromarray(smooth.astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for cx in (80, 240):
        for k in range(hubs):
            x, y = cx + 36 * np.cos(2 * np.pi * k / hubs), 170 + 36 * np.sin(2 * np.pi * k / hubs)
            draw.rectangle((x - 3, y - 3, x + 3, y + 3), fill=(255, 255, 255))
    rng = np.random.default_rng(body)
    for _ in range(parts):
        x, y, r = int(rng.integers(90, 230)), int(rng.integers(40, 150)), int(rng.integers(8, 25))
        draw.polygon([(x - r, y), (x, y - r), (x + r, y + r // 2), (x - r // 3, y + r)],
                     fill=tuple(int(v) for v in rng.integers(20, 70, 3)))
    return image


def test_verification_refuses_two_studio_shots_matched_on_a_few_points():
    """Caltech Motorbikes 0715/0738, two Ducatis on black: 16 points matched on the wheels at scale 1.00 and 0.65
    of cells agreed (the threshold), so they were "duplicates". Few matched points must come with more cells."""
    shot = verify.compare(features_of(studio_bike(1, 1, 3)), features_of(studio_bike(2, 1, 3)))
    assert shot.inliers < verify.FEW_INLIERS and shot.cells_agreeing >= verify.MIN_CELLS_AGREEING  # passed before
    assert shot.uncovered_correlation >= verify.MIN_GRADIENT_CORRELATION
    assert not shot.same and "few matching points" in shot.reason, shot
    sparse = studio_bike(1, 1, 1)  # a copy of a picture with little to match is still a copy
    resized = verify.compare(features_of(sparse), features_of(sparse.resize((200, 150))))
    assert resized.same and resized.inliers < verify.FEW_INLIERS, resized


# -- clusters --------------------------------------------------------------------------------------------

class Prover:
    def __init__(self, same: set[tuple[int, int]]):
        self.same = same

    def link(self, i, j, cosine=None):
        return Link("photo") if (min(i, j), max(i, j)) in self.same else None


def test_members_are_checked_against_the_one_kept_not_through_a_chain(tmp_path):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # 1 - 2 - 3 - ... - 40: each proven with its neighbour (a chain); only 2 is the same photo as 1.
    heads = {i: Member(i, str(tmp_path / f"{i:02d}.jpg"), 100 - i, 100, 1000, 0, None) for i in range(1, 41)}
    edges = {(i, i + 1) for i in range(1, 40)}
    clusters = _clusters(edges, set(), heads, Prover(edges | {(1, 2)}), connected_components, coo_matrix, False)
    biggest = max(len(c.members) for c in clusters)
    assert biggest == 2  # a chain never becomes one cluster: each member is proven against the one kept
    assert {frozenset(m.id for m in c.members) for c in clusters} >= {frozenset({1, 2})}


def test_members_dropped_by_the_one_kept_are_clustered_with_the_pairs_never_checked_between_them(tmp_path):
    """A and B are the same photo, and C is a copy of both and of K; K, the one kept, is neither A nor B. The
    pair A-B was never checked (C already joined them): once A and B leave K's cluster, it is checked, and
    they are one cluster of their own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k, a, b, c = 1, 2, 3, 4
    heads = {i: Member(i, str(tmp_path / f"{i}.jpg"), 100 - i, 100, 1000, 0, None) for i in (k, a, b, c)}
    proven = {(k, c), (a, c), (b, c)}
    clusters = _clusters(proven, {(a, b)}, heads, Prover(proven | {(a, b)}), connected_components, coo_matrix,
                         False)
    assert {frozenset(m.id for m in cl.members) for cl in clusters} == {frozenset({k, c}), frozenset({a, b})}


def photo_with_copies(photos: Path) -> Path:
    """original.jpg, its pixels as a PNG (copy5.png), five brighter or darker copies (copy0-4.jpg) and three
    other photos."""
    photos.mkdir()
    original = scene(11)
    original.save(photos / "original.jpg", quality=95)
    Image.open(photos / "original.jpg").save(photos / "copy5.png")
    for n, factor in enumerate((1.1, 1.2, 0.9, 0.8, 1.3)):
        ImageEnhance.Brightness(original).enhance(factor).save(photos / f"copy{n}.jpg", quality=60 + 5 * n)
    for n in range(3):
        scene(20 + n).save(photos / f"other{n}.jpg", quality=80)
    return photos


def test_pairs_a_proven_chain_already_joins_are_not_checked_and_the_clusters_are_the_same(thumbnail_model,
                                                                                        tmp_path, monkeypatch):
    """A photo and six copies are 21 candidate pairs, and every one was checked (a photo's check is the
    costly one: 60-70 ms); six of them prove the cluster, and each copy is then checked against the one
    kept anyway. A pair whose two pictures are already joined is skipped; the answer is the same."""
    from lookalike.dupes import find as finder

    photos, index = photo_with_copies(tmp_path / "copies"), tmp_path / "c.lookalike"
    index_with(thumbnail_model, photos, index)
    checked: list[int] = []
    real_compare = verify.compare

    def counting(a, b):
        checked.append(1)
        return real_compare(a, b)

    monkeypatch.setattr(verify, "compare", counting)
    with Index.open(index) as opened:
        found = finder.find(opened, workers=1, floor=-1.0)  # every neighbour a candidate
    assert [sorted(os.path.basename(m.path) for m in c.members) for c in found.clusters] == \
        [["copy0.jpg", "copy1.jpg", "copy2.jpg", "copy3.jpg", "copy4.jpg", "copy5.png", "original.jpg"]]
    copies_pairs = 21
    assert found.candidates >= copies_pairs and found.skipped >= copies_pairs - 6 - 6, found
    assert len(checked) <= found.candidates - found.skipped + 6  # skipped: not checked (+6: copies vs the one kept)


# -- the keep rule ---------------------------------------------------------------------------------------

def member(i):
    return Member(i, f"/p/{i}.jpg", 0, 0, 0, 0, None)


def test_the_keep_rule_prefers_the_camera_original():
    one, two = member(1), member(2)
    keep, reason = choose([one, two], {1: Facts(pixels=100, format="JPEG", quality=75, mtime_ns=5),
                                       2: Facts(camera="Canon EOS", pixels=50, format="JPEG", quality=70,
                                                mtime_ns=9)})
    assert keep is two and reason.startswith("camera original (Canon EOS)")
    keep, reason = choose([one, two], {1: Facts(camera="X", edited_by="GIMP 2.10", pixels=100, mtime_ns=1),
                                       2: Facts(camera="X", pixels=100, mtime_ns=9)})
    assert keep is two and "GIMP" in reason
    keep, reason = choose([one, two], {1: Facts(pixels=100), 2: Facts(pixels=400)})
    assert keep is two and reason.startswith("most pixels")


def test_a_linked_crop_is_not_kept_over_its_larger_original_but_a_link_wins_among_equals():
    """The bug (Caltech's Faces_easy, linked in: crops of Faces photos): the linked crop was kept and the larger
    original named the duplicate to move. A link only decides between otherwise equal copies."""
    original, linked_crop = member(1), member(2)
    keep, _ = choose([original, linked_crop], {1: Facts(pixels=400, format="JPEG", quality=80, mtime_ns=5),
                                               2: Facts(pixels=100, format="JPEG", quality=80, mtime_ns=1,
                                                        linked=True)})
    assert keep is original
    keep, reason = choose([original, linked_crop], {1: Facts(pixels=400, format="JPEG", mtime_ns=1),
                                                    2: Facts(pixels=400, format="JPEG", mtime_ns=5, linked=True)})
    assert keep is linked_crop and "link" in reason


def test_a_resaved_edit_at_higher_quality_does_not_beat_its_older_original(tmp_path):
    """The bug: 'largest file at the same resolution' kept the edited copy re-saved at q90."""
    original = tmp_path / "a-original.jpg"
    scene(3).save(original, quality=75)
    set_mtime(original, 1_500_000_000)
    edited = tmp_path / "b-bright.jpg"
    ImageEnhance.Brightness(Image.open(original)).enhance(1.3).save(edited, quality=92)
    assert edited.stat().st_size > original.stat().st_size
    members = [Member(1, str(original), 240, 180, 0, original.stat().st_mtime_ns, None),
               Member(2, str(edited), 240, 180, 0, edited.stat().st_mtime_ns, None)]
    facts = {m.id: read_facts(m.path, m.width, m.height, m.mtime_ns) for m in members}
    keep, reason = choose(members, facts)
    assert keep.id == 1 and reason == "the oldest file"


def test_a_png_or_webp_re_encode_does_not_beat_the_jpeg_and_a_q30_copy_loses(tmp_path):
    """The bug: a transparent PNG re-encode was kept over the JPEG original."""
    original = tmp_path / "z-original.jpg"
    scene(4).save(original, quality=80)
    set_mtime(original, 1_700_000_000)  # newer than the copies: the format decides, not the age
    png = tmp_path / "a-copy.png"
    Image.open(original).convert("RGBA").save(png)
    webp = tmp_path / "b-copy.webp"
    Image.open(original).save(webp, lossless=True)
    low = tmp_path / "c-copy.jpg"
    Image.open(original).save(low, quality=30)
    for path in (png, webp, low):
        set_mtime(path, 1_600_000_000)
    members = [Member(i, str(p), 240, 180, 0, p.stat().st_mtime_ns, None)
               for i, p in enumerate((original, png, webp, low), 1)]
    facts = {m.id: read_facts(m.path, m.width, m.height, m.mtime_ns) for m in members}
    assert facts[4].quality is not None and facts[4].quality < 40 and 75 <= facts[1].quality <= 85
    keep, reason = choose(members, facts)
    assert keep.id == 1 and "the JPEG" in reason


def test_jpeg_quality_estimate():
    for quality in (30, 60, 75, 95):
        buffer = io.BytesIO()
        scene(1).save(buffer, "JPEG", quality=quality)
        assert abs(jpeg_quality(Image.open(buffer).quantization) - quality) <= 2


def test_camera_exif_is_read(tmp_path):
    path = tmp_path / "camera.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "NIKON", "D750"
    scene(2).save(path, quality=90, exif=exif)
    facts = read_facts(str(path), 240, 180, 0)
    assert facts.camera == "NIKON D750" and facts.edited_by == "" and facts.format == "JPEG"


# -- one physical file, two paths ------------------------------------------------------------------------

def test_a_symlink_and_its_target_are_one_file_and_the_real_file_is_never_moved(tmp_path, thumbnail_model):
    """The bug: aa_link.jpg -> zz_real.jpg was 'kept' and the real file moved."""
    root = tmp_path / "photos"
    root.mkdir()
    scene(5).save(root / "zz_real.jpg", quality=90)
    os.symlink(root / "zz_real.jpg", root / "aa_link.jpg")
    scene(6).save(root / "other.jpg", quality=90)
    index = tmp_path / "s.lookalike"
    index_with(thumbnail_model, root, index)
    assert dupes_json(str(index))["clusters"] == []  # never a duplicate of itself
    shutil.copy(root / "zz_real.jpg", root / "mm_copy.jpg")  # a real second copy
    set_mtime(root / "zz_real.jpg", 1_500_000_000)
    index_with(thumbnail_model, root, index)
    result = run_cli("dupes", str(index), "--move-to", str(tmp_path / "q"), "-q")
    assert result.returncode == 0, result.stderr
    assert (root / "zz_real.jpg").is_file() and (root / "aa_link.jpg").resolve() == (root / "zz_real.jpg")
    assert not (root / "mm_copy.jpg").exists()  # the real second copy went to quarantine
    hard = tmp_path / "hard"
    hard.mkdir()
    scene(7).save(hard / "a.jpg")
    os.link(hard / "a.jpg", hard / "b.jpg")
    index_with(thumbnail_model, hard, tmp_path / "h.lookalike")
    result = run_cli("dupes", str(tmp_path / "h.lookalike"), "--move-to", str(tmp_path / "q2"), "-q")
    assert result.returncode == 0 and (hard / "a.jpg").is_file() and (hard / "b.jpg").is_file()


def test_a_link_to_a_file_outside_the_folder_is_not_kept_over_the_real_copy_inside(tmp_path, thumbnail_model):
    """A tester's finding: photos/link.jpg -> a file outside the folder, beside photos/p07.jpg with the same
    bytes: the link was kept ("other paths lead to this file") and the folder's only real copy moved aside."""
    root, outside = tmp_path / "photos", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    scene(5).save(outside / "p07.jpg", quality=90)
    shutil.copy2(outside / "p07.jpg", root / "p07.jpg")
    os.symlink(outside / "p07.jpg", root / "a_link_to_p07.jpg")  # sorts first: the tie-break by path
    scene(6).save(root / "other.jpg", quality=90)
    index = tmp_path / "o.lookalike"
    index_with(thumbnail_model, root, index)
    found = dupes_json(str(index))
    assert [Path(c["keep"]).name for c in found["clusters"]] == ["p07.jpg"], found["clusters"]
    assert "symbolic link" in found["clusters"][0]["reason"]
    result = run_cli("dupes", str(index), "--move-to", str(tmp_path / "q"), "-q")
    assert result.returncode == 0, result.stderr
    assert (root / "p07.jpg").is_file() and (root / "a_link_to_p07.jpg").is_symlink()  # nothing moved


def test_a_held_link_says_why_and_a_missing_target_is_named(tmp_path, thumbnail_model):
    """The bugs: a symbolic link left in place printed "other paths lead to it ()", and `dupes NO_SUCH_DIR`
    answered "no index at NO_SUCH_DIR: build one with ..." for a mistyped folder."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    scene(5).save(root / "a.jpg", quality=90)
    shutil.copy(root / "a.jpg", root / "b.jpg")
    Image.open(root / "a.jpg").resize((120, 90)).save(outside / "small.jpg", quality=90)
    os.symlink(outside / "small.jpg", root / "c_link.jpg")
    index = tmp_path / "l.lookalike"
    index_with(thumbnail_model, root, index)
    result = run_cli("dupes", str(index), "--move-to", str(tmp_path / "q"), "--dry-run", "-q")
    assert result.returncode == 0, result.stderr
    assert "c_link.jpg: a symbolic link" in result.stdout and "()" not in result.stdout
    missing = run_cli("dupes", str(tmp_path / "no-such-folder"))
    assert missing.returncode == 3 and "does not exist: give a folder of photos" in missing.stderr
    # A tester's finding: an image named as the folder read "is not a lookalike index (choose another --index
    # path)", though no --index was given
    photo = run_cli("dupes", str(root / "a.jpg"), "--index", str(tmp_path / "new.lookalike"))
    assert photo.returncode == 3 and "is neither a folder nor an index" in photo.stderr, photo.stderr
    assert "--index" not in photo.stderr and not (tmp_path / "new.lookalike").exists()


def test_a_folder_indexed_through_two_paths_is_not_emptied(collection, thumbnail_model, tmp_path):
    os.symlink(collection, tmp_path / "same-photos")
    index = tmp_path / "two.lookalike"
    index_with(thumbnail_model, collection, index)
    index_with(thumbnail_model, tmp_path / "same-photos", index)
    before = files_of(collection)
    found = dupes_json(str(index))
    assert len(found["clusters"]) == 6  # each file once: the aliases are not duplicates
    assert all(len(c["duplicates"]) == 1 for c in found["clusters"])
    result = run_cli("dupes", str(index), "--move-to", str(tmp_path / "q"), "-q")
    assert result.returncode == 0, result.stderr
    after = files_of(collection)
    assert len(after) == len(before) - 6  # one file of each cluster moved, nothing else
    assert {"p0.jpg", "p2.jpg", "p6.jpg", "p6-next-shot.jpg"} <= {p.name for p in after}


# -- safe moves ------------------------------------------------------------------------------------------

def test_move_inside_an_indexed_folder_is_refused(collection, thumbnail_model, tmp_path):
    index = tmp_path / "i.lookalike"
    index_with(thumbnail_model, collection, index)
    before = files_of(collection)
    for inside in (collection / "quarantine", collection, tmp_path):
        result = run_cli("dupes", str(collection), "--index", str(index), "--move-to", str(inside), "-q")
        assert result.returncode == 2 and "choose a folder outside it" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert files_of(collection) == before and not (collection / "quarantine").exists()


def test_a_quarantine_that_is_a_file_or_cannot_be_made_is_refused_before_anything_moves(collection, thumbnail_model,
                                                                                          tmp_path):
    """--move-to onto an existing file, or somewhere no folder can be made, said "[Errno 17] File exists" or
    "[Errno 2] No such file or directory" after the scan; now one line saying what to do, and nothing moved."""
    index = tmp_path / "f.lookalike"
    index_with(thumbnail_model, collection, index)
    before = files_of(collection)
    (tmp_path / "a-file").write_text("not a folder")
    for place, said in ((tmp_path / "a-file", "is a file, not a folder"),
                        (tmp_path / "a-file" / "below", "cannot be made or written to"),
                        (Path("/proc/lookalike-quarantine"), "cannot be made or written to")):  # even as root
        result = run_cli("dupes", str(index), "--move-to", str(place), "-q")
        assert result.returncode == 2 and said in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Errno" not in result.stderr
    assert files_of(collection) == before


def test_an_undo_waits_while_another_move_or_undo_holds_the_quarantine(collection, thumbnail_model, tmp_path):
    """Two undos of one manifest at once: the second said "[Errno 2] No such file or directory" about a file
    the first had just put back. Undo now takes the quarantine's lock, as moves do."""
    import subprocess
    import sys

    from filelock import FileLock

    index = tmp_path / "w.lookalike"
    index_with(thumbnail_model, collection, index)
    folder = tmp_path / "quarantine"
    manifest = move_exact(collection, index, folder)
    with FileLock(folder / quarantine.LOCK):
        waiting = subprocess.Popen([sys.executable, "-m", "lookalike", "dupes", "--undo", str(manifest)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=5)  # it waits for the lock rather than moving files under another run
        moved = [entry["from"] for entry in json.loads(manifest.read_text())["moves"]]
        assert moved and not any(os.path.exists(path) for path in moved)  # nothing came back meanwhile
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "moved back" in out, err
    again = run_cli("dupes", "--undo", str(manifest))
    assert again.returncode == 0 and "Errno" not in again.stderr


def test_undo_of_a_manifest_that_is_not_there_says_so(tmp_path):
    result = run_cli("dupes", "--undo", str(tmp_path / "manifest-gone.json"))
    assert result.returncode == 3 and "does not exist" in result.stderr and "not a lookalike" not in result.stderr


def test_dry_run_without_a_move_is_refused_not_ignored(collection, thumbnail_model, tmp_path):
    index = tmp_path / "r.lookalike"
    index_with(thumbnail_model, collection, index)
    result = run_cli("dupes", str(index), "--dry-run", "-q")
    assert result.returncode == 2 and "--dry-run goes with --move-to or --undo" in result.stderr


def test_dry_run_lists_and_moves_nothing(collection, thumbnail_model, tmp_path):
    index = tmp_path / "n.lookalike"
    index_with(thumbnail_model, collection, index)
    before = files_of(collection)
    result = run_cli("dupes", str(index), "--move-to", str(tmp_path / "q"), "--dry-run", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\nwould move") == 6 and "6 files would move" in result.stdout
    assert files_of(collection) == before and not (tmp_path / "q").exists()


def test_move_then_undo_restores_the_folder_and_the_index_without_re_embedding(collection, thumbnail_model,
                                                                                tmp_path):
    index = tmp_path / "m.lookalike"
    index_with(thumbnail_model, collection, index)
    with Index.open(index) as idx:
        before_vectors = {p: idx.store.vector_of(p).tobytes() for p, *_ in idx.details().values()
                          if idx.store.vector_of(p) is not None}
    before = files_of(collection)
    quarantine_folder = tmp_path / "quarantine"
    result = run_cli("dupes", str(collection), "--index", str(index), "--move-to", str(quarantine_folder), "-q")
    assert result.returncode == 0, result.stderr
    assert "6 duplicates moved" in result.stdout
    manifest = next(quarantine_folder.glob("manifest-*.json"))
    moved = json.loads(manifest.read_text())["moves"]
    assert len(moved) == 6 and all(m["done"] for m in moved)
    assert all(not os.path.exists(m["from"]) and os.path.exists(m["to"]) for m in moved)
    assert all(m["to"].startswith(str(quarantine_folder / "photos")) for m in moved)  # relative paths kept
    with Index.open(index) as idx:
        indexed = {p for p, *_ in idx.details().values()}
    assert not indexed & {m["from"] for m in moved}  # moved files left the index
    assert dupes_json(str(collection), "--index", str(index))["clusters"] == []
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 0 and "6 files moved back" in result.stdout
    with Index.open(index) as idx:
        after_vectors = {p: idx.store.vector_of(p).tobytes() for p, *_ in idx.details().values()
                         if idx.store.vector_of(p) is not None}
    assert after_vectors == before_vectors  # back in the index with the vectors they left with
    again = run_cli("index", str(collection), "--index", str(index), "-q")
    assert again.returncode == 0 and again.stdout.startswith("0 indexed")  # nothing needed embedding again
    shutil.rmtree(quarantine_folder)
    assert files_of(collection) == before


def test_undo_refuses_to_overwrite_and_reports_it(collection, thumbnail_model, tmp_path):
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    folder = tmp_path / "q"
    run_cli("dupes", str(collection), "--index", str(index), "--exact-only", "--move-to", str(folder), "-q")
    manifest = next(folder.glob("manifest-*.json"))
    first = json.loads(manifest.read_text())["moves"][0]
    with open(first["from"], "wb") as handle:
        handle.write(b"a new file took its place")
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 1 and "something else is in its place now" in result.stdout
    with open(first["from"], "rb") as handle:
        assert handle.read() == b"a new file took its place"  # not overwritten
    assert os.path.exists(first["to"])  # and the quarantined copy is still there


def test_a_kill_during_undo_is_finished_by_running_it_again(collection, thumbnail_model, tmp_path):
    """The bug: kill -9 during an --undo across filesystems left a truncated file that --undo then refused
    to finish. Here the states a kill leaves are made by hand: a partial copy beside the original place,
    and both copies complete (killed before the quarantined one was removed)."""
    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    folder = tmp_path / "q"
    result = run_cli("dupes", str(collection), "--index", str(index), "--exact-only", "--move-to", str(folder), "-q")
    assert result.returncode == 0, result.stderr
    manifest = next(folder.glob("manifest-*.json"))
    first, second = json.loads(manifest.read_text())["moves"][:2]
    data = Path(first["to"]).read_bytes()
    with open(quarantine._partial(Path(first["from"])), "wb") as handle:
        handle.write(data[: len(data) // 2])  # killed half way through copying back
    shutil.copy2(second["to"], second["from"])  # killed after the copy landed, before the source went
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    for entry in (first, second):
        assert sha256_file(Path(entry["from"])) == entry["sha256"]
        assert not os.path.exists(entry["to"])
    assert not list(collection.rglob("*" + quarantine.PARTIAL))
    assert run_cli("dupes", "--undo", str(manifest)).returncode == 0  # and again: nothing left to do


def test_a_cross_filesystem_move_killed_before_the_source_went_is_finished(tmp_path, monkeypatch):
    source = tmp_path / "a" / "photo.jpg"
    source.parent.mkdir()
    scene(8).save(source)
    digest = sha256_file(source)
    target = tmp_path / "q" / "a" / "photo.jpg"
    monkeypatch.setattr(quarantine, "_same_filesystem", lambda a, b: False)
    real_rename = os.rename

    def killed(src, dst):
        raise SystemExit("killed")  # -9 right before the checked copy is renamed into place

    monkeypatch.setattr(quarantine.os, "rename", killed)
    with pytest.raises(SystemExit):
        quarantine.transfer(source, target, digest)
    assert source.is_file() and not target.exists() and quarantine._partial(target).is_file()
    monkeypatch.setattr(quarantine.os, "rename", real_rename)
    assert quarantine.resume(source, target, digest) is None
    assert sha256_file(target) == digest and not source.exists()
    assert not quarantine._partial(target).exists()


def test_a_file_name_near_the_longest_allowed_moves_across_filesystems_and_back(tmp_path, monkeypatch):
    """The bug: the temporary name beside the target (".NAME.lookalike-partial") went over 255 bytes for a
    name of 237 or more (80 CJK characters are 240): the move across filesystems stopped, and --undo, even of
    a plain rename, stopped at that file on every run."""
    name = "写真" * 39 + ".jpg"  # 238 bytes
    source = tmp_path / "a" / name
    source.parent.mkdir()
    scene(8).save(source)
    digest = sha256_file(source)
    target = tmp_path / "q" / "a" / name
    monkeypatch.setattr(quarantine, "_same_filesystem", lambda a, b: False)
    quarantine.transfer(source, target, digest)
    assert sha256_file(target) == digest and not source.exists()
    assert quarantine.resume(target, source, digest) is None  # and back
    assert sha256_file(source) == digest and not target.exists()
    assert len(os.fsencode(quarantine._partial(target).name)) <= 255


def move_exact(collection, index, folder, cwd=None):
    result = run_cli("dupes", str(collection), "--index", str(index), "--exact-only", "--move-to", str(folder), "-q",
                     cwd=cwd)
    assert result.returncode == 0, result.stderr
    return next(Path(folder).glob("manifest-*.json"))


def indexed_paths(index) -> set[str]:
    with Index.open(index) as idx:
        return {p for p, *_ in idx.details().values()}


def test_undo_dry_run_moves_nothing_and_undo_takes_no_folder(collection, thumbnail_model, tmp_path):
    """The bug: `--undo M --dry-run` moved the files back (--dry-run was ignored), and `--undo M FOLDER
    --move-to X` ignored the folder and --move-to without a word."""
    index = tmp_path / "d.lookalike"
    index_with(thumbnail_model, collection, index)
    manifest = move_exact(collection, index, tmp_path / "q")
    moved = json.loads(manifest.read_text())["moves"]
    result = run_cli("dupes", "--undo", str(manifest), "--dry-run")
    assert result.returncode == 0 and f"{len(moved)} files would move back" in result.stdout
    assert all(os.path.exists(m["to"]) and not os.path.exists(m["from"]) for m in moved)
    mixed = run_cli("dupes", "--undo", str(manifest), str(collection))
    assert mixed.returncode == 2 and "--undo MANIFEST takes no folder" in mixed.stderr
    assert all(os.path.exists(m["to"]) for m in moved)


def test_undo_from_another_folder_puts_the_files_back_into_the_index_they_left(collection, thumbnail_model,
                                                                                tmp_path):
    """The bug: the manifest named the index as given ("m.lookalike", relative), so an undo run from another
    folder wrote the files into whatever index of that name was there."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    index_with(thumbnail_model, collection, work / "m.lookalike")
    index_with(thumbnail_model, collection, elsewhere / "m.lookalike")  # another index of the same name
    before = indexed_paths(work / "m.lookalike")
    manifest = move_exact(collection, "m.lookalike", tmp_path / "q", cwd=work)
    result = run_cli("dupes", "--undo", str(manifest), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert indexed_paths(work / "m.lookalike") == before


def test_an_undo_killed_before_the_index_was_written_is_finished_by_running_it_again(collection, thumbnail_model,
                                                                                      tmp_path):
    """The bug: files an interrupted undo had put back were marked restored, and the rerun skipped them, so
    they never came back into the index."""
    index = tmp_path / "k.lookalike"
    index_with(thumbnail_model, collection, index)
    before = indexed_paths(index)
    manifest = move_exact(collection, index, tmp_path / "q")
    quarantine.undo(manifest)  # the files are back: killed before the index was written
    assert indexed_paths(index) != before
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 0 and "0 files moved back" in result.stdout
    assert indexed_paths(index) == before


def sealer(index):
    """The seal of `index` (Index.seal), as `lookalike dupes --move-to` signs a manifest's entries with it."""
    def seal(payload: bytes) -> str:
        with Index.open(index) as idx:
            return idx.seal(payload)
    return seal


def test_a_move_killed_half_way_is_finished_and_undone_by_what_its_summary_says(collection, thumbnail_model,
                                                                                 tmp_path, monkeypatch):
    """The bugs: the rerun after a killed move printed only its own manifest to undo (the finished one's files
    stayed in quarantine), said "not moved: gone" of files it had just moved, and undoing the killed manifest
    counted a file that never left as moved back and left its half copy in the quarantine."""
    index = tmp_path / "h.lookalike"
    index_with(thumbnail_model, collection, index)
    before = files_of(collection)
    folder = tmp_path / "q"
    found = dupes_json(str(index), "--exact-only")
    paths = [d["path"] for c in found["clusters"] for d in c["duplicates"]]
    assert len(paths) == 2
    real_transfer = quarantine.transfer
    calls = []

    def killed_on_the_second(source, target, digest):
        calls.append(source)
        if len(calls) == 2:
            quarantine._partial(target).parent.mkdir(parents=True, exist_ok=True)
            quarantine._partial(target).write_bytes(b"half a copy")
            raise SystemExit("killed")
        real_transfer(source, target, digest)

    monkeypatch.setattr(quarantine, "transfer", killed_on_the_second)
    with pytest.raises(SystemExit):
        quarantine.move([(p, None, None) for p in paths], folder, [str(collection)], str(index), seal=sealer(index))
    killed = next(folder.glob("manifest-*.json"))
    undone = run_cli("dupes", "--undo", str(killed))  # undo the killed move straight away
    assert undone.returncode == 0 and "1 files moved back" in undone.stdout, undone.stdout
    assert not list(folder.rglob("*" + quarantine.PARTIAL)) and files_of(collection) == before
    monkeypatch.setattr(quarantine, "transfer", real_transfer)
    with pytest.raises(SystemExit):
        monkeypatch.setattr(quarantine, "transfer", killed_on_the_second)
        calls.clear()
        quarantine.move([(p, None, None) for p in paths], folder, [str(collection)], str(index), seal=sealer(index))
    monkeypatch.setattr(quarantine, "transfer", real_transfer)
    second = {str(m) for m in folder.glob("manifest-*.json")} - {str(killed)}
    result = run_cli("dupes", str(index), "--exact-only", "--move-to", str(folder), "-q")
    assert result.returncode == 0, result.stderr
    assert "gone" not in result.stdout, result.stdout
    assert "2 duplicates moved to" in result.stdout and "(2 of them by a run that was stopped)" in result.stdout, \
        result.stdout
    for manifest in second:
        assert f"--undo {manifest}" in result.stdout
    for manifest in folder.glob("manifest-*.json"):
        assert run_cli("dupes", "--undo", str(manifest)).returncode == 0
    assert files_of(collection) == before


def test_a_move_with_nothing_left_to_move_points_at_no_empty_manifest(tmp_path, thumbnail_model):
    """The bugs: re-running a finished move said "0 duplicates moved; undo with MANIFEST" naming a new, empty
    manifest (each run left one more), and "not moved" lines printed a newline in a name raw."""
    index = indexed_copies(tmp_path, thumbnail_model, "a.jpg", "two\nlines.jpg")
    folder = tmp_path / "q"
    first = run_cli("dupes", str(index), "--move-to", str(folder), "-q")
    assert first.returncode == 0 and "1 duplicates moved" in first.stdout, first.stdout
    (manifest,) = folder.glob("manifest-*.json")
    shutil.copy(tmp_path / "photos" / "a.jpg", tmp_path / "photos" / "two\nlines.jpg")  # the copy is back
    index_with(thumbnail_model, tmp_path / "photos", index)
    shutil.copy(tmp_path / "photos" / "a.jpg", next(folder.rglob("two*")))  # ...and its place is taken
    again = run_cli("dupes", str(index), "--move-to", str(folder), "-q")
    assert again.returncode == 0, again.stderr
    assert "0 duplicates moved" in again.stdout and "--undo" not in again.stdout
    assert "two\\x0alines.jpg" in again.stdout and "exists already" in again.stdout
    assert list(folder.glob("manifest-*.json")) == [manifest]


def test_undo_moves_nothing_a_manifest_places_outside_its_quarantine(tmp_path):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("not yours")
    folder = tmp_path / "q"
    folder.mkdir()
    manifest = folder / "manifest-1.json"
    manifest.write_text(json.dumps({"moves": [{"from": str(tmp_path / "taken.txt"), "to": str(victim),
                                               "sha256": sha256_file(victim), "done": True}]}))
    restored, skipped, _ = quarantine.undo(manifest)
    assert restored == [] and "outside" in skipped[0][1]
    assert victim.read_text() == "not yours" and not (tmp_path / "taken.txt").exists()


def test_undo_writes_files_only_into_the_folders_of_the_index_they_go_back_into(collection, thumbnail_model,
                                                                                 tmp_path):
    """A manifest is a file anyone can write: one handed to a user put its quarantined file back at any path
    the user could write (a new ~/.ssh/authorized_keys, say). Files now go back only into the folders of the
    index they return to (the manifest's, or --index), and the rest stay in quarantine, each said why."""
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    quarantine_folder = tmp_path / "quarantine"
    manifest = move_exact(collection, index, quarantine_folder)
    record = json.loads(manifest.read_text())
    planted = tmp_path / "home" / ".ssh" / "authorized_keys"
    original = record["moves"][0]["from"]
    record["moves"][0]["from"] = str(planted)
    manifest.write_text(json.dumps(record))
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 1 and "was not written by the index it goes back into" in result.stdout
    assert not planted.exists() and Path(record["moves"][0]["to"]).exists()  # left in quarantine
    assert "1 files moved back" in result.stdout  # the other one went home
    # the index's seal refuses the changed entry first; without one (a library caller), the folders still do
    _, skipped, _ = quarantine.undo(manifest, dry_run=True, into=[str(collection)])
    assert len(skipped) == 1 and "outside the folders of the index it goes back into" in skipped[0][1]
    record["index"] = str(tmp_path / "no-such.lookalike")  # an index that cannot be opened vouches for nothing
    record["moves"][0]["from"] = original
    manifest.write_text(json.dumps(record))
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 2 and "the index this manifest names cannot be opened" in result.stderr
    assert "give --index INDEX" in result.stderr and not Path(original).exists()
    result = run_cli("dupes", "--undo", str(manifest), "--index", str(index))  # naming the index it belongs to
    assert result.returncode == 0 and Path(original).exists(), result.stdout


def test_a_move_never_follows_a_link_inside_the_quarantine_out_of_it(tmp_path):
    root, away = tmp_path / "photos", tmp_path / "away"
    root.mkdir()
    away.mkdir()
    scene(3).save(root / "a.jpg")
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "photos").symlink_to(away)  # quarantine/photos leads somewhere else
    _, moved, skipped = quarantine.move([(str(root / "a.jpg"), None, None)], folder, [str(root)])
    assert moved == [] and "outside" in skipped[0][1]
    assert (root / "a.jpg").is_file() and not list(away.iterdir())


def test_two_moves_into_one_quarantine_take_turns(tmp_path):
    """A second move into the same folder would 'finish' the first's manifest while it runs: one at a time."""
    import threading

    from filelock import FileLock

    root = tmp_path / "photos"
    root.mkdir()
    scene(4).save(root / "a.jpg")
    folder = tmp_path / "q"
    folder.mkdir()
    held = FileLock(folder / quarantine.LOCK)
    held.acquire()
    mover = threading.Thread(target=quarantine.move, args=([(str(root / "a.jpg"), None, None)], folder,
                                                           [str(root)]))
    mover.start()
    mover.join(1.0)
    assert mover.is_alive() and (root / "a.jpg").is_file()  # waiting for the other move
    held.release()
    mover.join(30)
    assert not mover.is_alive() and not (root / "a.jpg").exists()


# -- reports and bad input -------------------------------------------------------------------------------

def test_reports_csv_and_html_and_unreadable_files_are_not_fatal(collection, thumbnail_model, tmp_path):
    index = tmp_path / "r.lookalike"
    index_with(thumbnail_model, collection, index)
    result = run_cli("dupes", str(collection), "--index", str(index), "--csv", str(tmp_path / "d.csv"), "--report",
                     str(tmp_path / "report"), "-q")
    assert result.returncode == 0, result.stderr
    assert "6 clusters, 6 duplicates among 16 images" in result.stdout  # broken.jpg scanned, not fatal
    with open(tmp_path / "d.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {r["role"] for r in rows} == {"keep", "duplicate"}
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<h2>") == 6 and "similarities.png" in page and "another shot" in page
    assert (tmp_path / "report" / "cluster-0001.png").is_file()
    bad = run_cli("dupes", "--undo", str(tmp_path / "d.csv"))
    assert bad.returncode == 6 and "not a lookalike quarantine manifest" in bad.stderr
    none = run_cli("dupes")
    assert none.returncode == 2 and "give a folder or an index" in none.stderr


def indexed_copies(tmp_path, model, name: str, copy: str) -> Path:
    """An index of one photo, under `name`, and a byte copy of it under `copy`: for names that break things."""
    root = tmp_path / "photos"
    root.mkdir()
    scene(9).save(root / name, quality=90)
    shutil.copy(root / name, root / copy)
    index_with(model, root, tmp_path / "x.lookalike")
    return tmp_path / "x.lookalike"


def test_the_report_draws_file_names_holding_a_newline(tmp_path, thumbnail_model):
    """The bug: --report stopped with "internal error: ValueError: can't measure length of multiline text"."""
    index = indexed_copies(tmp_path, thumbnail_model, "two\nlines.jpg", "copy.jpg")
    result = run_cli("dupes", str(index), "--report", str(tmp_path / "report"), "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_placeholder_capture_time_is_no_capture_time(tmp_path):
    """The bug: "0000:00:00 00:00:00" (a camera whose clock was never set) or garbage counted as a moment of
    capture, so a copy carrying it and one carrying another (or a real time) were 'two exposures'."""
    with_capture_time(scene(5), tmp_path / "a.jpg", "0000:00:00 00:00:00")
    with_capture_time(scene(5), tmp_path / "b.jpg", "not a date at all")
    with_capture_time(scene(5), tmp_path / "c.jpg", "2024:05:01 10:00:00", "x7")
    a, b, c = (read_facts(str(tmp_path / n), 240, 180, 0) for n in ("a.jpg", "b.jpg", "c.jpg"))
    assert a.taken == "" and b.taken == "" and c.taken == "2024:05:01 10:00:00" and c.taken_fraction == ""
    assert not taken_apart(a, b) and not taken_apart(a, c)


def test_markup_in_file_names_is_printed_as_is(tmp_path, thumbnail_model):
    index = indexed_copies(tmp_path, thumbnail_model, "[red]a.jpg", "[bold]b.jpg")
    result = run_cli("dupes", str(index), "-q")
    assert result.returncode == 0 and "[red]a.jpg" in result.stdout and "[bold]b.jpg" in result.stdout


@pytest.mark.integration
@pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present")
def test_real_model_finds_edited_copies_of_real_photos_but_not_same_class_photos(tmp_path):
    root = tmp_path / "real"
    root.mkdir()
    faces = sorted((CALTECH / "Faces_easy").glob("*.jpg"))[:6]  # one person, many photos: not duplicates
    bikes = sorted((CALTECH / "Motorbikes").glob("*.jpg"))[:30]  # studio shots of one kind: not duplicates
    for path in [*faces, *bikes]:
        shutil.copy2(path, root / f"{path.parent.name}-{path.name}")
    original = Image.open(faces[0])
    ImageOps.mirror(original).save(root / "mirrored.jpg", quality=92)
    original.resize((original.width // 2, original.height // 2)).save(root / "half.jpg", quality=85)
    original.crop((30, 20, original.width - 30, original.height - 20)).save(root / "cropped.jpg", quality=92)
    ImageEnhance.Contrast(original).enhance(1.3).save(root / "contrast.jpg", quality=92)
    original.rotate(3, Image.BICUBIC).save(root / "rotated.jpg", quality=92)
    with Index.open(tmp_path / "real.lookalike", create=True) as index:
        index.add([root])
    found = dupes_json(str(root), "--index", str(tmp_path / "real.lookalike"))
    name = f"Faces_easy-{faces[0].name}"
    assert groups(found) == {frozenset({name, "mirrored.jpg", "half.jpg", "cropped.jpg", "contrast.jpg",
                                        "rotated.jpg"})}
    assert found["clusters"][0]["keep"].endswith(name)  # the original, not an edit of it


@pytest.mark.integration
@pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present")
@pytest.mark.parametrize("name", ["image_0004.jpg", "image_0031.jpg", "image_0085.jpg"])
def test_a_half_size_copy_of_a_small_furry_photo_is_the_same_photograph(name):
    """A leopard (192 x 128 pixels) and its half-size copy were "another shot": brought up to the thumbnail, the
    copy is blur where the original has fur, and phase correlation matched fur against blur (shifts of about
    0.5 px, read as parallax; 8 of the 13 half-size copies the test set missed). The shifts are now measured at
    the coarser picture's resolution."""
    original = Image.open(CALTECH / "Leopards" / name).convert("RGB")
    half = original.resize((original.width // 2, original.height // 2))
    first, copy = features_of(original), features_of(half)
    assert verify.common_resolution(first, copy, 1.0) == pytest.approx(0.5, abs=0.02)
    evidence = verify.compare(first, copy)
    assert evidence.same and evidence.local_shift <= verify.MAX_LOCAL_SHIFT, evidence


@pytest.mark.integration
@pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present")
def test_different_ducatis_on_black_are_not_one_photograph_but_a_real_dataset_duplicate_is():
    """The two pairs the test set's look-alike studio shots flagged wrongly (seen there; the rule that refuses
    them was chosen on the dev set), and one of the dataset's own duplicates, which must stay one photograph."""
    def of(name: str) -> verify.Features:
        return verify.features_of(np.asarray(Image.open(CALTECH / "Motorbikes" / name).convert("RGB")))

    for a, b in (("image_0715.jpg", "image_0738.jpg"), ("image_0724.jpg", "image_0734.jpg")):
        evidence = verify.compare(of(a), of(b))
        assert not evidence.same and "few matching points" in evidence.reason, (a, b, evidence)
    assert verify.compare(of("image_0428.jpg"), of("image_0429.jpg")).same


def test_undo_shows_a_newline_in_the_quarantined_name_it_leaves_as_xnn(tmp_path, thumbnail_model):
    """The bug: the reason of a file left in quarantine ("left at QUARANTINED") printed the quarantined name
    raw, so a name holding a newline split the line in two (the file's own name was already shown as \\x0a)."""
    index = indexed_copies(tmp_path, thumbnail_model, "a.jpg", "two\nlines.jpg")
    folder = tmp_path / "q"
    assert run_cli("dupes", str(index), "--move-to", str(folder), "-q").returncode == 0
    (manifest,) = folder.glob("manifest-*.json")
    record = json.loads(manifest.read_text())
    record["moves"][0]["from"] = str(tmp_path / "elsewhere" / "x.jpg")  # outside the index's folders
    manifest.write_text(json.dumps(record))
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 1 and "left at" in result.stdout, result.stdout
    (line,) = [line for line in result.stdout.splitlines() if "not restored" in line]
    assert "two\\x0alines.jpg" in line and "left at" in line


def test_a_file_another_run_moves_between_the_check_and_the_move_is_gone_not_an_error(tmp_path, monkeypatch):
    """The bug: two `--move-to` runs on one index into two quarantines; one moved a file after the other had
    hashed it, and the other stopped with a raw "[Errno 2] No such file or directory", its manifest left
    incomplete and the index still listing what it had moved."""
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("a.jpg", "b.jpg"):
        scene(3 if name == "a.jpg" else 4).save(root / name)
    elsewhere = tmp_path / "other-quarantine"
    elsewhere.mkdir()
    hashed = quarantine.sha256_file

    def hash_then_lose(path):
        digest = hashed(path)
        if Path(path).name == "a.jpg" and Path(path).parent == root:
            os.rename(path, elsewhere / "a.jpg")  # the other run's move lands right after this hash
        return digest

    monkeypatch.setattr(quarantine, "sha256_file", hash_then_lose)
    manifest, moved, skipped = quarantine.move([(str(root / n), None, None) for n in ("a.jpg", "b.jpg")],
                                               tmp_path / "q", [str(root)])
    assert [m.source for m in moved] == [str(root / "b.jpg")]
    assert skipped == [(str(root / "a.jpg"), quarantine.GONE)]
    record = json.loads(manifest.read_text())
    assert record["complete"] and [e["from"] for e in record["moves"]] == [str(root / "b.jpg")]


def test_undo_dry_run_says_which_files_the_undo_would_refuse(collection, thumbnail_model, tmp_path):
    """The bug: --undo --dry-run listed "would move back" a file whose place another file had taken since,
    which the real undo then refused ("something else is in its place now")."""
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    manifest = move_exact(collection, index, tmp_path / "q")
    first = json.loads(manifest.read_text())["moves"][0]["from"]
    scene(77).save(first)  # another picture now where the moved file was
    dry = run_cli("dupes", "--undo", str(manifest), "--dry-run")
    real_count = len(json.loads(manifest.read_text())["moves"]) - 1
    assert dry.returncode == 1, dry.stdout
    assert f"{real_count} files would move back" in dry.stdout
    assert "something else is in its place now" in dry.stdout
    real = run_cli("dupes", "--undo", str(manifest))
    assert f"{real_count} files moved back" in real.stdout and "something else is in its place now" in real.stdout


def test_undo_acts_only_on_entries_the_index_itself_sealed(collection, thumbnail_model, tmp_path):
    """The bugs: a manifest's entries were trusted as written. A record that was not a record, or whose vector
    was not base64, stopped --undo with "internal error" after the files had moved back (and left them out of
    the index); a vector of NaNs, or another picture's vector, went into the index and stayed; a manifest
    written anywhere moved any file of its folder into the photos. Each entry now carries a seal (HMAC) made
    with a key only the index holds: an entry it does not vouch for is not acted on, its file left where it is."""
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    before = vectors_in(index)
    assert run_cli("dupes", str(collection), "--index", str(index), "--move-to", str(tmp_path / "q"),
                   "-q").returncode == 0
    (manifest,) = (tmp_path / "q").glob("manifest-*.json")
    record = json.loads(manifest.read_text())
    moves = record["moves"]
    assert len(moves) >= 4 and all(m.get("seal") for m in moves)
    nan = base64.b64encode(np.full(len(np.frombuffer(base64.b64decode(moves[0]["record"]["vector"]), "<f4")),
                                   np.nan, "<f4").tobytes()).decode()
    moves[0]["record"]["vector"] = nan  # poisoned, seal kept
    moves[1]["record"]["vector"] = moves[2]["record"]["vector"]  # another picture's vector
    moves[2]["record"]["vector"] = "!!!not base64"
    moves[3]["record"] = "garbage"
    manifest.write_text(json.dumps(record))
    dry = run_cli("dupes", "--undo", str(manifest), "--dry-run")
    result = run_cli("dupes", "--undo", str(manifest))
    for run in (dry, result):
        assert "internal error" not in run.stderr and run.returncode == 1, run.stderr
        assert run.stdout.count("was not written by the index it goes back into") == 4, run.stdout
    assert f"{len(moves) - 4} files would move back" in dry.stdout
    assert f"{len(moves) - 4} files moved back" in result.stdout and "note:" not in result.stderr
    assert all(Path(m["to"]).exists() and not Path(m["from"]).exists() for m in moves[:4])  # left in quarantine
    tampered = {m["from"] for m in moves[:4]}
    assert vectors_in(index) == {p: v for p, v in before.items() if p not in tampered}


def test_a_record_that_cannot_be_read_back_is_no_record(tmp_path):
    """Without a seal to check (a library caller), a record is still read with care: garbage is no record."""
    photo = tmp_path / "a.jpg"
    scene(1).save(photo)
    digest = sha256_file(photo)
    good = {"sha256": digest, "width": 4, "height": 3,
            "vector": base64.b64encode(np.ones(8, "<f4").tobytes()).decode()}
    assert quarantine.file_record(str(photo), good, digest).vector.shape == (8,)
    for bad in ("garbage", {**good, "vector": "!!!"}, {**good, "width": "wide"}, {**good, "sha256": "other"},
                {**good, "vector": base64.b64encode(np.full(8, np.nan, "<f4").tobytes()).decode()}):
        assert quarantine.file_record(str(photo), bad, digest) is None, bad


def vectors_in(index) -> dict[str, bytes]:
    """Every indexed file's vector, as bytes, by path (files without one left out)."""
    with Index.open(index) as idx:
        found = {p: idx.store.vector_of(p) for p, *_ in idx.details().values()}
    return {p: v.tobytes() for p, v in found.items() if v is not None}


@pytest.mark.parametrize("kind", ["fifo", "device", "deep", "nul", "twice"])
def test_a_manifest_that_is_no_manifest_is_refused_in_one_line_without_waiting(tmp_path, kind):
    """The bugs: --undo on a FIFO or /dev/zero waited for ever; a manifest nested 100,000 deep, or holding a NUL
    in a path, stopped with "internal error"; one naming a file twice made --dry-run promise what the undo did not
    do."""
    manifest = tmp_path / "manifest-1.json"
    entry = {"from": str(tmp_path / "a.jpg"), "to": str(tmp_path / "q" / "a.jpg"), "sha256": "0" * 64}
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "device":
        manifest = Path("/dev/zero")
    elif kind == "deep":
        manifest.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "nul":
        manifest.write_text(json.dumps({"moves": [{**entry, "from": str(tmp_path / "a\0b.jpg")}]}))
    else:
        manifest.write_text(json.dumps({"moves": [entry, {**entry, "to": str(tmp_path / "q" / "b.jpg")}]}))
    result = run_cli("dupes", "--undo", str(manifest), "--dry-run", "--index", str(tmp_path / "x"), timeout=60)
    assert result.returncode == 6 and "Traceback" not in result.stderr, result.stderr
    assert "not a lookalike quarantine manifest" in result.stderr or "names one file twice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_entry_whose_path_the_system_refuses_is_skipped_and_the_rest_go_back(tmp_path):
    """The bug: one path too long for the filesystem ([Errno 36]) stopped the whole undo with a raw error."""
    folder = tmp_path / "q"
    (folder / "p").mkdir(parents=True)
    scene(1).save(folder / "p" / "a.jpg")
    entries = [{"from": str(tmp_path / "p" / ("x" * 5000 + ".jpg")), "to": str(folder / "p" / "gone.jpg"),
                "sha256": "0" * 64, "done": True},
               {"from": str(tmp_path / "p" / "a.jpg"), "to": str(folder / "p" / "a.jpg"),
                "sha256": sha256_file(folder / "p" / "a.jpg"), "done": True}]
    (folder / "manifest-1.json").write_text(json.dumps({"moves": entries}))
    restored, skipped, _ = quarantine.undo(folder / "manifest-1.json")
    assert [m.source for m in restored] == [entries[1]["from"]] and (tmp_path / "p" / "a.jpg").exists()
    assert len(skipped) == 1 and "too long" in skipped[0][1].lower()


def test_undo_of_a_quarantine_folder_that_was_moved_says_to_move_it_back(collection, thumbnail_model, tmp_path):
    """A quarantine folder renamed after the move: its manifest's entries point into the old place and are
    refused (rightly), and the message now says what to do."""
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    manifest = move_exact(collection, index, tmp_path / "q")
    (tmp_path / "q").rename(tmp_path / "q-moved")
    result = run_cli("dupes", "--undo", str(tmp_path / "q-moved" / manifest.name))
    assert result.returncode == 1 and f"move it back to {tmp_path / 'q'}" in result.stdout, result.stdout
    (tmp_path / "q-moved").rename(tmp_path / "q")
    assert run_cli("dupes", "--undo", str(manifest)).returncode == 0
