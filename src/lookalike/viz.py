"""Pictures of results: a query beside its neighbours, rows of examples, and a map of a whole collection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike import images
from lookalike.errors import BadInput, require

if TYPE_CHECKING:
    from lookalike.index import Index
    from lookalike.pipeline import Steps

THUMB = 200
PAD = 8
CAPTION = 34
GOOD, BAD, QUERY = (30, 150, 60), (210, 40, 40), (40, 90, 220)


@dataclass
class Tile:
    """One picture on a sheet: the image (None: could not be read), two caption lines, a frame colour."""

    image: Image.Image | None
    line1: str
    line2: str = ""
    frame: tuple[int, int, int] | None = None


def caption_name(path: str) -> str:
    """folder/file: in a collection of folders, the file name alone is often ambiguous."""
    parts = Path(path).parts
    return images.printable("/".join(parts[-2:]))


def result_grid(query: Image.Image | None, hits: Sequence, out: str | Path, *, columns: int = 6,
                title: str = "query") -> Path:
    """Write a PNG: the query first (when given), then each hit with "#rank score" and its file name."""
    tiles = [Tile(query, title, frame=QUERY)] if query is not None else []
    for hit in hits:
        tiles.append(Tile(_thumbnail(hit.path), f"#{hit.rank}  {hit.score:.3f}", caption_name(hit.path)))
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    return _save(_sheet(rows), out)


def rows_grid(rows: Sequence[Sequence[Tile]], out: str | Path) -> Path:
    """Write a PNG with one row of tiles per entry (e.g. a query and its neighbours, per class)."""
    return _save(_sheet(rows), out)


def tile_of(path: str, line1: str, line2: str = "", frame: tuple[int, int, int] | None = None) -> Tile:
    return Tile(_thumbnail(path), line1, line2, frame)


def _thumbnail(path: str | Path, size: int = THUMB) -> Image.Image | None:
    decoded = images.load(path, draft=(size, size))
    return None if decoded.image is None else ImageOps.contain(decoded.image, (size, size))


def _sheet(rows: Sequence[Sequence[Tile]]) -> Image.Image:
    columns = max((len(row) for row in rows), default=1) or 1
    sheet = Image.new("RGB", (columns * (THUMB + PAD) + PAD, max(1, len(rows)) * (THUMB + CAPTION + PAD) + PAD),
                      "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = PAD + c * (THUMB + PAD), PAD + r * (THUMB + CAPTION + PAD)
            if tile.image is None:
                draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline="grey")
                draw.text((x + 8, y + THUMB // 2), "cannot show", fill="grey", font=font)
            else:
                thumb = ImageOps.contain(tile.image, (THUMB, THUMB))
                sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
            if tile.frame is not None:
                draw.rectangle((x - 3, y - 3, x + THUMB + 2, y + THUMB + 2), outline=tile.frame, width=3)
            draw.text((x, y + THUMB + 2), _fit(tile.line1, draw, font), fill="black", font=font)
            draw.text((x, y + THUMB + 17), _fit(tile.line2, draw, font), fill=(90, 90, 90), font=font)
    return sheet


def _save(sheet: Image.Image, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _fit(text: str, draw: ImageDraw.ImageDraw, font) -> str:
    """One line of a tile's caption, cut to the tile's width (a file name may hold a newline or bytes that are
    not UTF-8: shown as escapes, as in the terminal)."""
    text = images.printable(text, controls=True)
    while text and draw.textlength(text, font=font) > THUMB:
        text = text[:-2] + "…"
    return text


# -- a map of the collection ---------------------------------------------------------------------------

def layout_2d(vectors: np.ndarray, *, method: str = "tsne", seed: int = 0, steps: Steps | None = None
              ) -> np.ndarray:
    """float32 [n, d] -> float64 [n, 2] in [0, 1]: PCA to 50 dims, then t-SNE (or UMAP), as the reference.
    Tens of seconds for a thousand images: `steps` hears it start and end (pipeline.Steps)."""
    from lookalike.search.pca import Projection

    n = len(vectors)
    if n < 3:
        raise ValueError("a map needs at least 3 images")
    what = f"laying out {n:,} images with PCA and {'UMAP' if method == 'umap' else 't-SNE'}"
    if steps is not None:
        steps(what, 0, None)
    reduced = Projection.fit(vectors, min(50, n, vectors.shape[1])).project(vectors)
    if method == "umap":
        umap = require("umap", "pip:umap-learn", "--method umap")
        points = umap.UMAP(n_components=2, random_state=seed).fit_transform(reduced)
    else:
        from sklearn.manifold import TSNE

        points = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(reduced)
    points = points - points.min(axis=0)
    if steps is not None:
        steps(what, 1, 1)
    return points / np.maximum(points.max(axis=0), 1e-12)


def collection_map(paths: Sequence[str], points: np.ndarray, out: str | Path, *,
                   labels: Sequence[str] | None = None, width: int = 3000, height: int = 2400,
                   thumb: int = 56, steps: Steps | None = None) -> Path:
    """Paste each image's thumbnail at its 2-D position; with labels, frame each in its class's colour and
    write a legend of the classes."""
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    names = sorted(set(labels)) if labels is not None else []
    colours = _palette(len(names))
    colour_of = dict(zip(names, colours, strict=True))
    span = np.array([width - thumb - 4, height - thumb - 4])
    for n, (path, point) in enumerate(zip(paths, points, strict=True)):
        image = _thumbnail(path, thumb)
        if steps is not None and (n % 50 == 49 or n == len(paths) - 1):
            steps("drawing the thumbnails", n + 1, len(paths))
        if image is None:
            continue
        x, y = (point * span + 2).astype(int)
        if labels is not None:
            draw.rectangle((x - 2, y - 2, x + image.width + 1, y + image.height + 1), fill=colour_of[labels[n]])
        sheet.paste(image, (int(x), int(y)))
    if names and len(names) <= 40:
        font = ImageFont.load_default(size=22)
        for i, name in enumerate(names):
            x, y = 12 + (i // 20) * 260, 12 + (i % 20) * 28
            draw.rectangle((x, y + 4, x + 18, y + 22), fill=colour_of[name])
            draw.text((x + 26, y), name, fill="black", font=font)
    return _save(sheet, out)


def _palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct, saturated colours (matplotlib's tab20 and hsv maps)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n <= 20 else colormaps["hsv"]
    positions = range(n) if n <= 20 else np.linspace(0, 1, n, endpoint=False)
    colours = [cmap(p)[:3] for p in positions]
    return [(int(255 * r), int(255 * g), int(255 * b)) for r, g, b in colours]


def index_map(index: Index, out: str | Path, *, sample: int = 1000, method: str = "tsne", seed: int = 0,
              steps: Steps | None = None) -> int:
    """`lookalike map`: at most `sample` images of `index` drawn at random, laid out by `layout_2d` and drawn by
    `collection_map`, framed by folder when there are several. Returns how many images are on the map."""
    ids, vectors = index.vectors()
    if len(ids) < 3:
        raise BadInput(f"{index.path} holds {len(ids)} images; a map needs at least 3")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(ids))[:sample])
    files = index.files(ids[chosen])
    paths = [files[int(i)].path for i in ids[chosen]]
    folders = [Path(p).parent.name for p in paths]
    points = layout_2d(vectors[chosen], method=method, seed=seed, steps=steps)
    collection_map(paths, points, out, labels=folders if len(set(folders)) > 1 else None, steps=steps)
    return len(paths)
