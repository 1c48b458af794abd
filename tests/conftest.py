"""Shared fixtures: a tiny ONNX model built here, and generated images that look alike in known ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CALTECH = DATASETS / "caltech101"


def build_tiny_model(path: Path, *, size: int | str = 64, dims: int = 16, seed: int = 0) -> Path:
    """A real ONNX graph: two strided convolutions and global pooling, fixed random weights.

    Random filters still respond to colour and texture, so an image and a resized copy land close together
    and a red disc lands far from green stripes: enough to test ranking without a real model.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (dims, 8, 3, 3)).astype(np.float32)
    bias = rng.normal(0, 0.1, (8,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["pixels", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dims])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(bias, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_thumbnail_model(path: Path, *, size: int = 64, cells: int = 8) -> Path:
    """A tiny ONNX model whose "embedding" is the image's own thumbnail (cells x cells x 3), centred: two
    images are close when they look alike at a glance. Near copies (resized, re-compressed, brightened)
    stay close; different pictures do not."""
    import onnx
    from onnx import TensorProto, helper

    pool = size // cells
    nodes = [
        helper.make_node("AveragePool", ["pixels"], ["thumb"], kernel_shape=[pool, pool], strides=[pool, pool]),
        helper.make_node("ReduceMean", ["thumb"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Sub", ["thumb", "mean"], ["centred"]),
        helper.make_node("Flatten", ["centred"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "thumbnail",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3 * cells * cells])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Exported models go to a per-session cache (module fixtures and subprocesses too), and nothing may
    reach the Hugging Face Hub."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LOOKALIKE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.delenv("LOOKALIKE_INDEX", raising=False)
    patch.delenv("LOOKALIKE_TOKEN", raising=False)
    yield
    patch.undo()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def thumbnail_model(tmp_path_factory) -> Path:
    return build_thumbnail_model(tmp_path_factory.mktemp("model") / "thumbnail.onnx")


def picture(kind: str, seed: int = 0, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """Generated photos in three families that a colour/texture model tells apart."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    if kind == "disc":  # red discs on cream
        image.paste((250, 240, 215), (0, 0, w, h))
        for _ in range(3):
            r = int(rng.integers(8, 20))
            x, y = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(int(rng.integers(190, 255)), 20, 30))
    elif kind == "stripes":  # green vertical stripes
        step = int(rng.integers(4, 8))
        for x in range(0, w, 2 * step):
            draw.rectangle((x, 0, x + step - 1, h), fill=(20, int(rng.integers(140, 220)), 40))
    elif kind == "noise":  # blue noise
        pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        pixels[..., 2] = rng.integers(150, 255, (h, w), dtype=np.uint8)
        image = Image.fromarray(pixels)
    else:
        raise ValueError(kind)
    return image


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """9 images: 3 families x 3, in nested folders, mixed formats."""
    root = tmp_path / "photos"
    for kind in ("disc", "stripes", "noise"):
        folder = root / kind
        folder.mkdir(parents=True)
        for n in range(3):
            image = picture(kind, seed=n)
            suffix = ".png" if n == 1 else ".jpg"
            image.save(folder / f"{kind}{n}{suffix}", quality=92)
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """The real command, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lookalike", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
