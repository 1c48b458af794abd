"""Issue 15: aspect-kept inputs, descriptor versions that say how to rebuild, and α-query expansion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lookalike import Index
from lookalike.errors import ModelMismatch, UsageError
from lookalike.models.embedder import Embedder
from lookalike.models.registry import MODELS, ModelSpec, resolve_spec
from lookalike.search.rerank import QueryExpansion
from lookalike.storage.sqlite import Store
from tests.conftest import build_tiny_model, picture, run_cli


@pytest.fixture(scope="module")
def any_size_model(tmp_path_factory):
    """The tiny model with free height and width, as the default model's graph has."""
    import onnx

    path = build_tiny_model(tmp_path_factory.mktemp("model") / "any.onnx")
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, path)
    return path


@pytest.fixture
def longer_spec(any_size_model) -> ModelSpec:
    return replace(resolve_spec(str(any_size_model), input_size=64), resize="longer")


def test_input_shape_keeps_the_aspect_ratio_in_multiples_of_32():
    spec = MODELS["lite0-320"]
    assert spec.resize == "longer" and spec.gem == 3.0 and MODELS["efficientnet-lite0"].resize == "square"
    assert spec.input_shape(325, 243) == (320, 224)  # 239 rounds to 224
    assert spec.input_shape(243, 325) == (224, 320)
    assert spec.input_shape(4000, 3000) == (320, 256)  # 240 rounds to 256
    assert spec.input_shape(3999, 144) == (320, 32)  # never below one stride
    assert spec.input_shape(100, 100) == (320, 320)  # small images are enlarged like any other
    square = replace(spec, resize="square", input_size=224)
    assert square.input_shape(325, 243) == (224, 224)


def test_embedder_prepares_aspect_kept_arrays_and_embeds_mixed_shapes_in_order(longer_spec):
    embedder = Embedder(longer_spec)
    wide, tall = picture("disc", 0, (120, 60)), picture("stripes", 0, (60, 120))
    assert embedder.prepare(wide).shape == (32, 64, 3)
    assert embedder.prepare(tall).shape == (64, 32, 3)
    together = embedder.embed_images([wide, tall, wide])
    alone = np.stack([embedder.embed_images([image])[0] for image in (wide, tall, wide)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_indexing_images_of_many_shapes_stores_each_with_its_own_vector(longer_spec, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = [(120, 60), (60, 120), (90, 90), (200, 50), (64, 64), (50, 200), (120, 61)]
    for n, size in enumerate(sizes * 3):
        picture(("disc", "stripes", "noise")[n % 3], seed=n, size=size).save(folder / f"p{n:02d}.png")
    with Index.open(tmp_path / "mixed.lookalike", model=longer_spec, create=True) as index:
        summary = index.add([folder], batch_size=2)  # several shapes, batches of two: partial batches at the end
        assert (summary.indexed, summary.failed) == (21, 0)
        embedder = Embedder(longer_spec)
        for n in (0, 3, 13, 20):  # each stored vector is the one its own picture gives
            expected = embedder.embed_images([picture(("disc", "stripes", "noise")[n % 3], seed=n,
                                                      size=(sizes * 3)[n])])[0]
            found = index.search(expected, k=1)[0]
            assert found.path == str(folder / f"p{n:02d}.png") and found.score == pytest.approx(1.0, abs=1e-4)


# -- descriptor versions ------------------------------------------------------------------------------------

def _old_index(path) -> ModelSpec:
    old = replace(MODELS["efficientnet-lite0"], version=1, gem=0.0)
    store = Store.create(path, old)
    store.add_root("/photos/my trip")
    store.close()
    return old


def test_an_index_of_an_older_descriptor_says_in_one_line_how_to_rebuild(tmp_path):
    path = tmp_path / "old.lookalike"
    _old_index(path)
    with pytest.raises(ModelMismatch) as caught:
        Index.open(path, model="efficientnet-lite0")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert "v1: average pooling, 224x224 px" in message and "v2: GeM p=3, 224x224 px" in message
    assert f"lookalike index '/photos/my trip' --index {tmp_path / 'old-v2.lookalike'}" in message
    with Index.open(path) as index:  # without --model it still opens, as what it is, and says how to rebuild
        assert index.spec.version == 1
        assert index.outdated() == message


def test_the_cli_refuses_an_old_index_for_the_new_model_with_the_rebuild_command(tmp_path):
    path = tmp_path / "old.lookalike"
    _old_index(path)
    result = run_cli("index", str(tmp_path), "--index", str(path), "--model", "efficientnet-lite0", "-q")
    assert result.returncode == 5  # ModelMismatch: rebuild it
    assert "rebuild with `lookalike index" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_spec_stored_before_descriptor_versions_reads_as_version_1():
    stored = replace(MODELS["efficientnet-lite0"], version=1, gem=0.0)
    data = stored.to_json()
    for key in ('"version": 1, ', '"resize": "square", ', '"gem": 0.0, '):
        assert key in data
        data = data.replace(key, "")
    assert ModelSpec.from_json(data) == stored
    assert ModelSpec.from_json(data).fingerprint() != MODELS["efficientnet-lite0"].fingerprint()


# -- query expansion ---------------------------------------------------------------------------------------

def test_expand_weights_neighbours_by_similarity_to_the_power_alpha():
    query = np.array([[1.0, 0.0, 0.0]], np.float32)
    neighbours = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], np.float32)
    scores = np.array([[0.5, -0.2]], np.float32)  # negative similarity: weight 0
    expanded = QueryExpansion(2, alpha=3.0).expand(query, neighbours, scores)
    expected = np.array([1.0, 0.125, 0.0]) / np.hypot(1.0, 0.125)
    np.testing.assert_allclose(expanded[0], expected, atol=1e-6)
    np.testing.assert_allclose(QueryExpansion(1, alpha=0.0).expand(query, neighbours, scores)[0],
                               np.array([1.0, 1.0, 0.0]) / np.sqrt(2), atol=1e-6)
    with pytest.raises(UsageError, match="--qe"):
        QueryExpansion(-1)


@pytest.mark.parametrize("ann", ["exact", "hnsw"])
def test_search_with_query_expansion_searches_again_with_the_expanded_query(tmp_path, tiny_model, photo_dir, ann):
    with Index.open(tmp_path / "qe.lookalike", model=str(tiny_model), create=True) as index:
        index.add([photo_dir])
        query = photo_dir / "disc" / "disc0.jpg"
        vector = index.embed(query)
        first = index.search(vector, k=2, ann=ann)
        ids, vectors = index.vectors()
        rows = np.searchsorted(ids, [h.id for h in first])
        by_hand = QueryExpansion(2).expand(vector[None], vectors[rows][None], np.array([[h.score for h in first]]))
        expected = index.search(by_hand[0], k=9, ann=ann, qe=0)
        expanded = index.search(query, k=9, ann=ann, qe=2)
        assert [h.path for h in expanded] == [h.path for h in expected]
        assert [h.score for h in expanded] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert "α-QE 2" in expanded.engine
        plain = index.search(query, k=9, ann=ann)
        assert plain.engine == index.search(query, k=9, ann=ann, qe=0).engine  # off by default
        similar = index.similar(query, k=8, ann=ann, qe=2)  # the query itself is left out of both searches
        assert str(query) not in [h.path for h in similar] and len(similar) == 8
