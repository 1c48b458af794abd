"""What a new user meets (issue 18): readable help and tables, progress for every long wait, extras checked
before the work, stale results flagged, the index found from another folder, settings that can be cleared."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest
from PIL import Image

from tests.conftest import picture, run_cli
from tests.test_cli import assert_one_line_error

COMMANDS = ("index", "search", "neighbours", "dupes", "serve", "train", "compare", "classify", "robustness",
            "features", "export", "import", "eval", "map", "models", "info")


@pytest.fixture
def indexed(tmp_path, tiny_model, photo_dir):
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "i.lookalike"), "--model", str(tiny_model),
                     "--mean", "0.5", "--std", "0.5", "-q")
    assert result.returncode == 0, result.stderr
    return tmp_path / "i.lookalike"


def without(tmp_path, module: str) -> dict:
    """An environment in which `import module` fails, as on a machine without that extra."""
    fake = tmp_path / "without" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "without"), os.environ.get("PYTHONPATH", "")])}


# -- help and tables ------------------------------------------------------------------------------------------

def test_help_is_grouped_and_shows_defaults_without_type_names():
    top = run_cli("--help", env={"COLUMNS": "100"})
    assert top.returncode == 0
    for panel in ("Search", "Duplicates", "Evaluate", "Explore a model", "Serve", "Index and models"):
        assert f"─ {panel} " in top.stdout, panel
    for command in COMMANDS:
        result = run_cli(command, "--help", env={"COLUMNS": "100"})
        assert result.returncode == 0, (command, result.stderr)
        text = result.stdout
        assert not re.search(r"<(bool|str|int|float|list|Path|path)", text), (command, text)
        assert all(len(line) <= 100 for line in text.splitlines()), command
    index_help = run_cli("index", "--help", env={"COLUMNS": "100"}).stdout
    flat = " ".join(index_help.replace("│", " ").split())
    assert "[default: int8 for the EfficientNet-Lite models, fp32 for others]" in flat
    assert "[default: one per core]" in flat and "[default: 32]" in flat


def test_models_table_never_cuts_a_name_at_80_columns():
    result = run_cli("models", env={"COLUMNS": "80"})
    assert result.returncode == 0
    for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50", "clip-vit-b32",
                 "dinov2-small"):
        assert name in result.stdout, name
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


# -- extras are checked before the work -----------------------------------------------------------------------

def test_a_missing_faiss_is_named_before_anything_is_embedded(tmp_path, tiny_model, photo_dir):
    target = tmp_path / "hnsw.lookalike"
    result = run_cli("index", str(photo_dir), "--index", str(target), "--model", str(tiny_model), "--ann", "hnsw",
                     env=without(tmp_path, "faiss"))
    assert_one_line_error(result, "pip install 'lookalike[ann]'")
    assert "--ann hnsw" in result.stderr
    assert not target.exists()  # nothing was built or embedded


def test_a_milvus_index_without_pymilvus_names_the_extra(tmp_path, photo_dir):
    env = without(tmp_path, "pymilvus")
    assert_one_line_error(run_cli("info", "--index", str(tmp_path / "x.db"), env=env), "'lookalike[milvus]'")
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "x.db"), env=env)
    assert_one_line_error(result, "'lookalike[milvus]'")
    assert "internal error" not in result.stderr


# -- progress for long waits ----------------------------------------------------------------------------------

def test_first_int8_build_and_ann_build_say_what_they_do_and_quiet_silences(tmp_path, tiny_model, photo_dir):
    cache = {"LOOKALIKE_CACHE": str(tmp_path / "cache")}
    loud = run_cli("index", str(photo_dir), "--index", str(tmp_path / "a.lookalike"), "--model", str(tiny_model),
                   "--precision", "int8", "--ann", "hnsw", env=cache)
    assert loud.returncode == 0, loud.stderr
    assert "int8 copy of tiny (once): calibration" in loud.stderr
    assert "calibrating" in loud.stderr and "quantising" in loud.stderr
    assert "building the hnsw index over 9 images" in loud.stderr
    assert "indexing" in loud.stderr
    quiet = run_cli("index", str(photo_dir), "--index", str(tmp_path / "b.lookalike"), "--model", str(tiny_model),
                    "--mean", "0.5", "--std", "0.5", "--precision", "int8", "--ann", "annoy", "-q",
                    env={"LOOKALIKE_CACHE": str(tmp_path / "c2")})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == ""


def test_map_says_what_it_does(indexed, tmp_path):
    result = run_cli("map", "--index", str(indexed), "--out", str(tmp_path / "map.png"))
    assert result.returncode == 0, result.stderr
    assert "laying out 9 images with PCA and t-SNE" in result.stderr and "drawing the thumbnails" in result.stderr
    quiet = run_cli("map", "--index", str(indexed), "--out", str(tmp_path / "map2.png"), "-q")
    assert quiet.returncode == 0 and quiet.stderr.strip() == ""


# -- stale results --------------------------------------------------------------------------------------------

def test_search_flags_files_that_are_gone_or_changed_and_says_how_to_refresh(indexed, photo_dir):
    gone = photo_dir / "disc" / "disc0.jpg"
    changed = photo_dir / "disc" / "disc2.jpg"
    gone.unlink()
    picture("stripes", seed=9).save(changed, quality=50)
    os.utime(changed, (time.time() + 5, time.time() + 5))
    query = photo_dir / "disc" / "disc1.png"
    result = run_cli("search", str(query), "--index", str(indexed), "-k", "9", "--json")
    assert result.returncode == 0, result.stderr
    states = {r["path"]: r["stale"] for r in json.loads(result.stdout)["results"]}
    assert states[str(gone)] == "gone" and states[str(changed)] == "changed" and states[str(query)] is None
    assert "2 of these files changed since they were indexed (1 gone, 1 modified)" in result.stderr
    assert f"lookalike index '{photo_dir}' --index {indexed}" in result.stderr
    table = run_cli("search", str(query), "--index", str(indexed), "-k", "9",  # the terminal table flags them too
                    env={"TTY_COMPATIBLE": "1", "COLUMNS": "300", "NO_COLOR": "1"})
    assert "(gone since indexed)" in table.stdout and "(changed since indexed)" in table.stdout
    assert "[red]" not in table.stdout and "\\" not in table.stdout  # styled, never markup or escapes shown
    assert run_cli("index", str(photo_dir), "--index", str(indexed), "-q").returncode == 0
    again = run_cli("search", str(query), "--index", str(indexed), "-k", "8", "--json")
    assert all(r["stale"] is None for r in json.loads(again.stdout)["results"]) and "changed" not in again.stderr


# -- finding the index ----------------------------------------------------------------------------------------

def test_search_finds_the_index_up_the_tree_and_says_where(tmp_path, tiny_model, photo_dir):
    result = run_cli("index", str(photo_dir), "--model", str(tiny_model), "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    query = str(photo_dir / "noise" / "noise1.png")
    below = run_cli("search", query, "-k", "1", cwd=photo_dir / "noise")
    assert below.returncode == 0, below.stderr
    assert below.stdout.splitlines()[1].endswith("noise1.png")
    assert f"using {tmp_path / 'index.lookalike'} (the nearest index.lookalike above" in below.stderr
    here = run_cli("search", query, "-k", "1", cwd=tmp_path)
    assert here.returncode == 0 and here.stderr.strip() == ""


def test_search_elsewhere_uses_the_index_last_written(tmp_path, tiny_model, photo_dir):
    cache = {"LOOKALIKE_CACHE": str(tmp_path / "cache")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nothing = run_cli("info", cwd=elsewhere, env=cache)
    assert_one_line_error(nothing, "no index here, above here, or recorded")
    built = tmp_path / "kept" / "photos.lookalike"
    assert run_cli("index", str(photo_dir), "--index", str(built), "--model", str(tiny_model), "-q",
                   env=cache).returncode == 0
    found = run_cli("info", "--json", cwd=elsewhere, env=cache)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["index"] == str(built)
    assert f"using {built} (the index `lookalike index` last wrote" in found.stderr


# -- settings that stick, and can be cleared --------------------------------------------------------------------

def test_pca_budget_and_engine_can_be_cleared_and_bad_values_refused(indexed, photo_dir):
    base = ["index", str(photo_dir), "--index", str(indexed), "-q"]
    assert_one_line_error(run_cli(*base, "--pca", "5000"), "--pca 5000 is not below the model's 16 dims")
    assert_one_line_error(run_cli(*base, "--memory-budget", "0"), "leaves no memory at all")
    assert_one_line_error(run_cli(*base, "--pca", "lots"), "--pca takes a number of dims, or none")
    assert run_cli(*base, "--pca", "4", "--whiten", "--memory-budget", "2GB", "--ann", "exact-f16").returncode == 0
    settings = json.loads(run_cli("info", "--index", str(indexed), "--json").stdout)["search"]["settings"]
    assert settings == {**settings, "pca": 4, "whiten": True, "memory_budget": 2_000_000_000, "ann": "exact-f16"}
    assert "on PCA-4, whitened, re-ranked" in run_cli("info", "--index", str(indexed)).stdout
    assert run_cli(*base, "--pca", "none", "--memory-budget", "none", "--ann", "auto").returncode == 0
    settings = json.loads(run_cli("info", "--index", str(indexed), "--json").stdout)["search"]["settings"]
    assert settings["pca"] == 0 and settings["memory_budget"] is None and settings["ann"] == "auto"


def test_an_onnx_file_without_statistics_says_once_which_it_gets(tmp_path, tiny_model, photo_dir):
    result = run_cli("index", str(photo_dir), "--index", str(tmp_path / "n.lookalike"), "--model", str(tiny_model),
                     "-q")
    assert result.returncode == 0
    assert result.stderr.count("is fed with ImageNet's mean and std") == 1
    again = run_cli("index", str(photo_dir), "--index", str(tmp_path / "n.lookalike"), "-q")
    assert "ImageNet's mean" not in again.stderr


# -- the look-closer tools ------------------------------------------------------------------------------------

def test_robustness_says_which_augmentation_each_copy_got(tmp_path, tiny_model):
    image = tmp_path / "disc.png"
    picture("disc", seed=3).save(image)
    result = run_cli("robustness", str(image), "-n", "3", "--model", str(tiny_model), "--json")
    assert result.returncode == 0, result.stderr
    edits = json.loads(result.stdout)["augmentations"]
    assert len(edits) == 3 and all(e.startswith("rotate ") and "zoom" in e for e in edits)
    assert len(set(edits)) == 3


def test_compare_heatmap_has_a_panel_per_model(tmp_path, tiny_model, thumbnail_model):
    paths = []
    for kind in ("disc", "stripes", "noise"):
        paths.append(tmp_path / f"{kind}.png")
        picture(kind).save(paths[-1])
    one = run_cli("compare", *map(str, paths), "-m", str(tiny_model), "--heatmap", str(tmp_path / "one.png"))
    two = run_cli("compare", *map(str, paths), "-m", str(tiny_model), "-m", str(thumbnail_model), "--heatmap",
                  str(tmp_path / "two.png"))
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    with Image.open(tmp_path / "one.png") as a, Image.open(tmp_path / "two.png") as b:
        assert b.width > 1.6 * a.width


def test_features_json_and_an_overview_with_the_input(tmp_path, tiny_model):
    image = tmp_path / "stripes.png"
    picture("stripes").save(image)
    result = run_cli("features", str(image), "--model", str(tiny_model), "--out", str(tmp_path / "maps"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(b["channels"], b["height"]) for b in data["blocks"]] == [(8, 32), (16, 16)]
    assert all(os.path.isfile(b["png"]) for b in data["blocks"])
    with Image.open(data["overview"]) as overview:
        assert overview.width > overview.height * 2.5  # the input and two blocks side by side


def test_classify_with_a_model_without_classifier_says_so_before_any_download(tmp_path):
    image = tmp_path / "disc.png"
    picture("disc").save(image)
    result = run_cli("classify", str(image), "--model", "clip-vit-b32")
    assert_one_line_error(result, "clip-vit-b32 has no classifier head")
    assert "Hub" not in result.stderr


# -- serve ----------------------------------------------------------------------------------------------------

def test_serve_on_a_taken_port_is_one_line(indexed):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--index", str(indexed), "--port", str(port), timeout=60)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port} (Address already in use): another server")
    assert "--port" in result.stderr


# -- HEIC by default ------------------------------------------------------------------------------------------

def test_heic_photos_are_indexed_out_of_the_box_and_pillow_is_changed_only_when_one_is_met(tmp_path, tiny_model):
    import subprocess
    import sys

    pillow_heif = pytest.importorskip("pillow_heif")  # a core dependency: only a broken install lacks it
    folder = tmp_path / "phone"
    folder.mkdir()
    pillow_heif.from_pillow(picture("disc", seed=4)).save(folder / "IMG_0001.HEIC", quality=90)
    pillow_heif.from_pillow(picture("noise", seed=4)).save(folder / "no-extension", quality=90)
    result = run_cli("index", str(folder), "--index", str(tmp_path / "h.lookalike"), "--model", str(tiny_model),
                     "--mean", "0.5", "--std", "0.5", "-q")
    assert result.returncode == 0, result.stderr
    assert "2 indexed, 0 unchanged, 0 removed, 0 failed" in result.stdout
    code = ("import lookalike, lookalike.index, lookalike.images\nfrom PIL import Image\n"
            "print('HEIF' in Image.OPEN)")
    opened = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert opened.stdout.strip() == "False"


def test_eval_shows_the_reference_column_only_for_caltech101(tmp_path, tiny_model, photo_dir):
    result = run_cli("eval", str(photo_dir), "--model", str(tiny_model), "--pca", "2", "--no-timing", "-q",
                     "--report", str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("figure"))
    assert header.split() == ["figure", "lookalike"]
    assert re.search(r"ranking .*α-DBA 2", result.stdout)  # says how it ranked, as search does by default
    plain = run_cli("eval", str(photo_dir), "--index", str(tmp_path / "photos.lookalike"), "--pca", "none",
                    "--no-timing", "--dba", "0", cwd=tmp_path)
    assert re.search(r"ranking .*plain cosine", plain.stdout)
    page = (tmp_path / "report" / "report.md").read_text()
    assert "| figure | lookalike |\n" in page and "ResNet-50" not in page
    data = json.loads(run_cli("eval", str(photo_dir), "--index", str(tmp_path / "photos.lookalike"), "--pca", "none",
                              "--no-timing", "--json", cwd=tmp_path).stdout)
    assert data["reference"] is None and data["images"] == 9
