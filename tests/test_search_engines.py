"""Search engines (exact, exact-f16, HNSW, IVF-PQ, annoy, PCA) behind one Searcher, kept in step with the store."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from lookalike import Index
from lookalike.evaluation.metrics import neighbour_recall
from lookalike.search.annoy_index import AnnoyIndex
from lookalike.search.base import NeedsRebuild
from lookalike.search.cache import SearchCache
from lookalike.search.exact import ExactIndex, HalfExactIndex
from lookalike.search.hnsw import HNSWIndex
from lookalike.search.ivfpq import IVFPQIndex
from lookalike.search.searcher import Searcher, SearchSettings, choose, rerank
from lookalike.storage.base import FileRecord
from lookalike.storage.sqlite import Store
from tests.conftest import picture, run_cli


def clustered(n: int, dims: int, clusters: int = 50, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres: neighbourhoods like real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dims))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dims))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def store_with(tmp_path, vectors: np.ndarray, tiny_spec) -> Store:
    store = Store.create(tmp_path / "v.lookalike", tiny_spec(vectors.shape[1]))
    store.write([FileRecord(f"/img/{i:06d}.jpg", 1, 1, None, vector=v) for i, v in enumerate(vectors)])
    return store


def saved_engine(folder, kind: str):
    """The folder the cache's manifest names for a saved engine."""
    return folder / json.loads((folder / "manifest.json").read_text())["engines"][kind]["folder"]


@pytest.fixture
def tiny_spec():
    from lookalike.models.registry import ModelSpec

    return lambda dims: ModelSpec(name="synthetic", source="file", dims=dims, input_size=32, path="/none")


# -- the engines alone ------------------------------------------------------------------------------------

def test_engines_on_small_data_return_the_exact_answer():
    x = clustered(400, 24)
    ids = np.arange(400, dtype=np.int64) * 3 + 7  # ids are labels, not positions
    truth_scores, truth = ExactIndex(ids, x).search(x[:20], 10)
    # float16 and float32 graphs score within rounding; the default 8-bit graph within its quantisation (its
    # scores only pick the shortlist that the Searcher re-ranks exactly)
    for engine, atol in ((HalfExactIndex.build(ids, x), 2e-3), (HNSWIndex.build(ids, x, storage="flat"), 2e-3),
                         (HNSWIndex.build(ids, x), 2e-2)):
        scores, found = engine.search(x[:20], 10)
        assert neighbour_recall(found, truth) == 1.0, engine.kind
        np.testing.assert_allclose(scores, truth_scores, atol=atol)
    annoy = AnnoyIndex.build(ids, x, n_trees=50, search_k=400 * 50)  # inspects every node: exhaustive
    assert neighbour_recall(annoy.search(x[:20], 10)[1], truth) == 1.0


def test_approximate_engines_reach_their_recall_floor_on_clustered_data():
    x = clustered(6000, 64, seed=1)
    ids = np.arange(6000, dtype=np.int64)
    queries = x[::60]
    truth = ExactIndex(ids, x).search(queries, 10)[1]
    assert neighbour_recall(HNSWIndex.build(ids, x, storage="flat").search(queries, 10)[1], truth) >= 0.95
    shortlist = HNSWIndex.build(ids, x).search(queries, 40)[1]  # the 8-bit graph proposes, exact cosine orders
    assert neighbour_recall(rerank(queries, shortlist, ids, x, 10)[1], truth) >= 0.95
    assert neighbour_recall(AnnoyIndex.build(ids, x).search(queries, 10)[1], truth) >= 0.8
    shortlist = IVFPQIndex.build(ids, x).search(queries, 50)[1]  # PQ alone is rough; the Searcher re-ranks
    assert neighbour_recall(shortlist, truth) >= 0.9


def test_hnsw_tombstones_hide_removed_vectors_until_a_rebuild_is_due():
    x = clustered(500, 16, seed=2)
    ids = np.arange(500, dtype=np.int64)
    index = HNSWIndex.build(ids, x)
    index.remove(ids[:50])
    found = index.search(x[:50], 5)[1]
    assert not np.isin(found, ids[:50]).any() and len(index) == 450
    with pytest.raises(NeedsRebuild):
        index.remove(ids[50:200])  # past a fifth of the graph


def test_ivfpq_adds_and_removes_in_place_and_refuses_tiny_collections():
    x = clustered(3000, 32, seed=3)
    ids = np.arange(3000, dtype=np.int64)
    index = IVFPQIndex.build(ids[:2500], x[:2500])
    index.add(ids[2500:], x[2500:])
    index.remove(ids[:100])
    held = index.ids_held()
    assert len(index) == 2900 and np.array_equal(held, ids[100:])
    with pytest.raises(Exception, match="at least 1000 images"):
        IVFPQIndex.build(ids[:100], x[:100])


def test_auto_explains_its_choice():
    assert choose(9000, 1280, SearchSettings()).engine == "exact"
    assert choose(500_000, 1280, SearchSettings()).engine == "hnsw"
    tight = choose(500_000, 1280, SearchSettings(memory_budget=200_000_000))
    assert tight.engine == "ivfpq" and "over the 200 MB budget" in tight.reason
    # the 8-bit graph over PCA-256 holds ~550 B per vector: a million fit a 1 GB budget (float32: 1.3 KB, no)
    assert choose(1_000_000, 1280, SearchSettings(memory_budget=1_000_000_000)).engine == "hnsw"
    assert choose(10, 8, SearchSettings(ann="annoy")).reason == "chosen with --ann"
    with pytest.raises(Exception, match="--ann must be one of"):
        SearchSettings(ann="scann")


# -- the Searcher: caches, re-ranking, crash safety -----------------------------------------------------------

@pytest.mark.parametrize("ann, pca", [("exact", 12), ("exact-f16", 0), ("hnsw", 0), ("hnsw", 12), ("ivfpq", 0),
                                      ("annoy", 12)])
def test_every_engine_answers_like_exact_search_after_re_ranking(tmp_path, tiny_spec, ann, pca):
    x = clustered(2000, 48, seed=4)
    store = store_with(tmp_path, x, tiny_spec)
    exact = Searcher(store).search(x[:40], 10)
    answer = Searcher(store, SearchSettings(ann=ann, pca=pca, rerank=100)).search(x[:40], 10)
    assert answer.engine.startswith(ann) and "re-ranked" in answer.engine
    assert neighbour_recall(answer.ids, exact.ids) >= 0.9
    both = answer.ids == exact.ids
    np.testing.assert_allclose(answer.scores[both], exact.scores[both], atol=1e-5)  # exact scores, re-ranked


def test_hnsw_tombstones_follow_later_adds_and_removes_and_a_reload(tmp_path):
    """The live set is cached between searches: it must change with every add and remove, and survive a save."""
    x = clustered(600, 16, seed=3)
    ids = np.arange(600, dtype=np.int64)
    index = HNSWIndex.build(ids[:500], x[:500])
    index.remove(ids[:20])
    assert not np.isin(index.search(x[:20], 5)[1], ids[:20]).any()  # the live set is built here
    index.add(ids[500:], x[500:])  # new positions, past the cached live set
    assert (index.search(x[500:], 1)[1][:, 0] == ids[500:]).all()
    index.remove(ids[500:520])
    assert not np.isin(index.search(x[500:520], 5)[1], ids[:20].tolist() + ids[500:520].tolist()).any()
    index.save(tmp_path)
    again = HNSWIndex.load(tmp_path)
    assert not np.isin(again.search(x[:20], 5)[1], ids[:20]).any()
    assert (again.search(x[520:], 1)[1][:, 0] == ids[520:]).all()


def test_rerank_orders_each_shortlist_by_exact_cosine_leaving_out_gaps_and_the_query_itself():
    x = clustered(300, 16, seed=2)
    ids = np.arange(300, dtype=np.int64) * 5 + 1
    rng = np.random.default_rng(0)
    shortlist = np.stack([rng.choice(ids[30:], 12, replace=False) for _ in range(30)])
    shortlist[:, -3:] = -1  # fewer candidates than asked
    shortlist[:, 0] = ids[:30]  # each query's own id, excluded below
    scores, found = rerank(x[:30], shortlist, ids, x, 10, exclude=ids[:30])
    for row in range(30):  # one query at a time (a user's search) answers as the batch does
        alone = rerank(x[row:row + 1], shortlist[row:row + 1], ids, x, 10, exclude=ids[row:row + 1])
        assert alone[1][0].tolist() == found[row].tolist()
        np.testing.assert_allclose(alone[0][0], scores[row], atol=1e-6)
        candidates = [c for c in shortlist[row] if c >= 0 and c != ids[row]]
        exact = sorted(((float(x[(c - 1) // 5] @ x[row]), c) for c in candidates), reverse=True)
        assert found[row, :8].tolist() == [c for _, c in exact]
        np.testing.assert_allclose(scores[row, :8], [s for s, _ in exact], atol=1e-5)
        assert found[row, 8:].tolist() == [-1, -1] and np.isneginf(scores[row, 8:]).all()


def test_bulk_neighbours_with_a_short_shortlist_still_find_the_close_ones(tmp_path, tiny_spec):
    """Duplicate candidates ask HNSW for 2 k per image, walking the graph only that broadly: the close
    neighbours (near copies) are still found."""
    x = clustered(3000, 32, seed=5)
    copies = x[:300] + 0.02 * np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)
    x = np.vstack([x, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    store = store_with(tmp_path, x, tiny_spec)
    searcher = Searcher(store, SearchSettings(ann="hnsw"))
    found = {}
    for ids, neighbours, scores in searcher.neighbours(10, shortlist=20):
        assert neighbours.shape == (len(ids), 10) and (scores[:, :-1] >= scores[:, 1:]).all()
        found.update(zip(ids.tolist(), neighbours[:, 0].tolist(), strict=True))
    row_ids = searcher.row_ids
    pairs = [(int(row_ids[i]), int(row_ids[3000 + i])) for i in range(300)]
    assert sum(found[a] == b for a, b in pairs) >= 297  # each original's nearest is its copy


def test_engines_follow_the_store_through_adds_removes_and_reopening(tmp_path, tiny_spec):
    x = clustered(1500, 32, seed=5)
    store = store_with(tmp_path, x[:1200], tiny_spec)
    settings = SearchSettings(ann="hnsw")
    first = Searcher(store, settings)
    first.search(x[:5], 5)
    assert (saved_engine(first.folder, "hnsw") / "index.faiss").is_file()
    store.write([FileRecord(f"/img/new{i}.jpg", 1, 1, None, vector=v) for i, v in enumerate(x[1200:])])
    gone = [f"/img/{i:06d}.jpg" for i in range(100)]
    store.remove(gone)
    again = Searcher(store, settings)  # a new process: loads the saved graph, adds 300, tombstones 100
    engine = again.engine("hnsw")
    assert len(engine) == 1400 and len(engine.ids) == 1500
    answer = again.search(x[:100], 5)
    gone_ids = set(range(1, 101))  # the store numbered them 1..1200
    assert not gone_ids & set(answer.ids.ravel().tolist())
    new_hits = again.search(x[1200:1210], 1)
    assert (new_hits.scores[:, 0] > 0.999).all()


def test_a_damaged_or_stale_cache_is_rebuilt_not_trusted(tmp_path, tiny_spec):
    x = clustered(800, 16, seed=6)
    store = store_with(tmp_path, x, tiny_spec)
    settings = SearchSettings(ann="hnsw")
    truth = Searcher(store).search(x[:10], 5).ids
    searcher = Searcher(store, settings)
    searcher.search(x[:1], 5)
    (saved_engine(searcher.folder, "hnsw") / "index.faiss").write_bytes(b"not a faiss index")  # a torn write
    (searcher.folder / "manifest.json").write_text("{")
    np.testing.assert_array_equal(Searcher(store, settings).search(x[:10], 5).ids, truth)
    shutil.rmtree(searcher.folder)
    np.testing.assert_array_equal(Searcher(store, settings).search(x[:10], 5).ids, truth)


def test_a_changed_file_gets_a_new_id_and_its_new_vector_is_found(tmp_path, tiny_spec):
    x = clustered(300, 16, seed=7)
    store = store_with(tmp_path, x, tiny_spec)
    settings = SearchSettings(ann="hnsw")
    Searcher(store, settings).search(x[:1], 3)
    replacement = clustered(1, 16, seed=99)[0]
    store.write([FileRecord("/img/000003.jpg", 2, 2, None, vector=replacement)])
    answer = Searcher(store, settings).search(replacement[None], 1)
    assert answer.scores[0, 0] > 0.999
    assert store.files(answer.ids[0])[int(answer.ids[0, 0])][0] == "/img/000003.jpg"
    assert int(answer.ids[0, 0]) == 301  # a new id: the engine saw the old one go and the new one come


def test_an_index_in_a_read_only_place_still_searches(tmp_path, tiny_spec, monkeypatch):
    x = clustered(200, 16, seed=8)
    store = store_with(tmp_path, x, tiny_spec)
    searcher = Searcher(store, SearchSettings(ann="hnsw"))
    monkeypatch.setattr(SearchCache, "_commit", lambda self, manifest: (_ for _ in ()).throw(OSError("read-only")))
    assert searcher.search(x[:3], 3).scores[:, 0].min() > 0.999


# -- through the CLI --------------------------------------------------------------------------------------

@pytest.fixture
def families(tmp_path):
    root = tmp_path / "families"
    for kind in ("disc", "stripes", "noise"):
        (root / kind).mkdir(parents=True)
        for n in range(12):
            picture(kind, seed=n).save(root / kind / f"{kind}{n:02d}.png")
    return root


def test_index_records_the_engine_and_pca_and_search_says_which_answered(families, tiny_model, tmp_path):
    target = tmp_path / "ann.lookalike"
    result = run_cli("index", str(families), "--index", str(target), "--model", str(tiny_model), "--ann", "hnsw",
                     "--pca", "8", "-q")
    assert result.returncode == 0, result.stderr
    assert "searched with hnsw" in result.stdout
    facts = json.loads(run_cli("info", "--index", str(target), "--json").stdout)["search"]
    assert facts["engine"] == "hnsw" and facts["pca"] == 8 and facts["settings"]["ann"] == "hnsw"
    query = str(families / "disc" / "disc03.png")
    hits = json.loads(run_cli("search", query, "--index", str(target), "--json", "-k", "5").stdout)
    assert hits["engine"] == "hnsw on PCA-8, re-ranked, α-DBA 2 of 100"
    assert all("/disc/" in h["path"] for h in hits["results"][:3])
    exact = json.loads(run_cli("search", query, "--index", str(target), "--json", "-k", "5", "--ann",
                               "exact").stdout)
    assert exact["engine"].startswith("exact")
    # re-running without options keeps the settings
    run_cli("index", str(families), "--index", str(target), "-q")
    assert json.loads(run_cli("info", "--index", str(target), "--json").stdout)["search"]["engine"] == "hnsw"


@pytest.mark.parametrize("args, message", [
    (["--ann", "scann"], "scann"),
    (["--memory-budget", "lots"], "--memory-budget takes a size like 2GB"),
])
def test_bad_search_options_are_one_line(families, tiny_model, tmp_path, args, message):
    result = run_cli("index", str(families), "--index", str(tmp_path / "x.lookalike"), "--model", str(tiny_model),
                     *args, "-q")
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr


def test_neighbours_writes_every_image_with_its_k_nearest(families, tiny_model, tmp_path):
    target = tmp_path / "nb.lookalike"
    run_cli("index", str(families), "--index", str(target), "--model", str(tiny_model), "-q")
    result = run_cli("neighbours", "--index", str(target), "-k", "3", "--out", str(tmp_path / "nb.json"))
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "nb.json").read_text())
    assert len(rows) == 36 and all(len(r["neighbours"]) == 3 for r in rows)
    assert all(r["path"] not in [n["path"] for n in r["neighbours"]] for r in rows)  # never itself
    with Index.open(target) as index:
        ids, vectors = index.vectors()
        files = index.store.files(ids)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    expected = {files[int(i)][0]: [files[int(ids[j])][0] for j in np.argsort(-scores[n])[:3]]
                for n, i in enumerate(ids)}
    assert {r["path"]: [n["path"] for n in r["neighbours"]] for r in rows} == expected
    run_cli("neighbours", "--index", str(target), "-k", "2", "--out", str(tmp_path / "nb.csv"))
    with open(tmp_path / "nb.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 72 and table[0].keys() == {"path", "rank", "neighbour", "cosine"}
    bad = run_cli("neighbours", "--index", str(target), "--out", str(tmp_path / "nb.txt"))
    assert bad.returncode == 2 and "--out must end in .json or .csv" in bad.stderr


def test_augmentation_multiplies_its_small_matrices_on_one_blas_thread(monkeypatch):
    """α-DBA's Gram matrix of the shortlist is small: shared between BLAS threads on a busy machine it took
    tens of milliseconds instead of one (search/rerank.py). Every product it makes runs on one thread."""
    from threadpoolctl import threadpool_info

    from lookalike.search.rerank import Augmentation

    threads: list[int] = []
    matmul = np.matmul

    def spy(*args, **kwargs):  # the threads of numpy's own BLAS (scipy and faiss bring others, unused here)
        threads.append(max(info["num_threads"] for info in threadpool_info()
                           if info["user_api"] == "blas" and "numpy" in info["filepath"]))
        return matmul(*args, **kwargs)

    x = clustered(101, 64, seed=4)
    monkeypatch.setattr(np, "matmul", spy)
    Augmentation().rescore(x[:1], x[None, 1:])
    assert threads and set(threads) == {1}
