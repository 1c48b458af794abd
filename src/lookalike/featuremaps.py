"""What the network sees: the feature maps of a convolutional model's main blocks for one image (the
reference showed the five blocks of VGG16), read from intermediate outputs of the ONNX graph.

The main blocks are found in the graph itself: the last convolution at each spatial resolution, i.e. the
end of each stage before the network halves the resolution. Those tensors become extra outputs of an
in-memory copy of the fp32 graph. Needs the onnx package (the export extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lookalike.compare import load_all
from lookalike.errors import LookalikeError
from lookalike.models.embedder import Embedder
from lookalike.models.files import model_file
from lookalike.models.registry import ModelSpec, resolve_spec


@dataclass
class Block:
    name: str  # the tensor's name in the graph
    maps: np.ndarray  # float32 [channels, height, width]


def block_outputs(model) -> list[str]:
    """Names of the last convolution output at each spatial resolution, from the input to the output."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].dim_value:
            shapes[info.name] = dims[2].dim_value
    last_at: dict[int, str] = {}
    for node in inferred.graph.node:
        if node.op_type == "Conv" and node.output[0] in shapes:
            last_at[shapes[node.output[0]]] = node.output[0]
    return [last_at[size] for size in sorted(last_at, reverse=True)]


def feature_maps(path: str | Path, model: str | ModelSpec = "efficientnet-lite0") -> list[Block]:
    try:
        import onnx
    except ImportError:
        raise LookalikeError("feature maps need onnx: pip install 'lookalike[export]'") from None
    import onnxruntime as ort

    spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
    spec = replace(spec, precision="fp32")  # an int8 graph's inner tensors are quantised
    embedder = Embedder(spec)
    graph = onnx.load(str(model_file(spec)))
    names = block_outputs(graph)
    if not names:
        raise LookalikeError(f"{spec.name} has no convolutional feature maps to show")
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    picture = load_all([path], embedder.spec.input_size)[0]
    inputs = embedder.inputs(embedder.prepare(picture)[None])
    outputs = session.run(names, {embedder.input_name: inputs})
    return [Block(name, np.asarray(maps[0], np.float32)) for name, maps in zip(names, outputs, strict=True)]


def draw(blocks: list[Block], folder: str | Path, *, channels: int = 16) -> list[Path]:
    """One PNG per block (its most active channels) and overview.png (each block's mean activation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, block in enumerate(blocks, 1):
        strongest = np.argsort(-block.maps.mean(axis=(1, 2)))[:channels]
        columns = 8
        rows = (len(strongest) + columns - 1) // columns
        fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.4, rows * 1.5 + 0.4), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, channel in zip(axes.ravel(), strongest, strict=False):
            ax.imshow(block.maps[channel], cmap="magma")
            ax.set_title(f"ch {channel}", fontsize=7)
        c, h, w = block.maps.shape
        fig.suptitle(f"block {n}: {c} channels at {h}×{w} (the {len(strongest)} most active)", fontsize=10)
        fig.tight_layout()
        target = folder / f"block-{n}.png"
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    fig, axes = plt.subplots(1, len(blocks), figsize=(2.2 * len(blocks), 2.6), squeeze=False)
    for ax, (n, block) in zip(axes.ravel(), enumerate(blocks, 1), strict=True):
        ax.imshow(block.maps.mean(axis=0), cmap="magma")
        ax.set_title(f"block {n}: {block.maps.shape[1]}×{block.maps.shape[2]}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    target = folder / "overview.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return [*written, target]
