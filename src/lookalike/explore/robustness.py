"""How stable is an image's embedding under the edits photos go through? The reference's experiment:
augmented copies with Keras ImageDataGenerator's parameters (rotation up to 30°, width and height shift
10 %, shear 0.15°, zoom 10 %, channel shift 10, horizontal flip), each copy's cosine similarity to the
original, per model.

    from lookalike.explore.robustness import augmented, robustness
    copies = augmented(image, n=12, seed=0)
    scores = robustness("photo.jpg", models=["efficientnet-lite0"])   # model -> float32 [n]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lookalike.explore.compare import load_all
from lookalike.models.embedder import Embedder
from lookalike.models.registry import ModelSpec

ROTATION = 30.0  # degrees
SHIFT = 0.1  # of width and height
SHEAR = 0.15  # degrees, as Keras reads shear_range
ZOOM = 0.1
CHANNEL_SHIFT = 10.0  # added to every channel, 0-255 scale


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random copy, drawn as Keras' ImageDataGenerator would (fill: nearest edge colour, approximated by
    Pillow's edge-free affine plus the image's border colour)."""
    w, h = image.size
    theta = math.radians(rng.uniform(-ROTATION, ROTATION))
    tx, ty = rng.uniform(-SHIFT, SHIFT) * w, rng.uniform(-SHIFT, SHIFT) * h
    shear = math.radians(rng.uniform(-SHEAR, SHEAR))
    zx, zy = rng.uniform(1 - ZOOM, 1 + ZOOM, 2)
    # Output pixel -> input pixel, about the centre: rotate, shear, zoom, then shift (Keras' order).
    rotation = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    shearing = np.array([[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]])
    zooming = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    shifting = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    centre, back = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]]), np.array([[1, 0, -w / 2], [0, 1, -h / 2],
                                                                                   [0, 0, 1]])
    matrix = centre @ rotation @ shearing @ zooming @ shifting @ back
    border = tuple(int(c) for c in np.asarray(image).reshape(-1, 3)[:: max(1, w * h // 1000)].mean(axis=0))
    out = image.transform((w, h), Image.Transform.AFFINE, tuple(matrix[:2].ravel()), Image.Resampling.BILINEAR,
                          fillcolor=border)
    shift = rng.uniform(-CHANNEL_SHIFT, CHANNEL_SHIFT)
    out = Image.fromarray(np.clip(np.asarray(out, np.float32) + shift, 0, 255).astype(np.uint8))
    return ImageOps.mirror(out) if rng.random() < 0.5 else out


def augmented(image: Image.Image, n: int = 12, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [augment(image, rng) for _ in range(n)]


def robustness(path: str | Path, models: Sequence[str | ModelSpec] = ("efficientnet-lite0",), n: int = 12,
               seed: int = 0) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
    """The copies, and for each model the cosine similarity of each copy to the original, float32 [n]."""
    original = load_all([path])[0]
    copies = augmented(original, n, seed)
    scores = {}
    for model in models:
        embedder = Embedder.load(model)
        vectors = embedder.embed_images([original, *copies])
        scores[embedder.spec.name] = (vectors[1:] @ vectors[0]).astype(np.float32)
    return copies, scores
