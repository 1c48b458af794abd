"""fileio: the one atomic write and the one file hash every module uses."""

from __future__ import annotations

import hashlib

import pytest

from lookalike.fileio import atomic_path, atomic_write, sha256_file


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "manifest.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_partial(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as partial:
        partial.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_two_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "x"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the outer block finished last: its file won, whole
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "bytes.bin"
    path.write_bytes(b"lookalike" * 10_000)
    assert sha256_file(path) == hashlib.sha256(b"lookalike" * 10_000).hexdigest()
