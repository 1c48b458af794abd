"""The SQLite store and exact search, on their own."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lookalike.errors import IndexNotFound
from lookalike.models.registry import MODELS
from lookalike.search import ExactIndex
from lookalike.storage.base import FileRecord
from lookalike.storage.sqlite import Store

SPEC = MODELS["efficientnet-lite0"]


def unit(rng, n, d=SPEC.dims):
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_store_round_trips_rows_and_vectors(tmp_path):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 3)
    store = Store.create(tmp_path / "x.lookalike", SPEC)
    store.write([FileRecord(f"/p/{i}.jpg", 10 + i, 100 + i, f"h{i}", 4, 3, vectors[i]) for i in range(3)]
                + [FileRecord("/p/bad.jpg", 1, 1, "hb", error="empty file")])
    store.close()

    store = Store.open(tmp_path / "x.lookalike")
    _ids, matrix = store.vectors()
    assert matrix.dtype == np.float32 and matrix.shape == (3, SPEC.dims)
    np.testing.assert_array_equal(matrix, vectors)
    assert store.counts() == {"ok": 3, "failed": 1}
    assert store.failures() == [("/p/bad.jpg", "empty file")]
    assert store.known()["/p/1.jpg"].size == 11
    assert store.spec == SPEC
    assert store.generation == 1


def test_rewriting_a_file_replaces_its_row_and_vector(tmp_path):
    rng = np.random.default_rng(1)
    store = Store.create(tmp_path / "x.lookalike", SPEC)
    store.write([FileRecord("/p/a.jpg", 1, 1, "h1", vector=unit(rng, 1)[0])])
    newer = unit(rng, 1)[0]
    store.write([FileRecord("/p/a.jpg", 2, 2, "h2", vector=newer)])
    ids, matrix = store.vectors()
    assert len(ids) == 1
    np.testing.assert_array_equal(matrix[0], newer)
    store.write([FileRecord("/p/a.jpg", 3, 3, "h3", error="cannot decode jpeg: broken")])
    assert len(store.vectors()[0]) == 0 and store.counts() == {"ok": 0, "failed": 1}


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    store = Store.create(tmp_path / "x.lookalike", SPEC)
    good = FileRecord("/p/a.jpg", 1, 1, "h", vector=np.ones(SPEC.dims, np.float32))
    broken = FileRecord("/p/b.jpg", 1, 1, "h", vector=np.ones(SPEC.dims, np.float32))
    store.db.execute("CREATE TRIGGER no_b BEFORE INSERT ON files WHEN NEW.path = '/p/b.jpg' "
                     "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(sqlite3.DatabaseError):
        store.write([good, broken])
    assert store.counts() == {"ok": 0, "failed": 0} and store.generation == 0


def test_remove_drops_row_and_vector(tmp_path):
    store = Store.create(tmp_path / "x.lookalike", SPEC)
    store.write([FileRecord("/p/a.jpg", 1, 1, "h", vector=np.ones(SPEC.dims, np.float32))])
    assert store.remove(["/p/a.jpg", "/p/never.jpg"]) == 1
    assert store.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0


def test_known_under_a_folder_does_not_match_a_sibling_with_the_same_prefix(tmp_path):
    store = Store.create(tmp_path / "x.lookalike", SPEC)
    store.write([FileRecord(p, 1, 1, "h", error="x") for p in ("/a/photos/1.jpg", "/a/photos-old/2.jpg")])
    assert list(store.known(under="/a/photos")) == ["/a/photos/1.jpg"]


def test_opening_something_that_is_not_an_index_says_so_and_leaves_it_untouched(tmp_path):
    with pytest.raises(IndexNotFound, match="no index at"):
        Store.open(tmp_path / "missing.lookalike")
    (tmp_path / "text.lookalike").write_text("hello")
    with pytest.raises(IndexNotFound, match="not a lookalike index"):
        Store.open(tmp_path / "text.lookalike")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.close()
    before = (tmp_path / "other.db").read_bytes()
    with pytest.raises(IndexNotFound, match="not a lookalike index"):
        Store.open(tmp_path / "other.db")
    assert (tmp_path / "other.db").read_bytes() == before
    assert not (tmp_path / "other.db-wal").exists()


def test_exact_search_matches_a_full_sort():
    rng = np.random.default_rng(2)
    vectors = unit(rng, 500, 32)
    ids = np.arange(1000, 1500)
    queries = unit(rng, 7, 32)
    scores, found = ExactIndex(ids, vectors).search(queries, 10)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    np.testing.assert_array_equal(found, ids[expected])
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_search_excludes_the_query_itself_and_handles_k_beyond_n():
    rng = np.random.default_rng(3)
    vectors = unit(rng, 5, 8)
    index = ExactIndex(np.arange(5), vectors)
    scores, found = index.search(vectors[2], 10, exclude=np.array([2]))
    assert found.shape == (1, 4) and 2 not in found[0]
    scores, found = index.search(vectors[2], 10)
    assert found.shape == (1, 5) and found[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0)


def _open_or_create(args: tuple[str, str]) -> int:
    from lookalike.index import Index

    path, model = args
    with Index.open(path, model=model, create=True) as index:
        return len(index)


def test_processes_creating_one_index_at_once_all_get_it(tmp_path, tiny_model):
    """Two `lookalike index` runs started together on a new index: each must end up with the one index, not
    with a half-made file swapped under it ("read-only") or a bare "index.lookalike" error."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        for round_ in range(3):
            path = str(tmp_path / f"race{round_}.lookalike")
            assert pool.map(_open_or_create, [(path, str(tiny_model))] * 4) == [0] * 4
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".race{round_}")] == []
