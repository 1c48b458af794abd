"""The Python API end to end with the tiny model: index, re-index, search, mismatches, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lookalike import Index
from lookalike.errors import EmptyIndex, ModelMismatch, NotAnImage, NotFound, NotIndexed
from tests.conftest import build_tiny_model, picture


@pytest.fixture
def index(tmp_path, tiny_model, photo_dir):
    idx = Index.open(tmp_path / "photos.lookalike", model=str(tiny_model), create=True)
    yield idx
    idx.close()


def test_add_indexes_every_image_and_search_ranks_the_same_family_first(index, photo_dir):
    summary = index.add([photo_dir], batch_size=4)
    assert (summary.indexed, summary.failed, summary.unchanged, summary.removed) == (9, 0, 0, 0)
    assert len(index) == 9

    hits = index.search(photo_dir / "stripes" / "stripes0.jpg", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].path == str(photo_dir / "stripes" / "stripes0.jpg")
    assert 0.9 < hits[0].score < 1.0 and hits[0].cosine == pytest.approx(1.0, abs=1e-5)  # score: augmented
    assert index.search(photo_dir / "stripes" / "stripes0.jpg", k=1, dba=0)[0].score == pytest.approx(1.0, abs=1e-5)
    assert all("stripes" in h.path for h in hits)
    assert (hits[0].width, hits[0].height) == (96, 72)


def test_a_new_image_finds_its_family(index, photo_dir, tmp_path):
    index.add([photo_dir])
    query = tmp_path / "query.png"
    picture("disc", seed=42, size=(150, 110)).save(query)
    hits = index.search(query, k=3)
    assert all("/disc/" in h.path for h in hits)
    assert index.search(picture("noise", seed=9), k=1)[0].path.endswith(("noise0.jpg", "noise1.png", "noise2.jpg"))


def test_similar_leaves_the_image_itself_out(index, photo_dir):
    index.add([photo_dir])
    hits = index.similar(photo_dir / "noise" / "noise1.png", k=20)
    assert len(hits) == 8
    assert str(photo_dir / "noise" / "noise1.png") not in [h.path for h in hits]
    assert {h.path.split("/")[-2] for h in hits[:2]} == {"noise"}


def test_similar_leaves_out_every_other_path_to_the_same_file(index, photo_dir, tmp_path):
    """The bug: `search --id A` returned A's own file at rank 1 (cosine 1) when the index also holds it through
    a symbolic link or a hard link: one physical file, two indexed paths. An identical copy (other bytes on
    disk) is another file and stays."""
    query = photo_dir / "noise" / "noise1.png"
    (photo_dir / "noise" / "link-to-noise1.png").symlink_to(query)
    os.link(query, photo_dir / "noise" / "hard-noise1.png")
    (photo_dir / "noise" / "copy-noise1.png").write_bytes(query.read_bytes())
    index.add([photo_dir])
    hits = index.similar(query, k=20)
    paths = [h.path for h in hits]
    assert not {str(query), str(photo_dir / "noise" / "link-to-noise1.png"),
                str(photo_dir / "noise" / "hard-noise1.png")} & set(paths), paths
    assert paths[0] == str(photo_dir / "noise" / "copy-noise1.png")
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1)) and len(hits) == 9


def test_similar_finds_an_indexed_image_named_through_a_link_to_its_folder(index, photo_dir, tmp_path):
    """`search --id DIRLINK/photo.jpg`, DIRLINK a symbolic link to an indexed folder, said "not in the index":
    the index keeps paths as named. The same file on disk is the same image; another file is still refused."""
    index.add([photo_dir])
    link = tmp_path / "elsewhere"
    link.symlink_to(photo_dir / "noise", target_is_directory=True)
    through_link = index.similar(link / "noise1.png", k=20)
    assert [h.path for h in through_link] == [h.path for h in index.similar(photo_dir / "noise" / "noise1.png", k=20)]
    stranger = tmp_path / "not-indexed.png"
    stranger.write_bytes((photo_dir / "noise" / "noise1.png").read_bytes())  # same bytes, another file
    with pytest.raises(NotIndexed):
        index.similar(stranger)


def test_similar_says_when_the_query_file_changed_or_went_and_why_a_path_is_unknown(index, photo_dir, tmp_path):
    """A tester's findings: `search --id FILE` on a file replaced or deleted since indexing answered from the
    indexed picture without a word; a link to the indexed path of a moved file was "not in the index"; a path
    that does not exist was told to "index it first"."""
    index.add([photo_dir])
    query = photo_dir / "noise" / "noise1.png"
    assert index.similar(query).query_stale is None
    before = [h.path for h in index.similar(query, k=5)]
    picture("disc", seed=77, size=(80, 60)).save(query)  # replaced by another picture
    changed = index.similar(query, k=5)
    assert changed.query_stale == "changed" and [h.path for h in changed] == before  # the indexed picture's
    query.rename(tmp_path / "moved.png")
    assert index.similar(query, k=5).query_stale == "gone"
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(query)  # leads to where the indexed file was
    assert [h.path for h in index.similar(dangling, k=5)] == before
    with pytest.raises(NotIndexed, match="does not exist"):
        index.similar(tmp_path / "nowhere.png")


def test_euclidean_ranks_like_cosine(index, photo_dir):
    index.add([photo_dir])
    query = photo_dir / "disc" / "disc2.jpg"
    cosine = index.search(query, k=9)
    euclid = index.search(query, k=9, metric="euclidean")
    assert [h.path for h in cosine] == [h.path for h in euclid]
    assert all(np.isclose(e.score, np.sqrt(2 - 2 * c.score), atol=1e-5) for c, e in zip(cosine, euclid, strict=True))


def test_rerun_embeds_only_what_changed_and_drops_what_is_gone(index, photo_dir):
    index.add([photo_dir])
    again = index.add([photo_dir])
    assert (again.indexed, again.unchanged, again.removed) == (0, 9, 0)

    changed = photo_dir / "disc" / "disc0.jpg"
    picture("stripes", seed=7).save(changed)  # new content, same name
    touched = photo_dir / "noise" / "noise1.png"
    os.utime(touched, ns=(1, 1))  # new mtime, same bytes: no re-embedding
    (photo_dir / "stripes" / "stripes2.jpg").unlink()
    picture("noise", seed=5).save(photo_dir / "noise" / "noise5.jpg")

    third = index.add([photo_dir])
    assert (third.indexed, third.unchanged, third.removed, third.failed) == (2, 7, 1, 0)
    assert len(index) == 9
    assert index.search(changed, k=1)[0].path == str(changed)
    assert index.store.known()[str(touched)].mtime_ns == 1
    fourth = index.add([photo_dir])
    assert (fourth.indexed, fourth.unchanged) == (0, 9)


def test_bad_files_are_recorded_with_reasons_and_skipped(index, photo_dir):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "text.jpg").write_text("hello")
    good = (photo_dir / "disc" / "disc0.jpg").read_bytes()
    (photo_dir / "cut.jpg").write_bytes(good[: len(good) // 3])
    summary = index.add([photo_dir])
    assert summary.indexed == 9 and summary.failed == 3
    reasons = dict(index.store.failures())
    assert reasons[str(photo_dir / "empty.jpg")] == "empty file"
    assert reasons[str(photo_dir / "text.jpg")].startswith("not an image")
    assert "truncated" in reasons[str(photo_dir / "cut.jpg")] or "cannot decode" in reasons[str(photo_dir / "cut.jpg")]
    assert index.add([photo_dir]).failed == 0  # unchanged failures are not retried
    (photo_dir / "text.jpg").write_bytes(good)  # fixed: now indexed
    assert index.add([photo_dir]).indexed == 1


def test_index_refuses_another_model(tmp_path, index, photo_dir):
    index.add([photo_dir])
    index.close()
    other = build_tiny_model(tmp_path / "other.onnx", seed=1)
    with pytest.raises(ModelMismatch, match="holds vectors of tiny"):
        Index.open(index.path, model=str(other))
    with pytest.raises(ModelMismatch):
        Index.open(index.path, model="efficientnet-lite0")
    reopened = Index.open(index.path)  # no model named: the index's own
    assert len(reopened) == 9
    reopened.close()


def test_searching_an_empty_index_or_with_a_non_image_is_a_clear_error(index, tmp_path, photo_dir):
    with pytest.raises(EmptyIndex, match="holds no images"):
        index.search(photo_dir / "disc" / "disc0.jpg")
    index.add([photo_dir])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(NotAnImage, match="not an image"):
        index.search(tmp_path / "notes.jpg")
    with pytest.raises(NotFound, match="not found"):
        index.search(tmp_path / "nowhere.jpg")
    with pytest.raises(NotIndexed):
        index.similar(tmp_path / "nowhere.jpg")
    with pytest.raises(NotFound, match="not found"):  # a missing folder is not "not an image"
        index.add([tmp_path / "no-such-folder"])
    with pytest.raises(FileNotFoundError):  # the builtin it refines, for callers who know only that
        index.add([tmp_path / "no-such-folder"])


def test_new_vectors_are_searchable_in_the_same_session(index, photo_dir, tmp_path):
    index.add([photo_dir / "disc"])
    assert all("/disc/" in h.path for h in index.search(photo_dir / "stripes" / "stripes0.jpg", k=9))
    index.add([photo_dir / "stripes"])
    assert "/stripes/" in index.search(photo_dir / "stripes" / "stripes0.jpg", k=1)[0].path


def test_vectors_are_unit_length_float32(index, photo_dir):
    index.add([photo_dir])
    _ids, vectors = index.vectors()
    assert vectors.dtype == np.float32 and vectors.shape == (9, index.spec.dims)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_an_index_vouches_only_for_what_it_sealed_and_checking_writes_nothing(index):
    """Index.seal / Index.vouches: an HMAC under a key the index keeps; checking a seal on an index that never
    made one must not write to it (it may be read-only, or a dry run's)."""
    generation = index.store.meta("generation")
    assert not index.vouches(b"payload", "0" * 64) and index.store.meta("seal_key") is None
    assert index.store.meta("generation") == generation
    seal = index.seal(b"payload")
    assert index.vouches(b"payload", seal) and not index.vouches(b"payload!", seal)
    assert not index.vouches(b"payload", seal[:-1] + ("0" if seal[-1] != "0" else "1"))
    assert not index.vouches(b"payload", None)
