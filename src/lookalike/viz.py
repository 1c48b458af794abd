"""Pictures of results: the query beside its neighbours, each with its rank and score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from lookalike import images

THUMB = 200
PAD = 8
CAPTION = 34


def result_grid(query: Image.Image | None, hits: Sequence, out: str | Path, *, columns: int = 6,
                title: str = "query") -> Path:
    """Write a PNG: the query first (when given), then each hit with "#rank score" and its file name."""
    tiles: list[tuple[Image.Image | None, str, str]] = []
    if query is not None:
        tiles.append((query, title, ""))
    for hit in hits:
        decoded = images.load(hit.path, draft=(THUMB, THUMB))
        tiles.append((decoded.image, f"#{hit.rank}  {hit.score:.3f}", Path(hit.path).name))
    columns = max(1, min(columns, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (THUMB + PAD) + PAD, rows * (THUMB + CAPTION + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for n, (image, line1, line2) in enumerate(tiles):
        x = PAD + (n % columns) * (THUMB + PAD)
        y = PAD + (n // columns) * (THUMB + CAPTION + PAD)
        if image is None:
            draw.rectangle((x, y, x + THUMB - 1, y + THUMB - 1), outline="grey")
            draw.text((x + 8, y + THUMB // 2), "cannot show", fill="grey", font=font)
        else:
            thumb = ImageOps.contain(image, (THUMB, THUMB))
            sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + (THUMB - thumb.height) // 2))
        if query is not None and n == 0:
            draw.rectangle((x - 3, y - 3, x + THUMB + 2, y + THUMB + 2), outline=(220, 40, 40), width=3)
        draw.text((x, y + THUMB + 2), line1, fill="black", font=font)
        draw.text((x, y + THUMB + 17), _fit(line2, draw, font), fill=(90, 90, 90), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _fit(text: str, draw: ImageDraw.ImageDraw, font) -> str:
    while text and draw.textlength(text, font=font) > THUMB:
        text = text[:-2] + "…"
    return text
