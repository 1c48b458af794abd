"""How stable is an image's embedding under the edits photos go through? The reference's experiment:
augmented copies with Keras ImageDataGenerator's parameters (rotation up to 30°, width and height shift
10 %, shear 0.15°, zoom 10 %, channel shift 10, horizontal flip), each copy's cosine similarity to the
original, per model.

    from lookalike.explore.robustness import augmented, robustness
    copies = augmented(image, n=12, seed=0)   # copies[0].info["augmentation"]: "rotate +12°, shift ..."
    scores = robustness("photo.jpg", models=["efficientnet-lite0"])   # model -> float32 [n]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Augmentation:
    """One random edit, as Keras' ImageDataGenerator draws it."""

    rotation: float  # degrees
    shift_x: float  # share of the width
    shift_y: float  # share of the height
    shear: float  # degrees
    zoom_x: float
    zoom_y: float
    channel_shift: float  # added to every channel, 0-255 scale
    flip: bool  # mirrored left to right

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Augmentation:
        return cls(rotation=float(rng.uniform(-ROTATION, ROTATION)), shift_x=float(rng.uniform(-SHIFT, SHIFT)),
                   shift_y=float(rng.uniform(-SHIFT, SHIFT)), shear=float(rng.uniform(-SHEAR, SHEAR)),
                   zoom_x=float(rng.uniform(1 - ZOOM, 1 + ZOOM)), zoom_y=float(rng.uniform(1 - ZOOM, 1 + ZOOM)),
                   channel_shift=float(rng.uniform(-CHANNEL_SHIFT, CHANNEL_SHIFT)), flip=bool(rng.random() < 0.5))

    def describe(self) -> str:
        """e.g. "rotate +12°, shift -3%/+8%, zoom 96%/104%, shear +0.1°, colour +4, flipped"."""
        text = (f"rotate {self.rotation:+.0f}°, shift {100 * self.shift_x:+.0f}%/{100 * self.shift_y:+.0f}%, "
                f"zoom {100 * self.zoom_x:.0f}%/{100 * self.zoom_y:.0f}%, shear {self.shear:+.2f}°, "
                f"colour {self.channel_shift:+.0f}")
        return text + (", flipped" if self.flip else "")

    def apply(self, image: Image.Image) -> Image.Image:
        """The edited copy (fill: the image's mean border colour, close to Keras' nearest-edge fill)."""
        w, h = image.size
        theta, shear = math.radians(self.rotation), math.radians(self.shear)
        # Output pixel -> input pixel, about the centre: rotate, shear, zoom, then shift (Keras' order).
        rotation = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0],
                             [0, 0, 1]])
        shearing = np.array([[1, -math.sin(shear), 0], [0, math.cos(shear), 0], [0, 0, 1]])
        zooming = np.array([[self.zoom_x, 0, 0], [0, self.zoom_y, 0], [0, 0, 1]])
        shifting = np.array([[1, 0, self.shift_x * w], [0, 1, self.shift_y * h], [0, 0, 1]])
        centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
        back = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
        matrix = centre @ rotation @ shearing @ zooming @ shifting @ back
        border = tuple(int(c) for c in np.asarray(image).reshape(-1, 3)[:: max(1, w * h // 1000)].mean(axis=0))
        out = image.transform((w, h), Image.Transform.AFFINE, tuple(matrix[:2].ravel()), Image.Resampling.BILINEAR,
                              fillcolor=border)
        out = Image.fromarray(np.clip(np.asarray(out, np.float32) + self.channel_shift, 0, 255).astype(np.uint8))
        out = ImageOps.mirror(out) if self.flip else out
        out.info["augmentation"] = self.describe()
        return out


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random copy; what was done to it is in `copy.info["augmentation"]`."""
    return Augmentation.draw(rng).apply(image)


def augmented(image: Image.Image, n: int = 12, seed: int = 0) -> list[Image.Image]:
    """n random copies, the same for the same seed; each says what was done to it in `.info["augmentation"]`."""
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
