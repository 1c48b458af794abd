"""Model resolution: the registry, ONNX files, and Hub models found in a local Hub-shaped cache."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest

from lookalike import Embedder, Index
from lookalike.errors import ModelUnavailable
from lookalike.models import files as files_module
from lookalike.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, resolve_spec, same_model
from tests.conftest import build_tiny_model, picture


def fake_hub_cache(root, spec: ModelSpec, model_file) -> None:
    """The layout huggingface_hub keeps: models--owner--name/{refs/main, snapshots/<commit>/<file>}."""
    repo = root / ("models--" + spec.repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / spec.filename
    target.parent.mkdir(parents=True)
    shutil.copy(model_file, target)


def test_every_registry_entry_is_complete():
    assert DEFAULT_MODEL in MODELS
    for spec in MODELS.values():
        assert spec.dims > 0 and spec.input_size > 0 and spec.licence and spec.description
        assert spec.source in ("export", "hub")
        assert (spec.weights_package and spec.architecture) if spec.source == "export" else spec.repo_id
        assert ModelSpec.from_json(spec.to_json()) == spec


def test_unknown_names_and_missing_files_are_clear(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"unknown model 'nope'.*efficientnet-lite0"):
        resolve_spec("nope")
    with pytest.raises(ModelUnavailable, match="model file not found"):
        resolve_spec(str(tmp_path / "missing.onnx"))


def test_an_onnx_file_takes_its_input_size_and_dims_from_the_graph(tiny_model):
    spec = resolve_spec(str(tiny_model), mean=(0.5, 0.5, 0.5))
    assert (spec.dims, spec.input_size, spec.source) == (0, 0, "file") and len(spec.sha256) == 64
    embedder = Embedder(spec)
    assert (embedder.spec.dims, embedder.spec.input_size) == (16, 64) and embedder.spec.mean == (0.5, 0.5, 0.5)
    assert same_model(embedder.spec, spec)
    assert not same_model(embedder.spec, replace(spec, mean=(0.4, 0.4, 0.4)))


def test_a_dynamic_size_graph_uses_the_given_size(tmp_path):
    model = build_tiny_model(tmp_path / "dyn.onnx", size="height")
    assert Embedder(resolve_spec(str(model), input_size=96)).spec.input_size == 96
    assert Embedder(resolve_spec(str(model))).spec.input_size == 224


def test_hub_model_resolves_from_a_local_hub_cache_offline(tmp_path, monkeypatch):
    spec = MODELS["resnet50"]
    fake = build_tiny_model(tmp_path / "fake-resnet.onnx", size=spec.input_size, dims=spec.dims)
    fake_hub_cache(tmp_path / "hub", spec, fake)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))

    assert files_module.availability(spec).startswith("yes")
    embedder = Embedder.load("resnet50")
    vectors = embedder.embed_images([picture("disc"), picture("stripes")])
    assert vectors.shape == (2, 2048) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    index = Index.open(tmp_path / "r.lookalike", model="resnet50", create=True)
    assert index.info()["model"] == "resnet50" and index.info()["dims"] == 2048
    index.close()


def test_hub_model_offline_and_not_cached_fails_with_one_line_that_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelUnavailable) as caught:
        Embedder.load("clip-vit-b32")
    message = str(caught.value)
    assert "\n" not in message
    assert "not in the local Hub cache" in message and "lookalike models --fetch clip-vit-b32" in message
    assert files_module.availability(MODELS["clip-vit-b32"]).startswith("no")


def test_a_hub_file_with_the_wrong_dims_is_refused(tmp_path, monkeypatch):
    spec = MODELS["dinov2-small"]
    fake_hub_cache(tmp_path / "hub", spec, build_tiny_model(tmp_path / "wrong.onnx", size=224, dims=16))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelUnavailable, match="has no output 'pooler_output'"):
        Embedder.load("dinov2-small")
    with pytest.raises(ModelUnavailable, match="gives 16-d vectors"):
        Embedder.load(replace(spec, output=""))


def test_export_without_torch_says_how_to_install_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    from lookalike.models.export import export_onnx

    with pytest.raises(ModelUnavailable, match=r"pip install torch==2\.13\.0"):
        export_onnx(MODELS["efficientnet-lite1"], files_module.exported_path(MODELS["efficientnet-lite1"]))
