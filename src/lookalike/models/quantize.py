"""int8 copies of fp32 models: static QDQ quantisation with ONNX Runtime, on a fixed calibration set.

Static quantisation needs example inputs to learn each activation's range. They must not come from the
user's photos: two machines indexing different collections would then get different int8 models, and
their vectors would not be comparable. They cannot be photos shipped with lookalike either (no data in
the package). So the calibration set is generated: "dead leaves" images (overlapping discs with a
power-law size distribution, a classic stand-in for the statistics of natural photos), under a smooth
light gradient, with sensor-like noise, from a fixed seed with NumPy's PCG64 generator, which gives the
same numbers on every platform. The same model therefore quantises to the same file everywhere.

onnxruntime.quantization needs the `onnx` package, which comes with the export extra; this module is
imported only when an int8 model is built.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lookalike.errors import ModelUnavailable

if TYPE_CHECKING:
    from lookalike.pipeline import Steps

CALIBRATION_SEED = 1729
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16


def calibration_pixels(size: int, count: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The calibration set: uint8 [count, size, size, 3], identical on every machine for the same arguments."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for n in range(count):
        image = np.empty((size, size, 3), np.float32)
        image[:] = rng.uniform(0, 255, 3)
        covered = np.zeros((size, size), bool)
        # Dead leaves: the first leaf to fall is the one seen, so paint front to back and fill only what
        # is still uncovered. Radii follow p(r) ~ r^-3 between 1/100 and 1/3 of the image.
        low, high = size / 100, size / 3
        for _ in range(400):
            r = 1.0 / np.sqrt(rng.uniform(1 / high**2, 1 / low**2))
            cx, cy = rng.uniform(-r, size + r, 2)
            x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
            y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            inside = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
            fresh = inside & ~covered[y0:y1, x0:x1]
            base = rng.uniform(0, 255)
            colour = np.clip(base + rng.normal(0, 50, 3), 0, 255)  # correlated channels, like real surfaces
            image[y0:y1, x0:x1][fresh] = colour
            covered[y0:y1, x0:x1] |= fresh
            if covered.all():
                break
        gx, gy = rng.normal(0, 0.4, 2)
        light = 1.0 + (gx * (xx - size / 2) + gy * (yy - size / 2)) / size
        image *= np.clip(light, 0.3, 1.7)[..., None]
        image += rng.normal(0, rng.uniform(1, 8), image.shape)
        out[n] = np.clip(image, 0, 255).astype(np.uint8)
        if progress is not None:
            progress(n + 1, count)
    return out


def quantize_model(fp32: Path, target: Path, input_name: str, size: int,
                   normalise: Callable[[np.ndarray], np.ndarray], *, mean=None, std=None,
                   steps: Steps | None = None, name: str = "the model", seven_bit_weights: bool = True) -> Path:
    """Write an int8 QDQ copy of `fp32` to `target`, atomically. `normalise` turns uint8 NHWC pixels into
    the model's float input, exactly as at inference. With `mean` and `std` the same for every channel, the
    copy takes the pixels themselves (see `take_pixels`). `steps` hears each stage (pipeline.Steps).

    `seven_bit_weights` (ONNX Runtime's reduce_range): x86 CPUs without VNNI multiply uint8 activations by
    int8 weights with VPMADDUBSW, whose 16-bit pair sums saturate for 8-bit weights and wreck the output
    (ModelSpec.calibration); 7-bit weights cannot saturate, on any CPU. False only rebuilds recipe-2 files."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ModelUnavailable("building an int8 model needs onnx: pip install 'lookalike[export]'") from None

    def step(what: str, done: int, total: int | None) -> None:
        if steps is not None:
            steps(what, done, total)

    making = f"int8 copy of {name} (once): calibration images"
    pixels = calibration_pixels(size, progress=lambda done, total: step(making, done, total))
    calibrating = f"int8 copy of {name} (once): calibrating"
    quantising = f"int8 copy of {name} (once): quantising"
    batches = len(range(0, len(pixels), CALIBRATION_BATCH))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(pixels), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                step(calibrating, batches, batches)
                step(quantising, 0, None)
                return None
            step(calibrating, start // CALIBRATION_BATCH, batches)
            return {input_name: normalise(pixels[start:start + CALIBRATION_BATCH])}

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp, "prepared.onnx")
        quantized = Path(tmp, "int8.onnx")
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        reduce_range=seven_bit_weights)
        step(quantising, 1, 1)
        if mean is not None and std is not None:
            model = onnx.load(str(quantized))
            if take_pixels(model, mean, std):
                onnx.save(model, str(quantized))
        os.replace(quantized, target)
    return target


def take_pixels(model, mean, std) -> bool:
    """Let a quantised graph take uint8 pixels [n, h, w, 3] as they come from the decoder.

    A quantised graph starts by quantising its float input to uint8. When the normalisation is the same
    for all channels, x = (p - 255 mean) / (255 std) is itself a dequantisation of the pixels p with scale
    1 / (255 std) and zero point 255 mean, so the pixels can be the quantised input: the float conversion,
    the normalisation and the quantisation all disappear (they cost a third of the inference time), and
    ONNX Runtime cancels the transpose against the channels-last layout of its int8 convolutions. The zero
    point must be a whole number: for mean 0.5 it is 128 instead of 127.5, a shift of half a grey level.
    Returns False, leaving the model alone, where this does not apply.
    """
    from onnx import TensorProto, helper, numpy_helper

    if len(set(mean)) != 1 or len(set(std)) != 1:
        return False
    graph = model.graph
    source = graph.input[0]
    quantize = [n for n in graph.node if source.name in n.input and n.op_type == "QuantizeLinear"]
    if len(quantize) != 1 or len([n for n in graph.node if source.name in n.input]) != 1:
        return False
    node = quantize[0]
    initializers = {t.name: t for t in graph.initializer}
    if node.input[1] not in initializers or len(node.input) < 3 or node.input[2] not in initializers:
        return False
    scale = np.array(1.0 / (255.0 * std[0]), np.float32)
    zero_point = np.array(round(255.0 * mean[0]), np.uint8)
    initializers[node.input[1]].CopyFrom(numpy_helper.from_array(scale, node.input[1]))
    initializers[node.input[2]].CopyFrom(numpy_helper.from_array(zero_point, node.input[2]))
    dims = source.type.tensor_type.shape.dim
    batch, height, width = (d.dim_param or d.dim_value for d in (dims[0], dims[2], dims[3]))
    transpose = helper.make_node("Transpose", [source.name], [node.output[0]], perm=[0, 3, 1, 2],
                                 name=f"{source.name}_to_nchw")
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, transpose)
    graph.input[0].CopyFrom(helper.make_tensor_value_info(source.name, TensorProto.UINT8,
                                                          [batch, height, width, 3]))
    return True
