"""Embedder: pixels in, L2-normalised float32 vectors out, with ONNX Runtime.

An Embedder owns one inference session and the preprocessing its model was trained with. `prepare()` is
cheap and thread-safe (the pipeline calls it on decode threads); `embed()` runs the graph on a batch.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from lookalike.errors import ModelUnavailable
from lookalike.images import trim_bars
from lookalike.models.files import model_file, model_input
from lookalike.models.registry import ModelSpec, resolve_spec

if TYPE_CHECKING:
    from lookalike.pipeline import Steps


class Embedder:
    """One model, ready to turn images into unit vectors.

    >>> emb = Embedder.load("efficientnet-lite0")
    >>> emb.embed_images([Image.open("a.jpg")]).shape
    (1, 1280)
    """

    def __init__(self, spec: ModelSpec, *, threads: int | None = None, steps: Steps | None = None):
        import onnxruntime as ort

        path = model_file(spec, steps)
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
        # lookalike's own exports take uint8 [n, h, w, 3] and normalise inside the graph; other graphs take
        # float32 [n, 3, h, w], normalised here with the spec's mean and std.
        self.takes_pixels = inputs[0].type == "tensor(uint8)"
        outputs = [o.name for o in self.session.get_outputs()]
        if spec.output and spec.output not in outputs:
            raise ModelUnavailable(f"{path} has no output {spec.output!r} (it has {', '.join(outputs)})")
        self.output_name = spec.output or outputs[0]
        self.logits_name = "logits" if "logits" in outputs else None
        height = inputs[0].shape[1 if self.takes_pixels else 2]
        if isinstance(height, int) and spec.input_size not in (0, height):
            raise ModelUnavailable(f"{path} takes {height}px input, not {spec.input_size}px: fix --input-size")
        if not spec.input_size:  # an ONNX file without --input-size: the graph's own size, else 224
            spec = replace(spec, input_size=height if isinstance(height, int) else 224)
        shape = self.session.get_outputs()[outputs.index(self.output_name)].shape
        if spec.dims and len(shape) == 2 and isinstance(shape[1], int) and shape[1] != spec.dims:
            raise ModelUnavailable(f"{path} gives {shape[1]}-d vectors, but {spec.name} should give {spec.dims}")
        self.spec = spec  # run() reads its pooling
        if not spec.dims:
            probe = self.inputs(np.zeros((1, spec.input_size, spec.input_size, 3), np.uint8))
            self.spec = spec = replace(spec, dims=int(self.run(probe).shape[1]))
        size = spec.input_size
        self.size = (size, size)

    @classmethod
    def load(cls, model: str | ModelSpec | None = None, *, threads: int | None = None,
             steps: Steps | None = None) -> Embedder:
        spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
        return cls(spec, threads=threads, steps=steps)

    @property
    def dims(self) -> int:
        return self.spec.dims

    def prepare(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> uint8 [height, width, 3], resized (no crop) to the model's input: a square of
        input_size, or (resize "longer") the longer side to input_size with the aspect ratio kept, so images
        of other shapes give other array shapes (see `embed_many`).

        Runs on decode threads, so it does as little as it can: normalising is left to `inputs`, for a
        whole batch, or to the graph itself.
        """
        if self.spec.trim:
            image = trim_bars(image)
        size = self.spec.input_shape(*image.size)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def embed_many(self, prepared: list[np.ndarray]) -> np.ndarray:
        """Arrays from `prepare`, of any shapes -> float32 [n, dims] unit vectors, in the same order: one
        model call per shape."""
        return self._by_shape(prepared, self.embed, self.dims)

    def logits_many(self, prepared: list[np.ndarray]) -> np.ndarray:
        """Arrays from `prepare`, of any shapes -> ImageNet logits [n, 1000], in the same order."""
        return self._by_shape(prepared, self.logits, 1000)

    @staticmethod
    def _by_shape(prepared: list[np.ndarray], run, width: int) -> np.ndarray:
        out = np.empty((len(prepared), width), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for n, pixels in enumerate(prepared):
            groups.setdefault(pixels.shape, []).append(n)
        for rows in groups.values():
            out[rows] = run(np.stack([prepared[n] for n in rows]))
        return out

    def inputs(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] from `prepare` -> what the graph takes (the same, or normalised float32
        [n, 3, size, size])."""
        batch = np.ascontiguousarray(batch, dtype=np.uint8)
        return batch if self.takes_pixels else model_input(batch, self.spec.mean, self.spec.std)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, height, width, 3], a stack of `prepare` arrays of one shape -> float32 [n, dims], each row
        of unit length."""
        return self.embed_inputs(self.inputs(batch))

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """What `inputs` made -> float32 [n, dims], each row of unit length."""
        vectors = self.run(inputs)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_many([self.prepare(image) for image in images])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, 3] -> ImageNet logits [n, 1000], for models exported with their classifier."""
        if self.logits_name is None:
            raise ModelUnavailable(f"{self.spec.name} has no classifier head")
        return self.session.run([self.logits_name], {self.input_name: self.inputs(batch)})[0]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """The graph alone, on what `inputs` made -> raw vectors float32 [n, dims], not normalised."""
        out = np.asarray(self.session.run([self.output_name], {self.input_name: inputs})[0], np.float32)
        if out.ndim == 4:  # [n, c, h, w] feature maps: global average pooling
            return out.mean(axis=(2, 3))
        if out.ndim == 3:  # [n, tokens, d] transformer states
            return out.mean(axis=1) if self.spec.pooling == "mean" else out[:, 0]
        if out.ndim == 2:
            return out
        raise ModelUnavailable(f"{self.spec.name}: cannot make vectors from an output of shape {out.shape}")
