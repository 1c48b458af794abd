"""What the network sees: the feature maps of a convolutional model's main blocks for one image (the
reference showed the five blocks of VGG16), read from intermediate outputs of the ONNX graph.

The main blocks are found in the graph itself: the last convolution at each spatial resolution, i.e. the
end of each stage before the network halves the resolution. Convolution outputs become extra outputs of an
in-memory copy of the fp32 graph, which runs once. Needs the onnx package (the export extra).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.errors import UsageError, require
from lookalike.explore.compare import load_all
from lookalike.models.embedder import Embedder
from lookalike.models.files import model_file
from lookalike.models.registry import ModelSpec, resolve_spec


@dataclass
class Block:
    name: str  # the tensor's name in the graph
    maps: np.ndarray  # float32 [channels, height, width]


def conv_outputs(model) -> list[str]:
    """Every convolution's output tensor, in graph order."""
    return [node.output[0] for node in model.graph.node if node.op_type == "Conv"]


def main_blocks(names: list[str], maps: list[np.ndarray]) -> list[Block]:
    """The last convolution output at each spatial resolution, from the input towards the output. Shapes are
    read from the tensors themselves: graphs exported with computed padding leave them unknown statically."""
    last_at: dict[int, Block] = {}
    for name, value in zip(names, maps, strict=True):
        if value.ndim == 4:
            last_at[value.shape[2]] = Block(name, np.asarray(value[0], np.float32))
    return [last_at[size] for size in sorted(last_at, reverse=True)]


def feature_maps(path: str | Path, model: str | ModelSpec = "efficientnet-lite0") -> list[Block]:
    onnx = require("onnx", "export", "feature maps")
    import onnxruntime as ort

    spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
    spec = replace(spec, precision="fp32")  # an int8 graph's inner tensors are quantised
    embedder = Embedder(spec)
    picture = load_all([path], embedder.spec.input_size)[0]
    graph = onnx.load(str(model_file(spec)))
    names = conv_outputs(graph)
    if not names:
        raise UsageError(f"{spec.name} has no convolutional feature maps to show")
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = embedder.inputs(embedder.prepare(picture)[None])
    return main_blocks(names, session.run(names, {embedder.input_name: inputs}))


def draw(blocks: list[Block], folder: str | Path, *, channels: int = 16, image: Image.Image | None = None
         ) -> list[Path]:
    """One PNG per block (its most active channels) and overview.png (the input `image`, when given, then each
    block's mean activation)."""
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, block in enumerate(blocks, 1):
        strongest = np.argsort(-block.maps.mean(axis=(1, 2)))[:channels]
        columns = 8
        rows = (len(strongest) + columns - 1) // columns
        fig = Figure(figsize=(columns * 1.4, rows * 1.5 + 0.4))
        axes = fig.subplots(rows, columns, squeeze=False)
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
        written.append(target)
    panels = len(blocks) + (image is not None)
    fig = Figure(figsize=(2.2 * panels, 2.6))
    panes = list(fig.subplots(1, panels, squeeze=False).ravel())
    if image is not None:
        first = panes.pop(0)
        first.imshow(image)
        first.set_title("input", fontsize=9)
        first.axis("off")
    for ax, (n, block) in zip(panes, enumerate(blocks, 1), strict=True):
        ax.imshow(block.maps.mean(axis=0), cmap="magma")
        ax.set_title(f"block {n}: {block.maps.shape[1]}×{block.maps.shape[2]}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    target = folder / "overview.png"
    fig.savefig(target, dpi=100)
    return [*written, target]
