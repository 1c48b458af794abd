"""The `lookalike` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.conftest import build_tiny_model, picture, run_cli


def assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


@pytest.fixture
def indexed(tmp_path, tiny_model, photo_dir):
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "i.lookalike"), "--model", str(tiny_model),
                     "--batch-size", "4", "-q")
    assert result.returncode == 0, result.stderr
    return tmp_path / "i.lookalike"


def test_index_prints_a_summary_and_rerun_skips_unchanged(indexed, photo_dir):
    result = run_cli("index", str(photo_dir), "--index", str(indexed), "-q")
    assert result.returncode == 0, result.stderr
    assert "0 indexed, 9 unchanged, 0 removed, 0 failed" in result.stdout


def test_search_prints_a_table_json_and_a_grid(indexed, photo_dir, tmp_path):
    query = photo_dir / "disc" / "disc1.png"
    table = run_cli("search", str(query), "--index", str(indexed), "-k", "3")
    assert table.returncode == 0, table.stderr
    assert table.stderr == ""  # nothing was waited for: no progress display, not even an empty line
    header, first, *_ = table.stdout.splitlines()  # piped output: tab-separated, whole paths
    assert header.split("\t") == ["rank", "cosine (re-ranked)", "path"]  # the default re-ranking's score
    assert first.split("\t")[0] == "1" and first.split("\t")[2] == str(query)
    plain = run_cli("search", str(query), "--index", str(indexed), "-k", "3", "--dba", "0").stdout.splitlines()
    assert plain[0].split("\t") == ["rank", "cosine", "path"] and plain[1].split("\t")[1] == "1.0000"

    result = run_cli("search", str(query), "--index", str(indexed), "-k", "3", "--json", "--grid",
                     str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert data["results"][0]["path"] == str(query) and data["model"] == "tiny"
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 3 * 200 and grid.height > 200  # query + 3 results in a row


def test_search_by_id_leaves_the_image_out(indexed, photo_dir):
    query = photo_dir / "noise" / "noise0.jpg"
    result = run_cli("search", "--id", str(query), "--index", str(indexed), "-k", "2", "--json",
                     "--metric", "euclidean")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    paths = [r["path"] for r in data["results"]]
    assert str(query) not in paths and all("/noise/" in p for p in paths)
    assert data["metric"] == "euclidean" and data["results"][0]["score"] >= 0


def test_search_by_id_of_a_file_replaced_since_indexing_says_so(indexed, photo_dir):
    """A tester's finding: the neighbours of the picture indexed under that name came back without a word."""
    query = photo_dir / "noise" / "noise0.jpg"
    picture("disc", seed=5, size=(90, 70)).save(query)
    result = run_cli("search", "--id", str(query), "--index", str(indexed), "-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["query_stale"] == "changed"
    assert "changed since it was indexed" in result.stderr and "lookalike index" in result.stderr


def test_info_reports_counts_model_and_failures(indexed, photo_dir):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert run_cli("index", str(photo_dir), "--index", str(indexed), "-q").returncode == 0
    text = run_cli("info", "--index", str(indexed))
    assert text.returncode == 0
    assert "9 indexed, 1 failed" in text.stdout and "broken.jpg" in text.stdout
    data = json.loads(run_cli("info", "--index", str(indexed), "--json").stdout)
    assert data["images"] == 9 and data["model"] == "tiny" and data["dims"] == 16 and data["input_size"] == 64
    assert data["failures"][0]["path"].endswith("broken.jpg")


def test_models_lists_the_registry_with_availability():
    result = run_cli("models", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["efficientnet-lite0"]["default"] and rows["efficientnet-lite0"]["dims"] == 1280
    assert rows["resnet50"]["dims"] == 2048 and rows["resnet50"]["available"].startswith("no")
    assert {"efficientnet-lite1", "efficientnet-lite2", "clip-vit-b32", "dinov2-small"} <= set(rows)


def test_version_and_help_do_not_import_heavy_libraries():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("lookalike ")
    import subprocess
    import sys

    code = ("import sys; from lookalike import cli; sys.argv=['lookalike','--help']\n"
            "try: cli.main()\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch','onnxruntime','huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")


def test_missing_index(tmp_path, photo_dir):
    result = run_cli("search", str(photo_dir / "disc" / "disc0.jpg"), "--index", str(tmp_path / "none.lookalike"))
    assert_one_line_error(result, "no index at")
    assert_one_line_error(run_cli("info", "--index", str(tmp_path / "none.lookalike")), "no index at")


def test_query_that_is_not_an_image(indexed, tmp_path):
    (tmp_path / "q.jpg").write_text("text")
    assert_one_line_error(run_cli("search", str(tmp_path / "q.jpg"), "--index", str(indexed)), "not an image")
    assert_one_line_error(run_cli("search", str(tmp_path / "nope.jpg"), "--index", str(indexed)), "not found")
    assert_one_line_error(run_cli("search", "--id", str(tmp_path / "nope.jpg"), "--index", str(indexed)),
                          "is not in the index")


def test_query_and_id_together_or_neither(indexed, photo_dir):
    q = str(photo_dir / "disc" / "disc0.jpg")
    assert_one_line_error(run_cli("search", q, "--id", q, "--index", str(indexed)), "either")
    assert_one_line_error(run_cli("search", "--index", str(indexed)), "either")


def test_empty_index(tmp_path, tiny_model, photo_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("index", str(empty), "--index", str(tmp_path / "e.lookalike"), "--model", str(tiny_model), "-q")
    assert result.returncode == 0 and "0 indexed" in result.stdout
    result = run_cli("search", str(photo_dir / "disc" / "disc0.jpg"), "--index", str(tmp_path / "e.lookalike"))
    assert_one_line_error(result, "holds no images")


def test_unknown_model_and_wrong_model(indexed, photo_dir, tmp_path):
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "n.lookalike"), "--model", "resnet-999")
    assert_one_line_error(result, "unknown model 'resnet-999'")
    assert not (tmp_path / "n.lookalike").exists()
    other = build_tiny_model(tmp_path / "other.onnx", seed=3)
    result = run_cli("index", str(photo_dir), "--index", str(indexed), "--model", str(other))
    assert_one_line_error(result, "holds vectors of tiny")
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "m.lookalike"), "--model",
                     str(tmp_path / "missing.onnx"))
    assert_one_line_error(result, "model file not found")


def test_bad_preprocessing_options(photo_dir, tiny_model, tmp_path):
    base = ["index", str(photo_dir), "--index", str(tmp_path / "p.lookalike"), "--model", str(tiny_model)]
    assert_one_line_error(run_cli(*base, "--mean", "a,b,c"), "--mean must be")
    assert_one_line_error(run_cli(*base, "--std", "0.5,0.5"), "--std needs one value or three")
    assert_one_line_error(run_cli(*base, "--input-size", "128"), "takes 64px input")
    named = ["index", str(photo_dir), "--index", str(tmp_path / "q.lookalike"), "--model", "efficientnet-lite0"]
    assert_one_line_error(run_cli(*named, "--mean", "0.5"), "apply to ONNX files only")


def test_a_file_that_is_not_an_onnx_model(photo_dir, tmp_path):
    (tmp_path / "fake.onnx").write_text("nope")
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "f.lookalike"), "--model",
                     str(tmp_path / "fake.onnx"))
    assert_one_line_error(result, "is not a usable ONNX model")
    assert not (tmp_path / "f.lookalike").exists()


def test_index_path_that_is_not_an_index(photo_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "notes.txt"))
    assert_one_line_error(result, "is not a lookalike index")
    assert (tmp_path / "notes.txt").read_text() == "my notes"


def test_custom_preprocessing_is_recorded(photo_dir, tiny_model, tmp_path):
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "c.lookalike"), "--model", str(tiny_model),
                     "--mean", "0.5", "--std", "0.25,0.25,0.25", "-q")
    assert result.returncode == 0, result.stderr
    data = json.loads(run_cli("info", "--index", str(tmp_path / "c.lookalike"), "--json").stdout)
    assert data["mean"] == [0.5, 0.5, 0.5] and data["std"] == [0.25, 0.25, 0.25]
    picture("disc").save(tmp_path / "x.jpg")
    # the same file with other preprocessing would give other vectors: refused
    result = run_cli("index", str(tmp_path / "x.jpg"), "--index", str(tmp_path / "c.lookalike"), "--model",
                     str(tiny_model))
    assert_one_line_error(result, "holds vectors of tiny")


def test_exit_status_names_the_failure_and_messages_are_not_markup(tmp_path):
    """3 for something not found, 2 for a bad option; the message's brackets print as they are."""
    missing = run_cli("search", str(tmp_path / "[red]gone.jpg"), "--index", str(tmp_path / "none.lookalike"))
    assert missing.returncode == 3, missing.stderr
    assert "[red]gone.jpg" in missing.stderr or "none.lookalike" in missing.stderr
    usage = run_cli("index", str(tmp_path), "--index", str(tmp_path / "i.lookalike"), "--memory-budget", "lots")
    assert usage.returncode == 2 and "--memory-budget takes a size" in usage.stderr
    assert "Traceback" not in missing.stderr + usage.stderr


def test_help_lists_the_exit_codes():
    result = run_cli("--help", env={"COLUMNS": "100"})
    assert result.returncode == 0 and "3 not found" in result.stdout
