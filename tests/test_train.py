"""lookalike train: a head trained on a tiny generated dataset beats the frozen base, exports to ONNX exactly, and
the model folder works anywhere a model name does; bad datasets get a clear error or a reported skip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike import Index, images
from lookalike.errors import LookalikeError, ModelUnavailable
from lookalike.models.embedder import Embedder
from lookalike.models.registry import resolve_spec
from tests.conftest import run_cli

torch = pytest.importorskip("torch")

from lookalike.train import (  # noqa: E402
    TrainReport,
    TrainSettings,
    base_features,
    embed_with_head,
    export_model,
    split,
    train,
    train_head,
)


def striped(kind: int, seed: int) -> Image.Image:
    """Stripes whose colour is the class (red, green or blue) on a random background that covers most of the
    picture: the frozen tiny model mostly sees the background, a trained head can learn to look past it."""
    rng = np.random.default_rng(seed)
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    colour = [int(c) for c in rng.integers(0, 60, 3)]
    colour[kind] = int(rng.integers(180, 256))
    image = Image.new("RGB", (64, 64), background)
    draw = ImageDraw.Draw(image)
    for x in range(0, 64, int(rng.integers(5, 9))):
        draw.line((x, 0, x, 63), fill=tuple(colour), width=2)
    return image


@pytest.fixture
def stripes(tmp_path) -> Path:
    root = tmp_path / "stripes"
    for kind, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for n in range(30):
            striped(kind, 100 * kind + n).save(root / name / f"{name}{n:02d}.png")
    return root


SETTINGS = dict(dim=8, hidden=64, epochs=300, patience=30, learning_rate=3e-3, val=0.3, k=3)


def test_training_beats_the_frozen_base_on_held_out_images(stripes, tiny_model, tmp_path):
    report = train(stripes, tmp_path / "model", TrainSettings(base=str(tiny_model), **SETTINGS))
    assert report.classes == ["blue", "green", "red"]
    # stratified: of each class's 30, 6 are the test split (20 %), 9 validate early stopping (30 %), 15 train
    assert (report.train_images, report.val_images, report.test_images) == (45, 27, 18)
    assert len(report.test_paths) == 18 and not set(report.test_paths) & set(report.val_paths)  # untouched
    assert report.trained["p_at_3"] >= report.base["p_at_3"] + 0.15, (report.base, report.trained)
    assert report.trained["map"] > report.base["map"]
    spec = json.loads((tmp_path / "model" / "lookalike-model.json").read_text())
    assert spec["dims"] == 8 and spec["classes"] == report.classes and spec["base"] == "tiny"
    assert spec["metrics"]["trained"]["p_at_3"] == report.trained["p_at_3"]


def test_the_exported_graph_gives_the_torch_head_s_embeddings(stripes, tiny_model, tmp_path):
    base = Embedder(resolve_spec(str(tiny_model), precision="fp32")).spec
    paths, labels, features, _, _ = base_features(stripes, base)
    classes = sorted(set(labels))
    codes = np.array([classes.index(label) for label in labels])
    train_rows, val_rows = split(labels, 0.3, 0)
    settings = TrainSettings(base=str(tiny_model), **SETTINGS)
    head, *_ = train_head(features, codes, train_rows, val_rows, len(classes), settings)
    report = TrainReport(classes, len(train_rows), len(val_rows), 1, 1, 0.0, 0.0, 0.0, 0.0)
    export_model(head, base, tmp_path / "exported", classes, report, settings)
    exported = Embedder.load(str(tmp_path / "exported"))
    frozen = Embedder(base)
    chosen = paths[::7]
    pixels = np.stack([exported.prepare(images.load(p).image) for p in chosen])
    expected = embed_with_head(head, frozen.embed(pixels))
    np.testing.assert_allclose(exported.embed(pixels), expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)


def test_the_model_folder_indexes_and_searches_without_torch_in_the_way(stripes, tiny_model, tmp_path):
    train(stripes, tmp_path / "model", TrainSettings(base=str(tiny_model), **SETTINGS))
    index_path = tmp_path / "trained.lookalike"
    result = run_cli("index", str(stripes), "--index", str(index_path), "--model", str(tmp_path / "model"), "-q")
    assert result.returncode == 0, result.stderr
    held_out = striped(0, 999)  # a new red one
    query = tmp_path / "query.png"
    held_out.save(query)
    hits = json.loads(run_cli("search", str(query), "--index", str(index_path), "-k", "5", "--json").stdout)
    assert sum("/red/" in h["path"] for h in hits["results"]) >= 4
    with Index.open(index_path) as index:
        assert index.spec.dims == 8 and index.spec.name == "model"


def test_datasets_that_cannot_train_say_why(stripes, tiny_model, tmp_path):
    settings = TrainSettings(base=str(tiny_model), **SETTINGS)
    lonely = tmp_path / "lonely"
    (lonely / "only").mkdir(parents=True)
    striped(0, 1).save(lonely / "only" / "a.png")
    striped(0, 2).save(lonely / "only" / "b.png")
    with pytest.raises(LookalikeError, match="training needs at least 2"):
        train(lonely, tmp_path / "m1", settings)
    with pytest.raises(LookalikeError, match="dataset folder not found"):
        train(tmp_path / "missing", tmp_path / "m2", settings)
    with pytest.raises(LookalikeError, match="--loss must be one of"):
        train(stripes, tmp_path / "m3", TrainSettings(base=str(tiny_model), loss="triplet"))


def test_empty_class_folders_and_unreadable_images_are_reported_skips(stripes, tiny_model, tmp_path):
    (stripes / "empty").mkdir()
    (stripes / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = train(stripes, tmp_path / "model", TrainSettings(base=str(tiny_model), **SETTINGS))
    reasons = dict((Path(p).name, r) for p, r in report.skipped)
    assert reasons["empty"] == "empty class folder"
    assert "cannot decode" in reasons["broken.png"]
    assert report.classes == ["blue", "green", "red"]


def test_cli_train_and_a_folder_that_is_not_a_model(stripes, tiny_model, tmp_path):
    result = run_cli("train", str(stripes), "--out", str(tmp_path / "cli-model"), "--base", str(tiny_model),
                     "--dim", "8", "--hidden", "64", "--val", "0.3", "-k", "3", "-q")
    assert result.returncode == 0, result.stderr
    assert "test split: P@3" in result.stdout and "use it with `--model" in result.stdout
    with pytest.raises(ModelUnavailable, match="not a lookalike model folder"):
        resolve_spec(str(tmp_path))
    bad = run_cli("index", str(stripes), "--index", str(tmp_path / "x.lookalike"), "--model", str(stripes))
    assert bad.returncode == 4 and "not a lookalike model folder" in bad.stderr
