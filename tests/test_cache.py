"""The search cache (INDEX-cache/) under attack: several processes at once, damaged files, a full disk.

The store (SQLite) is the truth; the cache beside it must never answer from half an update or from damaged
files, and must say (one line, through the `lookalike` logger the CLI prints) when it rebuilt or could not
save something. Issue 14, items 6-8.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import re
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.search.hnsw import HNSWIndex
from lookalike.search.searcher import Searcher, SearchSettings
from lookalike.storage.base import FileRecord
from lookalike.storage.sqlite import Store
from tests.conftest import run_cli
from tests.test_search_engines import clustered, families  # noqa: F401  (fixture)

DIMS = 16


@pytest.fixture
def spec():
    from lookalike.models.registry import ModelSpec

    return ModelSpec(name="synthetic", source="file", dims=DIMS, input_size=32, path="/none")


def make_store(path: Path, spec, vectors: np.ndarray) -> Store:
    store = Store.create(path, spec)
    store.write([FileRecord(f"/img/{i:06d}.jpg", 1, 1, None, vector=v) for i, v in enumerate(vectors)])
    return store


def truth(store: Store, queries: np.ndarray, k: int) -> np.ndarray:
    ids, vectors = store.vectors()
    return ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]


def cache_file(folder: Path, prefix: str) -> Path:
    """The one cache file whose name starts with `prefix` (vectors, ids, pca), whatever the layout names it."""
    found = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.is_file() and "partial" not in p.name]
    assert len(found) == 1, found
    return found[0]


# -- 6: several processes at once -------------------------------------------------------------------------

def _worker(path: str, role: str, seed: int, seconds: float, ann: str, out) -> None:
    """Write (add, remove) or read, searching every vector's self-query; report what went wrong."""
    import numpy as np

    from lookalike.search.searcher import Searcher, SearchSettings
    from lookalike.storage.base import FileRecord
    from lookalike.storage.sqlite import Store

    rng = np.random.default_rng(seed)
    errors: list[str] = []
    checked = 0
    try:
        store = Store.open(path)
        searcher = Searcher(store, SearchSettings(ann=ann))
        stop = time.monotonic() + seconds
        mine: list[str] = []
        while time.monotonic() < stop:
            if role == "writer":
                x = rng.normal(size=(20, DIMS)).astype(np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                names = [f"/w{seed}/{len(mine) + i}.jpg" for i in range(20)]
                store.write([FileRecord(name, 1, 1, None, vector=v) for name, v in zip(names, x, strict=True)])
                expected = np.array([store.id_of(name) for name in names])
                mine += names
                if len(mine) > 60:
                    store.remove(mine[:10])  # only older ones: the 20 just written stay
                    mine = mine[10:]
                queries = x
            else:
                ids, vectors = store.vectors()
                pick = rng.choice(len(ids), min(10, len(ids)), replace=False)
                queries, expected = vectors[pick], ids[pick]
            answer = searcher.search(queries, 1)
            for row, want in enumerate(expected):
                found = int(answer.ids[row, 0])
                if found != want and int(want) in store.files([int(want)]):  # a reader's pick may be removed since
                    errors.append(f"{role}: self-query of {want} answered {found} at {answer.scores[row, 0]:.3f}")
                checked += 1
    except BaseException as exc:
        errors.append(f"{role}: {type(exc).__name__}: {exc}")
    out.put((role, checked, errors[:5]))


@pytest.mark.parametrize("ann", ["exact", "hnsw"])
def test_several_processes_writing_and_searching_one_index_never_see_half_an_update(tmp_path, spec, ann):
    path = tmp_path / "busy.lookalike"
    make_store(path, spec, clustered(3000, DIMS, seed=11)).close()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    roles = ["writer", "writer", "reader", "reader"]
    workers = [context.Process(target=_worker, args=(str(path), role, n, 6.0, ann, out))
               for n, role in enumerate(roles)]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(worker.exitcode == 0 for worker in workers), [w.exitcode for w in workers]
    errors = [e for _, _, errs in results for e in errs]
    assert not errors, errors
    assert all(checked > 0 for _, checked, _ in results), results


def test_a_manifest_naming_other_files_is_not_trusted(tmp_path, spec, caplog):
    x = clustered(500, DIMS, seed=12)
    store = make_store(tmp_path / "m.lookalike", spec, x)
    Searcher(store).search(x[:1], 1)
    folder = Path(str(store.path) + "-cache")
    vectors = cache_file(folder, "vectors")
    other = make_store(tmp_path / "other.lookalike", spec, clustered(500, DIMS, seed=13))
    Searcher(other).search(x[:1], 1)  # another index's cache, same shapes
    other_vectors = cache_file(Path(str(other.path) + "-cache"), "vectors")
    vectors.write_bytes(other_vectors.read_bytes())
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        found = Searcher(store).search(x[:20], 5).ids
    np.testing.assert_array_equal(found, truth(store, x[:20], 5))
    assert "rebuilt" in caplog.text


# -- 7: damaged files -------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _reverse_rows(path: Path) -> None:
    if path.suffix == ".npy":
        np.save(path, np.load(path)[::-1])
    else:
        rows = np.fromfile(path, np.float32).reshape(-1, DIMS)
        rows[::-1].tofile(path)


DAMAGE = {
    "truncated vectors": ("vectors", _truncate),
    "empty vectors": ("vectors", lambda p: p.write_bytes(b"")),
    "random bytes in ids": ("ids", lambda p: p.write_bytes(np.random.default_rng(0).bytes(p.stat().st_size))),
    "truncated pca": ("pca", _truncate),
    "rows reversed": ("vectors", _reverse_rows),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_is_rebuilt_from_the_store_and_says_so(tmp_path, spec, caplog, damage):
    x = clustered(1200, DIMS, seed=14)
    store = make_store(tmp_path / "d.lookalike", spec, x)
    settings = SearchSettings(ann="exact", pca=8)
    Searcher(store, settings).search(x[:1], 1)
    prefix, harm = DAMAGE[damage]
    harm(cache_file(Path(str(store.path) + "-cache"), prefix))
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        searcher = Searcher(store, settings)
        answer = searcher.search(x[:30], 1)
        searcher.search(x[30:40], 1)
    assert (answer.ids[:, 0] == store.ids()[:30]).all()  # every self-query finds itself
    assert (answer.scores[:, 0] > 0.999).all()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rebuilt" in warnings[0].getMessage(), caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        Searcher(store, settings).search(x[:3], 1)  # repaired: nothing more to say
    assert not caplog.records


def test_the_cli_says_in_one_line_that_it_rebuilt_a_damaged_cache(families, tiny_model, tmp_path):  # noqa: F811
    target = tmp_path / "cli.lookalike"
    assert run_cli("index", str(families), "--index", str(target), "--model", str(tiny_model), "-q").returncode == 0
    _truncate(cache_file(Path(str(target) + "-cache"), "vectors"))
    query = str(families / "disc" / "disc03.png")
    result = run_cli("search", query, "--index", str(target), "-k", "3")
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rebuilt" in lines[0], result.stderr
    assert "disc03.png" in result.stdout


# -- 8: a full disk ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("Error in faiss::FileIOWriter: write failed")])
def test_a_full_disk_while_saving_an_engine_answers_from_memory_and_says_so_once(tmp_path, spec, caplog,
                                                                                  monkeypatch, failure):
    x = clustered(800, DIMS, seed=15)
    store = make_store(tmp_path / "full.lookalike", spec, x)

    def no_space(self, folder):
        (Path(folder) / "index.faiss").write_bytes(b"half")  # what a write leaves before the disk fills
        raise failure

    monkeypatch.setattr(HNSWIndex, "save", no_space)
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        searcher = Searcher(store, SearchSettings(ann="hnsw"))
        first = searcher.search(x[:20], 1)
        store.write([FileRecord("/img/new.jpg", 1, 1, None, vector=x[0] * -1)])
        second = searcher.search(-x[:1], 1)
    assert (first.ids[:, 0] == store.ids()[:20]).all()
    assert second.ids[0, 0] == store.id_of("/img/new.jpg")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "could not save" in warnings[0], warnings
    folder = Path(str(store.path) + "-cache")
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith("hnsw") or "partial" in p.name]
    assert not leftovers, leftovers


def test_a_full_disk_while_writing_the_vectors_answers_from_memory(tmp_path, spec, caplog, monkeypatch):
    x = clustered(300, DIMS, seed=16)
    store = make_store(tmp_path / "full.lookalike", spec, x)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lookalike.search.cache._write_rows", no_space)
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        answer = Searcher(store).search(x[:10], 1)
    assert (answer.ids[:, 0] == store.ids()[:10]).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "could not save" in warnings[0], warnings


# -- issue 17: derived files follow the store in proportion to what changed ---------------------------------

def manifest_of(store: Store) -> dict:
    import json

    return json.loads((Path(str(store.path) + "-cache") / "manifest.json").read_text())


def test_adding_and_removing_appends_to_the_vectors_file_instead_of_rewriting_it(tmp_path, spec):
    x = clustered(600, DIMS, seed=17)
    store = make_store(tmp_path / "grow.lookalike", spec, x[:500])
    searcher = Searcher(store)
    searcher.search(x[:1], 1)
    before = manifest_of(store)
    path = Path(str(store.path) + "-cache") / before["vectors"]
    head = path.read_bytes()
    store.write([FileRecord(f"/new/{i}.jpg", 1, 1, None, vector=v) for i, v in enumerate(x[500:])])
    store.remove([f"/img/{i:06d}.jpg" for i in range(10)])
    answer = searcher.search(x[500:], 1)
    after = manifest_of(store)
    assert after["vectors"] == before["vectors"] and after["rows"] == 600  # the same file, 100 rows longer
    assert path.read_bytes()[: len(head)] == head
    assert (answer.ids[:, 0] == store.ids()[-100:]).all()
    gone = set(range(1, 11))
    assert not gone & set(Searcher(store).search(x[:10], 3).ids.ravel().tolist())  # tombstones, in a new process
    fresh = Searcher(store)
    fresh.refresh()
    assert len(fresh.ids) == 590


def test_a_small_change_is_reapplied_on_load_rather_than_the_engine_saved_again(tmp_path, spec, monkeypatch):
    import lookalike.search.searcher as searcher_module

    monkeypatch.setattr(searcher_module, "ALWAYS_SAVE", 0)  # behave as at a million vectors
    x = clustered(1000, DIMS, seed=18)  # 995 indexed, then 5 more: half a percent
    store = make_store(tmp_path / "small.lookalike", spec, x[:995])
    settings = SearchSettings(ann="hnsw")
    Searcher(store, settings).engine("hnsw", save=True)
    saved = manifest_of(store)["engines"]["hnsw"]
    store.write([FileRecord(f"/new/{i}.jpg", 1, 1, None, vector=v) for i, v in enumerate(x[995:])])
    assert (Searcher(store, settings).search(x[995:], 1).ids[:, 0] == store.ids()[-5:]).all()
    assert manifest_of(store)["engines"]["hnsw"] == saved  # 5 of 1,000 changed: the graph was not rewritten

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(HNSWIndex, "build", no_build)
    again = Searcher(store, settings)  # a new process loads the saved graph and adds the 5 again
    assert (again.search(x[995:], 1).ids[:, 0] == store.ids()[-5:]).all()


def test_lookalike_index_builds_the_engine_and_says_so_so_that_search_never_builds(families, tiny_model,  # noqa: F811
                                                                                   tmp_path):
    target = tmp_path / "built.lookalike"
    result = run_cli("index", str(families), "--index", str(target), "--model", str(tiny_model), "--ann", "hnsw")
    assert result.returncode == 0, result.stderr
    assert "building the hnsw index over 36 images" in result.stderr
    from lookalike import Index

    with Index.open(target) as index:
        manifest = json_manifest(target)
        assert "hnsw" in manifest["engines"]
        hits = index.search(index.vectors()[1][0], 3)
    assert hits.engine.startswith("hnsw")


def json_manifest(index_path: Path) -> dict:
    import json

    return json.loads((Path(str(index_path) + "-cache") / "manifest.json").read_text())


def test_auto_searches_a_large_collection_with_hnsw_over_pca_and_exact_when_asked():
    from lookalike.search.searcher import choose

    large = choose(1_000_000, 1280, SearchSettings())
    assert large.engine == "hnsw" and large.pca == 256 and "PCA-256" in large.reason
    assert choose(1_000_000, 1280, SearchSettings(pca=128)).pca == 128
    assert choose(20_000, 1280, SearchSettings()).pca == 0
    assert choose(1_000_000, 1280, SearchSettings(ann="hnsw")).pca == 0  # --ann hnsw: full dims, as asked


def test_cache_files_get_the_permissions_the_umask_gives_so_another_user_can_read_them(tmp_path, spec):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        x = clustered(300, DIMS, seed=19)
        store = make_store(tmp_path / "shared.lookalike", spec, x)
        Searcher(store, SearchSettings(ann="hnsw", pca=8)).search(x[:1], 1)
    finally:
        os.umask(previous)
    folder = Path(str(store.path) + "-cache")
    made = [p for p in folder.rglob("*") if p.name != "lock"]
    assert len(made) >= 5
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in made), \
        {p.name: oct(p.stat().st_mode) for p in made}


def test_a_graph_saved_with_other_build_parameters_is_built_again(tmp_path, spec, monkeypatch):
    import lookalike.search.hnsw as hnsw_module

    x = clustered(600, DIMS, seed=20)
    store = make_store(tmp_path / "graph.lookalike", spec, x)
    settings = SearchSettings(ann="hnsw")
    monkeypatch.setattr(hnsw_module, "GRAPH", {**hnsw_module.GRAPH, "storage": "flat"})  # an older release's graph
    Searcher(store, settings).engine("hnsw", save=True)
    assert manifest_of(store)["engines"]["hnsw"]["stamp"]["build"]["storage"] == "flat"
    monkeypatch.undo()
    engine = Searcher(store, settings).engine("hnsw")
    assert engine.defaults()["storage"] == "sq8" and not isinstance(engine.index, faiss_module().IndexHNSWFlat)
    assert manifest_of(store)["engines"]["hnsw"]["stamp"]["build"] == engine.defaults()


def faiss_module():
    import faiss

    return faiss


def _mapped_kb(path: Path) -> int:
    """kB of this file's pages mapped into this process (the file's share of RSS), from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: addresses, ..., path
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps (Linux)")
def test_reranking_reads_keep_the_vectors_file_out_of_rss(tmp_path):
    from lookalike.search.cache import RowReader

    rows, dims = 16_000, 1280  # 82 MB
    path = tmp_path / "vectors.f32"
    matrix = np.memmap(path, dtype="<f4", mode="w+", shape=(rows, dims))
    matrix[:] = np.random.default_rng(0).standard_normal((rows, dims), dtype=np.float32)
    matrix.flush()
    del matrix
    mapped = np.memmap(path, dtype="<f4", mode="r", shape=(rows, dims))
    picks = [np.sort(np.random.default_rng(seed).choice(rows, 200, replace=False)) for seed in range(60)]
    plain = [np.asarray(mapped[p]) for p in picks]  # as re-ranking read them before
    plain_kb = _mapped_kb(path)
    del mapped
    reader = RowReader(np.memmap(path, dtype="<f4", mode="r", shape=(rows, dims)), cap=40 << 20)
    reader_kb = 0
    for pick, want in zip(picks, plain, strict=True):
        assert np.array_equal(reader.rows(pick), want)
        reader_kb = max(reader_kb, _mapped_kb(path))  # after every query, not only after the last
    assert plain_kb > 40_000  # fault-around mapped most of the file
    assert reader_kb == 0  # a file over the cap is read with pread, never mapped (was: the cap plus a query's pages)


@pytest.mark.parametrize("cap", [1 << 30, 1 << 10], ids=["mapped", "pread"])
def test_row_reader_returns_the_rows_asked_in_their_order(tmp_path, cap):
    """Both ways of reading (a map for a file within the cap, pread over it) give the same rows: unsorted and
    repeated positions, the last row, a matrix that starts after a header; a position outside fails loudly."""
    from lookalike.search.cache import RowReader

    rows, dims, header = 50, 7, 128
    path = tmp_path / "vectors.f32"
    data = np.random.default_rng(1).standard_normal((rows, dims), dtype=np.float32)
    path.write_bytes(b"h" * header + data.tobytes())
    reader = RowReader(np.memmap(path, dtype="<f4", mode="r", offset=header, shape=(rows, dims)), cap=cap)
    positions = np.array([49, 3, 3, 0, 17])
    np.testing.assert_array_equal(reader.rows(positions), data[positions])
    assert reader.rows(np.empty(0, np.int64)).shape == (0, dims)
    with pytest.raises(IndexError):
        reader.rows(np.array([rows]))


def test_vectors_of_reads_the_right_rows_once_some_are_tombstones(tmp_path, spec):
    """Query expansion and the re-ranking by augmentation read candidates' vectors by id: with removed rows
    still in the vectors file (tombstones), an id's position among the live ids is not its row."""
    x = clustered(300, DIMS, seed=5)
    store = make_store(tmp_path / "holes.lookalike", spec, x)
    searcher = Searcher(store)
    searcher.search(x[:1], 1)  # the vectors file is written
    store.remove([f"/img/{i:06d}.jpg" for i in range(0, 30, 3)])  # few enough to stay tombstones
    ids, vectors = store.vectors()
    wanted = ids[::7]
    got = searcher.vectors_of(wanted)
    assert searcher.data.dead.any()  # the case under test
    np.testing.assert_allclose(got, vectors[::7], atol=1e-6)


def test_a_search_for_more_results_than_it_sizes_for_walks_the_same_shortlist(tmp_path, spec, monkeypatch):
    """Re-ranking by augmentation asks for 100 results of a search for 10: the approximate engine must be asked
    for the shortlist a search for 10 re-ranks (the settings' 200), not 4 x 100 (a wider, slower walk)."""
    from lookalike.search.hnsw import HNSWIndex

    x = clustered(1200, DIMS, seed=9)
    store = make_store(tmp_path / "sized.lookalike", spec, x)
    SearchSettings(ann="hnsw").save(store)
    searcher = Searcher(store)
    asked: list[int] = []
    original = HNSWIndex.search

    def spy(self, queries, k, **kwargs):
        asked.append(k)
        return original(self, queries, k, **kwargs)

    monkeypatch.setattr(HNSWIndex, "search", spy)
    plain = searcher.search(x[:1], 10)
    wide = searcher.search(x[:1], 100, sized_for=10)
    assert asked == [200, 200] and wide.ids.shape == (1, 100)
    assert set(plain.ids[0].tolist()) <= set(wide.ids[0].tolist())  # the same shortlist, more of it kept


def test_augmentation_reuses_the_vectors_reranking_read(tmp_path, spec, monkeypatch):
    """α-DBA re-scores the best 100 of the shortlist re-ranking has just read: the search hands their vectors
    over, so a search reads the 200 shortlisted rows once (it read the best 100 a second time: ~0.9 ms a query
    at a million vectors), and answers as it does with vectors read afresh (the exact engine's path)."""
    from lookalike import Index
    from lookalike.search.cache import RowReader

    x = clustered(1200, DIMS, seed=9)
    store = make_store(tmp_path / "handed.lookalike", spec, x)
    SearchSettings(ann="hnsw").save(store)
    index = Index(store)
    index.search(x[0], 10)  # builds the graph
    read: list[int] = []
    original = RowReader.rows

    def spy(self, positions):
        read.append(len(positions))
        return original(self, positions)

    monkeypatch.setattr(RowReader, "rows", spy)
    hits = index.search(x[0], 10)
    assert sum(read) == 200 and "α-DBA" in hits.engine
    exact = index.search(x[0], 10, ann="exact")
    assert [h.id for h in hits] == [h.id for h in exact]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in exact], atol=1e-5)
