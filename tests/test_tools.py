"""compare, classify, robustness and feature maps: mechanics with the fixture model, one sanity check each with
the real default model on real photos, and clear errors for what is not an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageOps

from lookalike.errors import ModelUnavailable, NotAnImage
from lookalike.explore.classify import classify
from lookalike.explore.compare import compare
from lookalike.explore.featuremaps import draw, feature_maps
from lookalike.explore.robustness import augmented, robustness
from tests.conftest import CALTECH, picture, run_cli

real = pytest.mark.skipif(not CALTECH.is_dir(), reason="../shared/datasets/caltech101 is not present")


@pytest.fixture
def three(tmp_path):
    paths = []
    for kind in ("disc", "stripes", "noise"):
        path = tmp_path / f"{kind}.png"
        picture(kind, seed=2).save(path)
        paths.append(path)
    return paths


def test_compare_gives_a_symmetric_matrix_per_model(three, tiny_model, thumbnail_model):
    scores = compare(three, [str(tiny_model), str(thumbnail_model)])
    assert set(scores) == {"tiny", "thumbnail"}
    for matrix in scores.values():
        assert matrix.shape == (3, 3)
        np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
        np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)


def test_compare_cli_two_images_many_images_json_and_heatmap(three, tiny_model, tmp_path):
    two = run_cli("compare", str(three[0]), str(three[0]), "--model", str(tiny_model))
    assert two.returncode == 0 and two.stdout.split()[0] == "1.0000"
    many = run_cli("compare", *map(str, three), "--model", str(tiny_model), "--json", "--heatmap",
                   str(tmp_path / "heat.png"))
    assert many.returncode == 0, many.stderr
    assert len(json.loads(many.stdout)["cosine"]["tiny"]) == 3
    with Image.open(tmp_path / "heat.png") as heat:
        assert heat.width > 300
    one = run_cli("compare", str(three[0]))
    assert one.returncode == 2 and "at least two images" in one.stderr


def test_not_an_image_is_one_clear_line(three, tmp_path, tiny_model):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(NotAnImage, match=r"notes\.jpg"):
        compare([three[0], text], [str(tiny_model)])
    for args in (["compare", str(three[0]), str(text)], ["classify", str(text)], ["robustness", str(text)],
                 ["features", str(tmp_path / "missing.png")]):
        result = run_cli(*args, "--model", str(tiny_model))
        assert result.returncode in (3, 6) and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)


def test_a_model_without_a_classifier_says_so(three, tiny_model):
    with pytest.raises(ModelUnavailable, match="has no classifier head"):
        classify(three[:1], str(tiny_model))


def test_augmented_copies_are_seeded_and_vary(three, tiny_model):
    image = Image.open(three[0]).convert("RGB")
    first, again = augmented(image, 4, seed=3), augmented(image, 4, seed=3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))
    assert all(copy.size == image.size for copy in first)
    copies, scores = robustness(three[0], [str(tiny_model)], n=5, seed=1)
    assert len(copies) == 5 and scores["tiny"].shape == (5,) and (scores["tiny"] <= 1.0001).all()


def test_robustness_cli_writes_copies_and_a_grid(three, tiny_model, tmp_path):
    result = run_cli("robustness", str(three[1]), "-n", "4", "--model", str(tiny_model), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "mean" in result.stdout and len(list((tmp_path / "r").glob("copy-*.jpg"))) == 4
    assert (tmp_path / "r" / "grid.png").is_file()


def test_feature_maps_of_each_resolution(three, tiny_model, tmp_path):
    blocks = feature_maps(three[0], str(tiny_model))
    assert [b.maps.shape for b in blocks] == [(8, 32, 32), (16, 16, 16)]  # the tiny model's two conv stages
    written = draw(blocks, tmp_path / "maps")
    assert [p.name for p in written] == ["block-1.png", "block-2.png", "overview.png"]


@pytest.mark.integration
@real
def test_real_model_compares_classifies_and_shows_five_blocks(tmp_path):
    plane = CALTECH / "airplanes" / "image_0001.jpg"
    flipped = tmp_path / "flipped.jpg"
    ImageOps.mirror(Image.open(plane)).save(flipped)
    other = CALTECH / "pizza" / "image_0001.jpg"
    matrix = compare([plane, flipped, other])["efficientnet-lite0"]
    assert matrix[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert matrix[0, 1] > matrix[0, 2] + 0.2
    labels = classify([plane], top=3)[0]
    assert labels[0].index in (404, 895, 908)  # airliner, warplane (its clean name: military aircraft), wing
    assert labels[0].probability > 0.5 and ("aircraft" in labels[0].name or labels[0].name in ("airliner", "wing"))
    assert sum(label.probability for label in labels) <= 1.0
    blocks = feature_maps(plane)
    sizes = [b.maps.shape[1] for b in blocks]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 112 and sizes[-1] == 7 and len(blocks) == 5
    _, scores = robustness(plane, n=6)
    assert 0.6 < scores["efficientnet-lite0"].mean() < 1.0


def test_plots_leave_the_host_programs_matplotlib_backend_alone(three, tiny_model, tmp_path):
    """A notebook's backend is the notebook's: drawing a heatmap or feature maps must not switch it."""
    import matplotlib

    from lookalike.explore.compare import heatmap

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend the library would never pick itself
    try:
        heatmap(three, compare(three, [str(tiny_model)])["tiny"], tmp_path / "h.png")
        draw(feature_maps(three[0], str(tiny_model)), tmp_path / "maps")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "h.png").stat().st_size > 0
    finally:
        matplotlib.use(before)
