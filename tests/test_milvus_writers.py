"""Milvus under several writers and odd folder names (issue 14, item 12), on a real Milvus Lite."""

from __future__ import annotations

import pytest

from lookalike import Index
from lookalike.errors import IndexBusy
from tests.conftest import picture

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


def test_reindexing_a_folder_with_wildcards_in_its_name_keeps_its_lookalike_neighbour(tmp_path, tiny_model):
    """`path like "/p/a_b/%"` also matches /p/aXb/...: re-indexing a_b must not drop aXb's files."""
    folders = {name: tmp_path / name for name in ("a_b", "aXb", "c%d", "cZZd")}
    for n, folder in enumerate(folders.values()):
        folder.mkdir()
        for m in range(2):
            picture(("disc", "stripes", "noise", "disc")[n], seed=m).save(folder / f"{m}.jpg")
    location = str(tmp_path / "wild.db")
    with Index.open(location, model=str(tiny_model), create=True) as index:
        index.add(list(folders.values()))
        assert len(index) == 8
        (folders["a_b"] / "0.jpg").unlink()
        (folders["c%d"] / "0.jpg").unlink()
        summary = index.add([folders["a_b"]])
        assert summary.removed == 1
        assert index.add([folders["c%d"]]).removed == 1
        assert len(index) == 6
        kept = {hit.path for hit in index.search(picture("disc"), k=10)}
        assert {str(folders["aXb"] / "0.jpg"), str(folders["aXb"] / "1.jpg"), str(folders["cZZd"] / "0.jpg"),
                str(folders["cZZd"] / "1.jpg")} <= kept


def test_a_second_writer_is_refused_until_the_first_is_done(tmp_path, tiny_model):
    from lookalike.storage.milvus import MilvusStore

    location = str(tmp_path / "two.db")
    with Index.open(location, model=str(tiny_model), create=True) as first:
        first.add([_folder(tmp_path / "one", "disc")])
        second = MilvusStore.open(location)  # another writer (in this test, another store object)
        try:
            with pytest.raises(IndexBusy, match="being written by another process"):
                second.add_root(str(tmp_path / "two"))
            assert second.counts()["ok"] == 2  # reading is never refused
            first.add([_folder(tmp_path / "three", "stripes")])  # the holder goes on writing
        finally:
            second.close()
    # the first closed: its claim is given back, and the next writer takes the ids after its last
    with Index.open(location) as again:
        again.add([_folder(tmp_path / "four", "noise")])
        ids, _ = again.vectors()
        assert len(ids) == len(set(ids.tolist())) == 6


def _folder(path, kind: str):
    path.mkdir()
    for m in range(2):
        picture(kind, seed=m).save(path / f"{m}.jpg")
    return path


def test_accented_quoted_and_non_utf8_names_index_and_come_back_exactly(tmp_path, tiny_model):
    """Filters quoted with JSON's \\u escapes failed on any accented name; a non-UTF-8 name cannot be a
    Milvus string at all."""
    import os

    root = tmp_path / "photos"
    root.mkdir()
    names = ["café \"q\" \\x.jpg", os.fsdecode(b"caf\xe9.jpg"), "\uf7e9 private.jpg"]
    for n, name in enumerate(names):
        with open(os.path.join(os.fsencode(root), os.fsencode(name)), "wb") as handle:
            picture(("disc", "stripes", "noise")[n]).save(handle, "JPEG")
    (root / "broken \u00e9.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    location = str(tmp_path / "names.db")
    with Index.open(location, model=str(tiny_model), create=True) as index:
        summary = index.add([root])
        assert (summary.indexed, summary.failed) == (3, 1)
        again = index.add([root])
        assert (again.indexed, again.unchanged, again.removed) == (0, 4, 0)
        for name in names:
            path = os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name)))
            assert index.search(path, k=1)[0].path == path
            assert index.similar(path, k=1)[0].path != path
        assert [f["path"] for f in index.info()["failures"]] == [str(root / "broken \u00e9.jpg")]
        os.remove(os.path.join(os.fsencode(root), b"caf\xe9.jpg"))
        assert index.add([root]).removed == 1
