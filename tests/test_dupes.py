"""Duplicates: exact and near clusters on generated images, the keep rule, move and undo, bad files."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from lookalike import Index
from lookalike.dupes.find import Member, Pair, candidate_pairs, choose_keeper, clusters_of, hash_distance
from tests.conftest import CALTECH, run_cli

THUMBNAIL = ["--mean", "0.5", "--std", "0.5"]


def index_with(model, folder, index):
    result = run_cli("index", str(folder), "--index", str(index), "--model", str(model), *THUMBNAIL, "-q")
    assert result.returncode == 0, result.stderr


def photo(seed: int, size=(160, 120)) -> Image.Image:
    """A generated 'photo': smooth gradient, blobs and texture; different seeds look different."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * rng.uniform(0.5, 1.5) + yy * rng.uniform(-1, 1)) % 256 for _ in range(3)], axis=-1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(8, 30))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


@pytest.fixture
def collection(tmp_path):
    """8 different photos, plus: an exact copy, a PNG of the same pixels, a half-size copy, a copy with a
    caption, a brighter copy, and a corrupt file. (Mirrored copies need a real model: see the integration
    test; the thumbnail model sees a mirror image as another picture.)"""
    root = tmp_path / "photos"
    root.mkdir()
    for n in range(8):
        photo(n).save(root / f"p{n}.jpg", quality=95)
    shutil.copy(root / "p0.jpg", root / "p0-copy.jpg")
    Image.open(root / "p1.jpg").save(root / "p1.png")
    original = Image.open(root / "p2.jpg")
    original.resize((80, 60)).save(root / "p2-small.jpg", quality=90)
    captioned = Image.open(root / "p3.jpg")
    ImageDraw.Draw(captioned).text((5, 5), "(c) 2024 lookalike", fill="white")
    captioned.save(root / "p3-caption.jpg", quality=95)
    ImageEnhance.Brightness(Image.open(root / "p4.jpg")).enhance(1.25).save(root / "p4-bright.jpg", quality=95)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def dupes_json(*args, cwd=None) -> dict:
    result = run_cli("dupes", *args, "--json", "-q", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def groups(found: dict) -> set[frozenset[str]]:
    return {frozenset(os.path.basename(p) for p in [c["keep"], *(d["path"] for d in c["duplicates"])])
            for c in found["clusters"]}


def test_finds_exact_and_near_clusters_and_nothing_else(collection, thumbnail_model, tmp_path):
    index = tmp_path / "d.lookalike"
    index_with(thumbnail_model, collection, index)
    found = dupes_json(str(collection), "--index", str(index))
    assert groups(found) == {frozenset({"p0.jpg", "p0-copy.jpg"}), frozenset({"p1.jpg", "p1.png"}),
                             frozenset({"p2.jpg", "p2-small.jpg"}), frozenset({"p3.jpg", "p3-caption.jpg"}),
                             frozenset({"p4.jpg", "p4-bright.jpg"})}
    evidence = {os.path.basename(d["path"]): d["evidence"] for c in found["clusters"] for d in c["duplicates"]}
    assert evidence["p0-copy.jpg"] == "same bytes" or evidence.get("p0.jpg") == "same bytes"
    assert "same pixels" in evidence.values()
    small = next(c for c in found["clusters"] if "p2-small.jpg" in str(c))
    assert small["keep"].endswith("p2.jpg") and "highest resolution (160×120 vs 80×60)" in small["reason"]
    exact = dupes_json(str(collection), "--index", str(index), "--exact-only")
    assert groups(exact) == {frozenset({"p0.jpg", "p0-copy.jpg"}), frozenset({"p1.jpg", "p1.png"})}


def test_candidates_come_from_neighbours_never_an_n_by_n_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)).astype(np.float32)
    x[250] = x[10] + 0.01 * rng.normal(size=32)  # a near copy
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, b, cosine, seen = candidate_pairs(x, k=5, floor=0.9, batch=64)
    assert (a.tolist(), b.tolist()) == ([10], [250]) and cosine[0] > 0.99
    assert len(seen) == 500 * 5


def test_the_keep_rule_resolution_then_size_then_exif_then_age():
    def member(i, w=100, h=100, size=1000, exif=0, mtime=5):
        return Member(i, f"/p/{i}.jpg", w, h, size, mtime, None, exif)

    assert choose_keeper([member(1), member(2, w=200)])[0].id == 2
    keep, reason = choose_keeper([member(1, size=900), member(2, size=1200)])
    assert keep.id == 2 and reason.startswith("largest file")
    keep, reason = choose_keeper([member(1, exif=3), member(2, exif=12)])
    assert keep.id == 2 and reason == "richest EXIF (12 tags vs 3)"
    keep, reason = choose_keeper([member(1, mtime=9), member(2, mtime=4)])
    assert keep.id == 2 and reason == "oldest file"


def test_clusters_are_connected_components_each_image_in_one():
    members = {i: Member(i, f"/p/{i}", 10, 10, i, 0, None) for i in range(1, 7)}
    pairs = [Pair(1, 2, "near", 0.95), Pair(2, 3, "near", 0.96), Pair(5, 6, "bytes", None)]
    clusters = clusters_of(pairs, members)
    assert [sorted(m.id for m in c.members) for c in clusters] == [[1, 2, 3], [5, 6]]
    assert clusters[1].kind == "exact" and clusters[0].kind == "near"


def test_mirror_aware_hash_distance():
    assert hash_distance((0b1010, 0b0101), (0b0101, 0b1010)) == 0  # b is a's mirror image
    assert hash_distance((0, 0), (0b111, 0b111)) == 3


def test_move_then_undo_leaves_the_folder_exactly_as_before(collection, thumbnail_model, tmp_path):
    index = tmp_path / "m.lookalike"
    index_with(thumbnail_model, collection, index)
    before = {p.relative_to(collection): p.read_bytes() for p in collection.rglob("*") if p.is_file()}
    quarantine = collection / "quarantine"  # inside the indexed folder on purpose: it must be skipped
    result = run_cli("dupes", str(collection), "--index", str(index), "--move-to",
                     str(quarantine), "-q")
    assert result.returncode == 0, result.stderr
    assert "5 duplicates moved" in result.stdout
    manifest = next(quarantine.glob("manifest-*.json"))
    moved = json.loads(manifest.read_text())["moves"]
    assert len(moved) == 5 and all(m["done"] for m in moved)
    assert all(not os.path.exists(m["from"]) and os.path.exists(m["to"]) for m in moved)
    assert all(m["to"].startswith(str(quarantine / "photos")) for m in moved)  # relative paths kept
    again = dupes_json(str(collection), "--index", str(index))
    assert again["clusters"] == []  # re-running after the move finds nothing (quarantine is not indexed)
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 0 and "5 files moved back" in result.stdout
    for p in quarantine.rglob("*"):
        if p.is_file():
            p.unlink()
    shutil.rmtree(quarantine)
    after = {p.relative_to(collection): p.read_bytes() for p in collection.rglob("*") if p.is_file()}
    assert after == before


def test_undo_refuses_to_overwrite_and_reports_it(collection, thumbnail_model, tmp_path):
    index = tmp_path / "u.lookalike"
    index_with(thumbnail_model, collection, index)
    quarantine = tmp_path / "q"
    run_cli("dupes", str(collection), "--index", str(index), "--exact-only", "--move-to", str(quarantine), "-q")
    manifest = next(quarantine.glob("manifest-*.json"))
    first = json.loads(manifest.read_text())["moves"][0]
    with open(first["from"], "wb") as handle:
        handle.write(b"a new file took its place")
    result = run_cli("dupes", "--undo", str(manifest))
    assert result.returncode == 1 and "something else is in its place now" in result.stdout
    with open(first["from"], "rb") as handle:
        assert handle.read() == b"a new file took its place"  # not overwritten
    assert os.path.exists(first["to"])  # and the quarantined copy is still there


def test_reports_csv_and_html_and_unreadable_files_are_not_fatal(collection, thumbnail_model, tmp_path):
    index = tmp_path / "r.lookalike"
    index_with(thumbnail_model, collection, index)
    result = run_cli("dupes", str(collection), "--index", str(index), "--csv", str(tmp_path / "d.csv"), "--report",
                     str(tmp_path / "report"), "-q")
    assert result.returncode == 0, result.stderr
    assert "5 clusters, 5 duplicates among 14 images" in result.stdout  # broken.jpg scanned, not fatal
    with open(tmp_path / "d.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {r["role"] for r in rows} == {"keep", "duplicate"}
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<h2>") == 5 and "similarities.png" in page
    assert (tmp_path / "report" / "cluster-0001.png").is_file()
    bad = run_cli("dupes", "--undo", str(tmp_path / "d.csv"))
    assert bad.returncode == 6 and "not a lookalike quarantine manifest" in bad.stderr
    none = run_cli("dupes")
    assert none.returncode == 2 and "give a folder or an index" in none.stderr


@pytest.mark.integration
@pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present")
def test_real_model_finds_edited_copies_of_real_photos_but_not_same_class_photos(tmp_path):
    root = tmp_path / "real"
    root.mkdir()
    faces = sorted((CALTECH / "Faces_easy").glob("*.jpg"))[:6]  # one person, many photos: not duplicates
    for path in faces:
        shutil.copy(path, root / path.name)
    original = Image.open(faces[0])
    ImageOps.mirror(original).save(root / "mirrored.jpg", quality=92)
    original.resize((original.width // 2, original.height // 2)).save(root / "half.jpg", quality=85)
    original.crop((10, 10, original.width - 10, original.height - 10)).save(root / "cropped.jpg", quality=92)
    ImageEnhance.Contrast(original).enhance(1.3).save(root / "contrast.jpg", quality=92)
    with Index.open(tmp_path / "real.lookalike", create=True) as index:
        index.add([root])
    found = dupes_json(str(root), "--index", str(tmp_path / "real.lookalike"))
    assert groups(found) == {frozenset({faces[0].name, "mirrored.jpg", "half.jpg", "cropped.jpg", "contrast.jpg"})}
