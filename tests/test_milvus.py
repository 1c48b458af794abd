"""The same index on Milvus: a real embedded Milvus (Milvus Lite, started by pymilvus from a .db path), no mocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookalike import Index
from lookalike.errors import LookalikeError, ModelMismatch
from tests.conftest import run_cli

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


@pytest.fixture
def both(photo_dir, tiny_model, tmp_path):
    """The same photos indexed into a .lookalike file and into a Milvus Lite file."""
    (photo_dir / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    made = {}
    for name in ("file.lookalike", "milvus.db"):
        result = run_cli("index", str(photo_dir), "--index", str(tmp_path / name), "--model", str(tiny_model), "-q")
        assert result.returncode == 0, result.stderr
        assert "9 indexed" in result.stdout and "1 failed" in result.stdout
        made[name] = str(tmp_path / name)
    return made


def hits_of(index_path: str, query: str, k: int = 4) -> list[tuple[str, float]]:
    result = run_cli("search", query, "--index", index_path, "-k", str(k), "--json")
    assert result.returncode == 0, result.stderr
    return [(h["path"], h["score"]) for h in json.loads(result.stdout)["results"]]


def test_milvus_answers_like_the_file_index(both, photo_dir):
    query = str(photo_dir / "stripes" / "stripes1.png")
    on_file, on_milvus = hits_of(both["file.lookalike"], query), hits_of(both["milvus.db"], query)
    assert [p for p, _ in on_milvus] == [p for p, _ in on_file]
    np.testing.assert_allclose([s for _, s in on_milvus], [s for _, s in on_file], atol=1e-4)
    info = json.loads(run_cli("info", "--index", both["milvus.db"], "--json").stdout)
    assert (info["images"], info["failed"], info["search"]["engine"]) == (9, 1, "milvus")
    assert info["failures"][0]["path"].endswith("bad.jpg") and "cannot decode" in info["failures"][0]["error"]


def test_milvus_index_follows_the_folder_and_keeps_its_model(both, photo_dir, tmp_path):
    (photo_dir / "noise" / "noise0.jpg").unlink()
    similar = photo_dir / "disc" / "disc0.jpg"
    (photo_dir / "disc" / "copy.png").write_bytes((photo_dir / "disc" / "disc1.png").read_bytes())
    result = run_cli("index", str(photo_dir), "--index", both["milvus.db"], "-q")
    assert "1 indexed" in result.stdout and "1 removed" in result.stdout, result.stdout
    result = run_cli("search", str(similar), "--index", both["milvus.db"], "--ann", "hnsw")
    assert result.returncode == 2 and "drop --ann hnsw" in result.stderr
    # (this process opens the Milvus Lite file last: it holds it until it exits)
    with Index.open(both["milvus.db"]) as index:
        assert len(index) == 9
        hits = index.similar(similar, k=3)
        assert all("/disc/" in h.path for h in hits) and str(similar) not in [h.path for h in hits]
        with pytest.raises(LookalikeError, match="Milvus answers with its own HNSW"):
            from lookalike.search.searcher import SearchSettings

            index.configure(SearchSettings(ann="hnsw"))
    with pytest.raises(ModelMismatch):
        Index.open(both["milvus.db"], model="efficientnet-lite0")
    busy = run_cli("info", "--index", both["milvus.db"])
    assert busy.returncode == 7 and "another process is probably using it" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1


def test_export_to_milvus_and_import_back_keeps_every_vector(both, tmp_path):
    to_milvus = str(tmp_path / "exported.db#photos")
    result = run_cli("export", "--index", both["file.lookalike"], "--to", to_milvus)
    assert result.returncode == 0 and "10 files copied" in result.stdout, result.stderr
    back = str(tmp_path / "back.lookalike")
    result = run_cli("import", "--from", to_milvus, "--index", back)
    assert result.returncode == 0, result.stderr
    with Index.open(both["file.lookalike"]) as original, Index.open(back) as returned:
        assert original.spec == returned.spec and original.store.roots() == returned.store.roots()
        a = dict(zip(original.store.files(original.vectors()[0]).values(), original.vectors()[1], strict=True))
        b = dict(zip(returned.store.files(returned.vectors()[0]).values(), returned.vectors()[1], strict=True))
        assert {p for p, _, _ in a} == {p for p, _, _ in b}
        for key, vector in a.items():
            np.testing.assert_allclose(b[key], vector, atol=1e-6)
        assert returned.store.counts() == {"ok": 9, "failed": 1}
    again = run_cli("export", "--index", both["file.lookalike"], "--to", to_milvus)
    assert again.returncode == 2 and "exists already" in again.stderr


def test_neighbours_on_milvus(both, tmp_path):
    result = run_cli("neighbours", "--index", both["milvus.db"], "-k", "2", "--out", str(tmp_path / "n.json"))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "n.json").read_text())
    assert len(rows) == 9 and all(len(r["neighbours"]) == 2 for r in rows)


@pytest.mark.parametrize("location, message, status", [
    ("milvus://nohost/x", "a Milvus index is milvus://HOST:PORT/COLLECTION", 2),
    ("milvus://127.0.0.1:1/x", "cannot reach Milvus at http://127.0.0.1:1", 7),
    ("missing.db", "no index at missing.db", 3),
])
def test_bad_milvus_locations_are_one_line(location, message, status, tmp_path):
    result = run_cli("info", "--index", location, cwd=tmp_path, timeout=60)
    assert result.returncode == status and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
