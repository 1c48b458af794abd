"""Issue 15: aspect-kept inputs, letterbox bars cut, descriptor versions and int8 recipes that say how to
rebuild, and α-query expansion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from lookalike import Index
from lookalike.errors import ModelMismatch, UsageError
from lookalike.images import trim_bars
from lookalike.models import files
from lookalike.models.embedder import Embedder
from lookalike.models.registry import INT8_RECIPE, MODELS, ModelSpec, resolve_spec
from lookalike.search.rerank import Augmentation, QueryExpansion
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
def families_index(tmp_path, tiny_model, photo_dir) -> Index:
    """An index of the generated photo families with the tiny model (each test closes it with `with`)."""
    index = Index.open(tmp_path / "families.lookalike", model=str(tiny_model), create=True)
    index.add([photo_dir])
    return index


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
            found = index.search(expected, k=1, dba=0)[0]  # plain cosine: 1 for itself
            assert found.path == str(folder / f"p{n:02d}.png") and found.score == pytest.approx(1.0, abs=1e-4)


# -- descriptor versions ------------------------------------------------------------------------------------

def _old_index(path) -> ModelSpec:
    old = replace(MODELS["efficientnet-lite0"], version=1, gem=0.0, trim=False, calibration=2)
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
    assert "v1: average pooling, 224x224 px, int8 with 8-bit weights" in message
    assert "v3: GeM p=3, 224x224 px, letterbox bars cut, int8 with 7-bit weights" in message
    assert f"lookalike index '/photos/my trip' --index {tmp_path / 'old-v3.lookalike'}" in message
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
    stored = replace(MODELS["efficientnet-lite0"], version=1, gem=0.0, trim=False, calibration=2)
    data = stored.to_json()
    for key in ('"version": 1, ', '"resize": "square", ', '"gem": 0.0, ', '"trim": false, ', '"calibration": 2, '):
        assert key in data
        data = data.replace(key, "")
    assert ModelSpec.from_json(data) == stored
    assert ModelSpec.from_json(data).fingerprint() != MODELS["efficientnet-lite0"].fingerprint()


# -- letterbox and pillarbox bars --------------------------------------------------------------------------

def _padded(image: Image.Image, size: tuple[int, int], colour=(255, 255, 255)) -> Image.Image:
    """`image` centred on a canvas of `size` filled with `colour`, as a program letterboxes a photo."""
    canvas = Image.new("RGB", size, colour)
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def test_pillarbox_and_letterbox_bars_are_cut_back_to_the_picture():
    photo = picture("noise", 1, (60, 80))  # a portrait photo...
    cut = trim_bars(_padded(photo, (140, 80)))  # ...padded into a landscape frame with white bars
    assert cut.size == photo.size
    assert np.abs(np.asarray(cut, np.int16) - np.asarray(photo, np.int16)).max() == 0
    wide = picture("noise", 2, (120, 50))
    assert trim_bars(_padded(wide, (120, 90), (0, 0, 0))).size == wide.size  # black letterbox bars
    assert trim_bars(wide) is wide  # nothing to cut


def test_flat_areas_that_are_not_centred_padding_stay():
    photo = np.asarray(picture("noise", 3, (100, 60))).copy()
    photo[:20] = 250  # a flat white sky touching the top edge only
    sky = Image.fromarray(photo)
    assert trim_bars(sky).size == sky.size
    uneven = Image.new("RGB", (100, 60), (255, 255, 255))  # bars of 10 and 40 px: not centred, not padding
    uneven.paste(picture("noise", 4, (50, 60)), (10, 0))
    assert trim_bars(uneven).size == uneven.size
    dot = _padded(picture("noise", 5, (20, 20)), (100, 100))  # a small object on a big plain ground
    assert trim_bars(dot).size == dot.size  # would keep under 40 % of a side: left as it is


def test_with_trim_the_same_photo_padded_or_not_gives_the_same_vector(tiny_model):
    plain = Embedder(resolve_spec(str(tiny_model)))
    trimming = Embedder(replace(resolve_spec(str(tiny_model)), trim=True))
    photo = picture("noise", 6, (48, 64))
    padded = _padded(photo, (96, 64))
    same = float(trimming.embed_images([photo])[0] @ trimming.embed_images([padded])[0])
    before = float(plain.embed_images([photo])[0] @ plain.embed_images([padded])[0])
    assert same > 0.999 and before < same - 0.01


def test_the_default_models_cut_bars_and_record_it():
    assert MODELS["efficientnet-lite0"].trim and MODELS["lite0-320"].trim
    assert MODELS["efficientnet-lite0"].version == 3
    untrimmed = replace(MODELS["efficientnet-lite0"], trim=False)
    assert untrimmed.fingerprint() != MODELS["efficientnet-lite0"].fingerprint()


# -- the int8 recipe ---------------------------------------------------------------------------------------

def test_new_int8_copies_use_seven_bit_weights_that_cannot_saturate_without_vnni(tiny_model):
    import onnx
    from onnx import numpy_helper

    spec = resolve_spec(str(tiny_model), precision="int8")
    assert spec.calibration == INT8_RECIPE == 3
    Embedder(spec)
    model = onnx.load(str(files.int8_path(spec)))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights, "no int8 weights in the quantised graph"
    # 7 bits, symmetric: the pairwise uint8 x int8 sums of VPMADDUBSW (AVX2 without VNNI), 2 x 255 x 64 =
    # 32,640, stay within int16 (8-bit weights reach 2 x 255 x 127 and saturate)
    assert all(w.min() >= -64 and w.max() <= 64 for w in weights)
    assert max(int(np.abs(w).max()) for w in weights) > 32  # and the range is used, not wasted


def test_an_int8_index_of_the_old_recipe_keeps_it_and_says_how_to_rebuild(tmp_path):
    path = tmp_path / "recipe2.lookalike"
    old = replace(MODELS["efficientnet-lite0"], calibration=2)
    assert old.fingerprint() != MODELS["efficientnet-lite0"].fingerprint()
    assert replace(old, precision="fp32").fingerprint() == replace(MODELS["efficientnet-lite0"],
                                                                   precision="fp32").fingerprint()
    store = Store.create(path, old)
    store.close()
    with pytest.raises(ModelMismatch, match=r"int8 with 8-bit weights.*rebuild with `lookalike index"):
        Index.open(path, model="efficientnet-lite0")
    with Index.open(path) as index:  # as built: the recipe-2 file, never vectors of another recipe
        assert index.spec.calibration == 2
        assert files.int8_path(index.spec).name.endswith(".int8c2.onnx")
        assert "rebuild with" in (index.outdated() or "")


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
def test_search_with_query_expansion_searches_again_with_the_expanded_query(families_index, photo_dir, ann):
    with families_index as index:
        query = photo_dir / "disc" / "disc0.jpg"
        vector = index.embed(query)
        first = index.search(vector, k=2, ann=ann, dba=0)
        ids, vectors = index.vectors()
        rows = np.searchsorted(ids, [h.id for h in first])
        by_hand = QueryExpansion(2).expand(vector[None], vectors[rows][None], np.array([[h.score for h in first]]))
        expected = index.search(by_hand[0], k=9, ann=ann, qe=0, dba=0)
        expanded = index.search(query, k=9, ann=ann, qe=2, dba=0)
        assert [h.path for h in expanded] == [h.path for h in expected]
        own = {h.path: h.score for h in index.search(vector, k=len(index), ann="exact", dba=0)}
        assert [h.cosine for h in expanded] == pytest.approx([own[h.path] for h in expanded], abs=1e-5)
        assert [h.score for h in expanded] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert "α-QE 2" in expanded.engine
        plain = index.search(query, k=9, ann=ann)
        assert plain.engine == index.search(query, k=9, ann=ann, qe=0).engine  # off by default
        similar = index.similar(query, k=8, ann=ann, qe=2)  # the query itself is left out of both searches
        assert str(query) not in [h.path for h in similar] and len(similar) == 8


# -- database-side augmentation of the shortlist -------------------------------------------------------------

def test_augmentation_lifts_a_candidate_backed_by_another_view_over_a_closer_one_whose_neighbour_is_far():
    # The query q. Candidate 0 is the closest (0.80), but its nearest other candidate (3) is far from q;
    # candidates 1 and 2 are a little further (0.78, 0.77) and nearly the same picture as each other.
    # Augmented with its nearest neighbour, 0 is pulled away from q, 1 and 2 back each other up.
    q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    candidates = np.array([[[0.80, 0, 0.60, 0], [0.78, 0.626, 0, 0], [0.77, 0.638, 0, 0], [0.30, 0, 0.954, 0]]],
                          np.float32)
    candidates /= np.linalg.norm(candidates, axis=2, keepdims=True)
    plain = candidates[0] @ q[0]
    assert plain[0] > plain[1] > plain[2] > plain[3]
    scores = Augmentation(1, alpha=3.0).rescore(q, candidates)[0]
    assert scores[1] > scores[0] and scores[2] > scores[0]
    # by hand: candidate 0 plus its nearest other (3), weighted by their cosine cubed, re-normalised
    weight = float(candidates[0, 0] @ candidates[0, 3]) ** 3
    augmented = candidates[0, 0] + weight * candidates[0, 3]
    assert scores[0] == pytest.approx(float(augmented @ q[0]) / np.linalg.norm(augmented), abs=1e-6)
    np.testing.assert_allclose(Augmentation(0).rescore(q, candidates)[0], plain, atol=1e-6)  # off: plain cosine


def test_augmentation_never_takes_padding_as_a_neighbour():
    q = np.array([[1.0, 0.0]], np.float32)
    candidates = np.array([[[0.6, 0.8], [1.0, 0.0], [0.6, 0.8]]], np.float32)
    valid = np.array([[True, True, False]])
    scores = Augmentation(2, alpha=1.0).rescore(q, candidates, valid)[0]
    assert np.isneginf(scores[2])
    # each valid candidate's only valid neighbour is the other one
    expected_0 = (0.6 + 0.6 * 1.0) / np.linalg.norm(np.array([0.6, 0.8]) + 0.6 * np.array([1.0, 0.0]))
    assert scores[0] == pytest.approx(expected_0, abs=1e-6)
    with pytest.raises(UsageError, match="--dba"):
        Augmentation(-1)


@pytest.mark.parametrize("ann", ["exact", "hnsw"])
def test_search_reranks_its_shortlist_by_augmentation_by_default(families_index, photo_dir, ann):
    with families_index as index:
        query = photo_dir / "disc" / "disc0.jpg"
        vector = index.embed(query)
        plain = index.search(vector, k=len(index), ann=ann, dba=0)
        ids, vectors = index.vectors()
        rows = np.searchsorted(ids, [h.id for h in plain])
        by_hand = Augmentation(2, shortlist=len(index)).rescore(vector[None], vectors[rows][None])[0]
        order = np.argsort(-by_hand, kind="stable")
        found = index.search(vector, k=5, ann=ann)  # the default: augmentation on
        assert [h.path for h in found] == [plain[int(i)].path for i in order[:5]]
        assert [h.score for h in found] == pytest.approx(by_hand[order[:5]].tolist(), abs=1e-5)
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        assert [h.cosine for h in found] == pytest.approx([plain[int(i)].score for i in order[:5]], abs=1e-5)
        assert "α-DBA 2" in found.engine and "α-DBA" not in plain.engine
        similar = index.similar(query, k=4, ann=ann)
        assert str(query) not in [h.path for h in similar] and len(similar) == 4
        # a k beyond the shortlist: the shortlist re-ordered, the rest after it in plain order
        short = index.search(vector, k=len(index), ann=ann, dba=Augmentation(2, shortlist=4))
        head = Augmentation(2, shortlist=4).rescore(vector[None], vectors[rows[:4]][None])[0]
        assert [h.path for h in short[:4]] == [plain[int(i)].path for i in np.argsort(-head, kind="stable")]
        assert [h.path for h in short[4:]] == [h.path for h in plain[4:]]


def test_an_exact_copy_of_the_query_stays_first_with_its_plain_score():
    # Candidate 0 is the query itself; 1 and 2 are a tight pair close to it. Augmented, the pair could score
    # above the copy, whose nearest neighbours pull it away from the query: the copy keeps cosine 1 and rank 1.
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    candidates = np.array([[[1.0, 0.0, 0.0], [0.97, 0.243, 0.0], [0.96, 0.28, 0.0]]], np.float32)
    candidates /= np.linalg.norm(candidates, axis=2, keepdims=True)
    scores = Augmentation(2, alpha=3.0).rescore(q, candidates)[0]
    assert scores[0] == pytest.approx(1.0, abs=1e-6) and scores[0] >= scores[1:].max()


def test_copies_of_a_candidate_do_not_count_as_its_neighbours():
    # Candidate 1 has a byte-identical copy (2) in the shortlist and another view (3): the copy is no evidence
    # of anything, so 1 is augmented with 3 as it would be without the copy.
    q = np.array([[1.0, 0.0, 0.0]], np.float32)
    view, other = [0.85, 0.527, 0.0], [0.8, 0.4, 0.447]
    with_copy = np.array([[view, view, other]], np.float32)
    alone = np.array([[view, other]], np.float32)
    with_copy /= np.linalg.norm(with_copy, axis=2, keepdims=True)
    alone /= np.linalg.norm(alone, axis=2, keepdims=True)
    got = Augmentation(1, alpha=3.0).rescore(q, with_copy)[0]
    want = Augmentation(1, alpha=3.0).rescore(q, alone)[0]
    assert got[0] == pytest.approx(want[0], abs=1e-6) and got[1] == pytest.approx(want[0], abs=1e-6)


@pytest.mark.parametrize("bad", [1.5, "2", True, 21, None])
def test_augmentation_refuses_what_is_not_a_small_whole_number(bad):
    if bad is None:
        assert not Augmentation(0).on
        return
    with pytest.raises(UsageError, match="--dba"):
        Augmentation(bad)


def test_search_refuses_a_bad_k_or_query_vector_and_normalises_a_long_one(families_index, photo_dir):
    with families_index as index:
        vector = index.embed(photo_dir / "disc" / "disc0.jpg")
        for k in (0, -1, 2.5, None):
            with pytest.raises(UsageError, match="k must be"):
                index.search(vector, k)  # type: ignore[arg-type]
        for bad in (np.full_like(vector, np.nan), np.zeros_like(vector), vector[:-1], vector[None]):
            with pytest.raises(UsageError, match="query vector"):
                index.search(bad, 3)
        long = index.search(vector * 100, 3)
        assert [h.path for h in long] == [h.path for h in index.search(vector, 3)]
        assert long[0].cosine == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(UsageError, match="--qe"):
            index.search(vector, 3, qe=1.5)  # type: ignore[arg-type]
