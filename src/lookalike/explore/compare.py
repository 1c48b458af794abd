"""How alike are these images? Cosine similarity between images, under one model or several side by side
(the reference compared VGG16 and ResNet50 this way), as a number, a matrix, or a heatmap with thumbnails.

    from lookalike.explore.compare import compare
    scores = compare(["a.jpg", "b.jpg"], models=["efficientnet-lite0", "efficientnet-lite2"])
    scores["efficientnet-lite0"][0, 1]      # one float in [-1, 1]; 1.0 for the same picture
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def heatmap(paths: Sequence[str | Path], scores: Mapping[str, np.ndarray] | np.ndarray, out: str | Path, *,
            title: str = "") -> Path:
    """A heatmap of each model's matrix, side by side, with each image's thumbnail and file name along both
    axes. `scores` is compare()'s answer (model -> matrix), or one matrix."""
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    matrices = dict(scores) if isinstance(scores, Mapping) else {title: scores}
    n = len(paths)
    names = [_short_name(Path(p).name) for p in paths]
    thumbs = []
    for picture in load_all(paths, 96):
        picture = picture.copy()
        picture.thumbnail((64, 64))
        thumbs.append(np.asarray(picture))
    low = min(0.0, *(float(m.min()) for m in matrices.values()))
    side = 2.6 + 0.9 * n
    fig = Figure(figsize=(side * len(matrices) + 0.8, side))
    axes = fig.subplots(1, len(matrices), squeeze=False, gridspec_kw={"wspace": 0.45})[0]
    for panel, (ax, (model, matrix)) in enumerate(zip(axes, matrices.items(), strict=True)):
        shown = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if matrix[i, j] > 0.6 else "white")
        # Names on the axes; thumbnails above the columns and right of the last panel's rows.
        ax.set_xticks(range(n), names, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i, thumb in enumerate(thumbs):
            ax.add_artist(AnnotationBbox(OffsetImage(thumb, zoom=0.5), (i, -0.5), box_alignment=(0.5, -0.1),
                                         frameon=False, annotation_clip=False))
            if panel == len(matrices) - 1:  # rows: right of the last panel, clear of the next panel's names
                ax.add_artist(AnnotationBbox(OffsetImage(thumb, zoom=0.5), (n - 0.5, i), box_alignment=(-0.1, 0.5),
                                             frameon=False, annotation_clip=False))
        if model:
            ax.set_title(model, pad=44)
    fig.colorbar(shown, ax=list(axes), fraction=0.03, pad=0.08, label="cosine similarity")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def _short_name(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 9] + "…" + name[-8:]
