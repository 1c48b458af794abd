"""How alike are these images? Cosine similarity between images, under one model or several side by side
(the reference compared VGG16 and ResNet50 this way), as a number, a matrix, or a heatmap with thumbnails.

    from lookalike.explore.compare import compare
    scores = compare(["a.jpg", "b.jpg"], models=["efficientnet-lite0", "efficientnet-lite2"])
    scores["efficientnet-lite0"][0, 1]      # one float in [-1, 1]; 1.0 for the same picture
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike import images
from lookalike.errors import NotAnImage, NotFound, UsageError
from lookalike.models.embedder import Embedder
from lookalike.models.registry import ModelSpec


def load_all(paths: Sequence[str | Path], size: int | None = None) -> list[Image.Image]:
    """Decode every path, or fail naming the first one that is not an image."""
    loaded = []
    for path in paths:
        if not Path(path).is_file():
            raise NotFound(f"not found: {path}")
        decoded = images.load(path, draft=(size, size) if size else None)
        if decoded.image is None:
            raise NotAnImage(f"{path}: {decoded.error}")
        loaded.append(decoded.image)
    return loaded


def compare(paths: Sequence[str | Path], models: Sequence[str | ModelSpec] = ("efficientnet-lite0",)
            ) -> dict[str, np.ndarray]:
    """model name -> cosine similarity matrix float32 [n, n] between the images."""
    if len(paths) < 2:
        raise UsageError("compare needs at least two images")
    pictures = load_all(paths)
    out = {}
    for model in models:
        embedder = Embedder.load(model)
        vectors = embedder.embed_images(pictures)
        out[embedder.spec.name] = np.clip(vectors @ vectors.T, -1.0, 1.0)
    return out


def heatmap(paths: Sequence[str | Path], matrix: np.ndarray, out: str | Path, *, title: str = "") -> Path:
    """A matplotlib heatmap of the matrix with each image's thumbnail along both axes."""
    from matplotlib.figure import Figure  # a Figure of its own: no global backend, no pyplot state
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    n = len(paths)
    thumbs = []
    for picture in load_all(paths, 96):
        picture = picture.copy()
        picture.thumbnail((64, 64))
        thumbs.append(np.asarray(picture))
    fig = Figure(figsize=(2.2 + 0.9 * n, 1.8 + 0.9 * n))
    ax = fig.subplots()
    shown = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if matrix[i, j] > 0.6 else "white")
    ax.set_xticks(range(n), [""] * n)
    ax.set_yticks(range(n), [""] * n)
    for i, thumb in enumerate(thumbs):  # below the x axis and left of the y axis
        for xy, align in (((i, n - 0.5), (0.5, 1.1)), ((-0.5, i), (1.1, 0.5))):
            ax.add_artist(AnnotationBbox(OffsetImage(thumb, zoom=0.55), xy, box_alignment=align, frameon=False,
                                         annotation_clip=False))
    fig.colorbar(shown, ax=ax, fraction=0.04, label="cosine similarity")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out
