"""Metrics against hand-computed cases, and `lookalike eval` / `lookalike map` end to end with the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from lookalike.evaluation.metrics import (
    average_precision,
    folder_labels,
    holidays_groups,
    nearest,
    neighbour_recall,
    precision_at_k,
    recall_at_k,
    regex_labels,
    trapezoid_ap,
)
from lookalike.evaluation.protocol import evaluate_vectors, pca_sweep
from lookalike.search.rerank import Augmentation, QueryExpansion
from tests.conftest import run_cli


def test_precision_at_k_averages_per_query_shares():
    relevant = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    assert precision_at_k(relevant) == pytest.approx((0.5 + 0 + 1) / 3)
    assert math.isnan(precision_at_k(np.zeros((0, 4), bool)))


def test_recall_at_k_skips_queries_with_nothing_to_find():
    relevant = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    assert recall_at_k(relevant, np.array([4, 0, 2])) == pytest.approx((2 / 4 + 0 / 2) / 2)
    assert math.isnan(recall_at_k(relevant[:1], np.array([0])))


def test_average_precision_by_hand():
    ranked = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    ap = average_precision(ranked)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx(1 / 2)
    assert math.isnan(ap[2])


def test_trapezoid_ap_by_hand():
    # holidays_map.py: a relevant image at 0-based rank r, the t-th found, adds (t/r + (t+1)/(r+1)) / 2 / R,
    # with t/r read as 1 at rank 0.
    ranked = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    ap = trapezoid_ap(ranked)
    assert ap[0] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)  # 0.7917, plain AP 0.8333
    assert ap[1] == pytest.approx((0 / 1 + 1 / 2) / 2)  # 0.25, plain AP 0.5
    assert math.isnan(ap[2])


def test_holidays_groups_and_queries_from_file_names():
    paths = ["/h/100000.jpg", "/h/100001.jpg", "/h/100100.JPG", "/h/100102.jpg", "/h/notes.jpg", "/h/1234.jpg"]
    groups, queries = holidays_groups(paths)
    assert groups == ["1000", "1000", "1001", "1001", None, None]
    assert queries.tolist() == [True, False, True, False, False, False]


def test_holidays_protocol_by_hand():
    # Group 1000: query 100000, with 100001 and 100002; group 1001: query 100100 with 100101; 555501 is in a
    # group without its query: relevant to nobody, a query for nobody, but it is ranked (a distractor).
    names = ["100000.jpg", "100001.jpg", "100002.jpg", "100100.jpg", "100101.jpg", "555501.jpg"]
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 1, 0], [0.5, 0.5, 0], [0.8, 0, 0.6]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    groups, queries = holidays_groups(names)
    result = evaluate_vectors(vectors, groups, k=1, queries=queries, trapezoid=True)
    # query 100000 ranks 100001 (0.994), 555501 (0.8), 100101 (0.707), 100002 (0): relevant at ranks 0 and 3
    first = ((1 + 1) / 2 + (1 / 3 + 2 / 4) / 2) / 2
    # query 100100 ranks 100101 (0.707) first: AP 1
    assert (result.queries, result.groups, result.images) == (2, 3, 6)
    assert result.map == pytest.approx((first + 1) / 2)
    assert result.p_at_k == pytest.approx(1.0)
    plain = evaluate_vectors(vectors, groups, k=1, queries=queries)
    assert plain.map == pytest.approx(((1 + 2 / 4) / 2 + 1) / 2)


def test_query_expansion_in_evaluation_pulls_in_the_other_view():
    # Query 0's group is {0, 1, 2}; 2 is far from 0 but close to 1, which is close to 0. A distractor (3)
    # sits between. Plain: 0 ranks 1, 3, 2; with α-QE (1 neighbour, α = 0: plain sum) the query becomes
    # 0 + 1, which is closer to 2 than to 3.
    vectors = np.array([[1, 0, 0], [0.9, 0.436, 0], [0.6, 0.8, 0], [0.7, 0, 0.714]], np.float32)
    labels = ["a", "a", "a", None]
    queries = np.array([True, False, False, False])
    plain = evaluate_vectors(vectors, labels, k=2, queries=queries)
    expanded = evaluate_vectors(vectors, labels, k=2, queries=queries, expansion=QueryExpansion(1, alpha=0.0))
    assert plain.map == pytest.approx((1 + 2 / 3) / 2)
    assert expanded.map == pytest.approx(1.0)


def test_augmentation_in_evaluation_reorders_the_head_of_each_ranking():
    # Query 0's group is {0, 1, 2}: 1 and 2 are nearly the same picture, each a little further from 0 than
    # the distractor 3, whose nearest neighbour (4) is far from 0. Plain: 0 ranks 3 first; augmented (1
    # neighbour, α = 1), 1 and 2 back each other up and go first, as Index.search orders its shortlist.
    vectors = np.array([[1, 0, 0, 0], [0.78, 0.626, 0, 0], [0.77, 0.638, 0, 0], [0.8, 0, 0.6, 0], [0.3, 0, 0.954, 0]],
                       np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = ["a", "a", "a", None, None]
    queries = np.array([True, False, False, False, False])
    plain = evaluate_vectors(vectors, labels, k=2, queries=queries)
    augmented = evaluate_vectors(vectors, labels, k=2, queries=queries, augmentation=Augmentation(1, alpha=1.0))
    assert plain.map == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert augmented.map == pytest.approx(1.0)
    short = evaluate_vectors(vectors, labels, k=2, queries=queries, augmentation=Augmentation(1, 1, alpha=1.0))
    assert short.map == pytest.approx(plain.map)  # a shortlist of one: nothing to re-order


def test_neighbour_recall_counts_shared_ids():
    assert neighbour_recall(np.array([[1, 2, 3], [5, 6, 7]]), np.array([[3, 4, 1], [5, 6, 7]])) == pytest.approx(
        (2 / 3 + 1) / 2)
    assert math.isnan(neighbour_recall(np.zeros((0, 3)), np.zeros((0, 3))))


def test_ties_go_to_the_image_stored_first():
    # The query's two neighbours are identical; the one stored first has another label, so it ranks first.
    vectors = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    result = evaluate_vectors(vectors, ["x", "y", "x"], k=1)
    # query 0: ranking [1 (y), 2 (x)] -> P@1 0, AP 1/2; query 1 (y): alone in its group; query 2: [1, 0]
    ap = average_precision(np.array([[0, 1]], bool))[0]
    assert ap == 0.5
    assert result.p_at_k == pytest.approx(0.0)
    assert result.map == pytest.approx(0.5)  # queries 0 and 2 only: y has no other image


def test_a_group_of_one_counts_in_p_at_k_but_not_in_map_or_recall():
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    result = evaluate_vectors(vectors, ["a", "a", "lonely"], k=1)
    assert result.p_at_k == pytest.approx(2 / 3)
    assert result.map == pytest.approx(1.0)
    assert result.recall_at_k == pytest.approx(1.0)
    assert result.per_group == {"a": 1.0, "lonely": 0.0}
    assert result.group_sizes == {"a": 2, "lonely": 1}


def test_unlabelled_images_are_distractors_not_queries():
    vectors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8]], np.float32)
    result = evaluate_vectors(vectors, ["a", None, "a"], k=1)
    assert result.queries == 2 and result.images == 3
    assert result.p_at_k == 0.0  # the distractor is each query's nearest
    assert result.map == pytest.approx(0.5)
    with pytest.raises(Exception, match="no image has a label"):
        evaluate_vectors(vectors, [None, None, None])


def test_nearest_matches_a_full_sort():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        got = nearest(x, 5, metric=metric, batch=64)
        scores = x @ x.T if metric == "cosine" else -((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(scores, -np.inf)
        np.testing.assert_array_equal(got, np.argsort(-scores, axis=1)[:, :5])


def test_pca_sweep_reaches_full_precision_with_enough_dims():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 32))
    x = np.concatenate([c + 0.3 * rng.normal(size=(25, 32)) for c in centres]).astype(np.float32)
    labels = [str(i // 25) for i in range(100)]
    sweep = dict(pca_sweep(x, labels, (1, 3, 16, 500), k=4))
    assert 500 not in sweep  # more dims than the data has are skipped
    assert sweep[16] == pytest.approx(1.0)
    assert sweep[1] < sweep[16]


def test_labels_from_folders_and_regex(tmp_path):
    paths = [str(tmp_path / "cats" / "a.jpg"), str(tmp_path / "dogs" / "x" / "b.jpg"), str(tmp_path / "c.jpg")]
    assert folder_labels(paths, tmp_path) == ["cats", "dogs/x", ""]
    assert regex_labels(["/p/0001_a.jpg", "/p/0001_b.jpg", "/p/other.jpg"], r"^(\d{4})_") == ["0001", "0001", None]
    assert regex_labels(["/p/ab12.jpg"], r"\d+") == ["12"]
    with pytest.raises(Exception, match="not a valid regular expression"):
        regex_labels(paths, "(")


# -- end to end -----------------------------------------------------------------------------------------

@pytest.fixture
def dataset(photo_dir, tiny_model, tmp_path):
    index_path = tmp_path / "eval.lookalike"
    result = run_cli("index", str(photo_dir), "--index", str(index_path), "--model", str(tiny_model), "-q")
    assert result.returncode == 0, result.stderr
    return photo_dir, index_path


def test_eval_reports_metrics_pca_and_timings_as_json(dataset):
    photos, index_path = dataset
    result = run_cli("eval", str(photos), "--index", str(index_path), "-k", "2", "--pca", "2,4,8", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["images"], data["queries"], data["groups"], data["k"]) == (9, 9, 3, 2)
    assert data["p_at_k"] >= 0.8 and data["map"] >= 0.8
    assert [d for d, _ in data["pca"]] == [2, 4, 8]
    names = [m["name"] for m in data["methods"]]
    assert any(n.startswith("exact") for n in names) and any("HNSW" in n for n in names)
    exact = next(m for m in data["methods"] if m["name"].startswith("exact, 16-d"))
    assert exact["recall_at_10"] == 1.0 and exact["ms_per_query"] > 0
    assert data["ms_per_image"] > 0
    assert set(data["per_group"]) == {"disc", "stripes", "noise"}


def test_eval_excludes_a_class_and_writes_a_report(dataset, tmp_path):
    photos, index_path = dataset
    report = tmp_path / "report"
    result = run_cli("eval", str(photos), "--index", str(index_path), "--exclude", "noise", "-k", "2",
                     "--pca", "none", "--no-timing", "--report", str(report))
    assert result.returncode == 0, result.stderr
    assert "6 queries, 2 groups" in result.stdout
    page = (report / "report.md").read_text()
    assert "| P@2, query excluded (6 queries, 2 groups) |" in page
    assert "![worst groups](worst.png)" in page
    with Image.open(report / "worst.png") as grid:
        assert grid.height > 200 and grid.width > 3 * 200  # 2 rows: a query and its 2 neighbours each


def test_eval_builds_an_index_when_none_is_given(photo_dir, tiny_model, tmp_path):
    result = run_cli("eval", str(photo_dir), "--model", str(tiny_model), "-k", "2", "--pca", "none", "--json",
                     "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (tmp_path / "photos.lookalike").is_file()
    assert data["extraction_images"] == 9 and data["extraction_s"] > 0


def test_eval_with_groups_from_file_names(dataset):
    photos, index_path = dataset
    # disc0.jpg, disc1.png, ... -> groups by the trailing digit, across the three folders
    result = run_cli("eval", str(photos), "--index", str(index_path), "--group-regex", r"(\d)\.", "-k", "1",
                     "--pca", "none", "--no-timing", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["groups"] == 3 and set(data["per_group"]) == {"0", "1", "2"}


def test_eval_holidays_protocol_end_to_end(tiny_model, tmp_path):
    from tests.conftest import picture

    folder = tmp_path / "holidays"
    folder.mkdir()
    for number, kind, seed in [(100000, "disc", 0), (100001, "disc", 1), (100100, "stripes", 0),
                               (100101, "stripes", 1), (100102, "stripes", 2), (100201, "noise", 0)]:
        picture(kind, seed=seed).save(folder / f"{number}.jpg", quality=92)
    result = run_cli("eval", str(folder), "--model", str(tiny_model), "--protocol", "holidays", "-k", "1",
                     "--pca", "none", "--no-timing", "--json", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["protocol"], data["images"], data["queries"], data["groups"]) == ("holidays", 6, 2, 3)
    assert data["map"] == pytest.approx(1.0) and data["p_at_k"] == pytest.approx(1.0)  # families are far apart
    table = run_cli("eval", str(folder), "--index", str(tmp_path / "holidays.lookalike"), "--protocol", "holidays",
                    "--pca", "none", "--no-timing")
    assert "trapezoid AP" in table.stdout and "87.0 %" not in table.stdout  # no Caltech reference beside it


@pytest.mark.parametrize("args, message, status", [
    (["missing-folder"], "dataset folder not found", 3),
    (["PHOTOS", "--pca", "ten"], "--pca takes dims", 2),
    (["PHOTOS", "--group-regex", "("], "not a valid regular expression", 2),
    (["PHOTOS", "--exclude", "disc", "--exclude", "stripes", "--exclude", "noise"], "holds no images below", 6),
    (["PHOTOS", "--protocol", "holidays"], "no Holidays query", 6),
    (["PHOTOS", "--protocol", "holidays", "--group-regex", "x"], "does not apply to --protocol holidays", 2),
])
def test_eval_bad_input_is_one_line(dataset, args, message, status):
    photos, index_path = dataset
    args = [str(photos) if a == "PHOTOS" else a for a in args]
    result = run_cli("eval", *args, "--index", str(index_path), "--no-timing")
    assert result.returncode == status  # each failure mode has its own exit status (errors.py)
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_map_draws_every_sampled_image(dataset, tmp_path):
    _, index_path = dataset
    out = tmp_path / "map.png"
    result = run_cli("map", "--index", str(index_path), "--out", str(out), "--sample", "6")
    assert result.returncode == 0, result.stderr
    assert "map of 6 images" in result.stdout
    with Image.open(out) as picture:
        pixels = np.asarray(picture.convert("RGB"))
    assert picture.size == (3000, 2400)
    assert (pixels < 250).any(axis=2).mean() > 0.001  # thumbnails were pasted on the white canvas


def test_map_needs_three_images_and_a_known_method(tmp_path, tiny_model, photo_dir):
    index_path = tmp_path / "two.lookalike"
    run_cli("index", str(photo_dir / "disc" / "disc0.jpg"), str(photo_dir / "disc" / "disc1.png"), "--index",
            str(index_path), "--model", str(tiny_model), "-q")
    result = run_cli("map", "--index", str(index_path), "--out", str(tmp_path / "m.png"))
    assert result.returncode == 6 and "a map needs at least 3" in result.stderr
    result = run_cli("map", "--index", str(index_path), "--method", "mds")
    assert result.returncode == 2 and "--method is tsne or umap" in result.stderr
