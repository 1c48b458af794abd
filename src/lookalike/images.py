"""Finding images on disk and decoding them into RGB, whatever shape they arrive in.

Files are recognised by their first bytes, so a JPEG without an extension is found; a file with an
image extension is kept even when its bytes say otherwise, so that it is recorded as failed with a
reason instead of silently ignored. Decoding never raises for a bad file: it returns a reason.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# A guard against decompression bombs: 12,000 x 12,000 is more than any camera makes today.
MAX_PIXELS = 144_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ORIENTATION_TAG = 0x0112

# A folder holding this file is a quarantine of moved duplicates (quarantine.py): never indexed.
QUARANTINE_MARKER = ".lookalike-quarantine"

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}

try:  # HEIC/HEIF (iPhone photos) when the optional pillow-heif is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False


def sniff(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heif"
    return None


def is_candidate(path: Path) -> bool:
    """Should this file be indexed (or recorded as failed)? Cheap: one stat and at most 16 bytes read."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            return sniff(handle.read(16)) is not None
    except OSError:
        return False


def absolute(path: str | os.PathLike) -> Path:
    """A path as an index stores it: absolute, with ~, . and .. folded, but symbolic links kept as named."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def discover(root: str | os.PathLike) -> Iterator[Path]:
    """Every image file under `root` (or `root` itself if it is a file), as absolute paths, sorted.

    Hidden files and folders are skipped, and so are quarantine folders of moved duplicates; symbolic links to
    folders are not followed, so a walk always ends and never wanders outside the tree it was given.
    """
    root = absolute(root)
    if root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root):
        if QUARANTINE_MARKER in files:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            if path.is_file() and is_candidate(path):
                yield path


@dataclass
class Decoded:
    """The outcome of decoding one file: an RGB image and its original size, or the reason there is none."""

    image: Image.Image | None
    width: int = 0
    height: int = 0
    error: str = ""


def decode(data: bytes, draft: tuple[int, int] | None = None) -> Decoded:
    """Bytes of an image file -> an upright RGB image, or a reason.

    `draft` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding, to no less than that size:
    most of the cost of indexing a photo is decoding pixels that resizing throws away.
    """
    if not data:
        return Decoded(None, error="empty file")
    kind = sniff(data[:16])
    if kind is None:
        return Decoded(None, error="not an image: unknown file format")
    if kind == "heif" and not HEIF_SUPPORTED:
        return Decoded(None, error="HEIC/HEIF image: pip install pillow-heif to read it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                return Decoded(None, width, height, f"too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
            if image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):  # stored lying on its side
                width, height = height, width
            if draft and image.format == "JPEG":
                image.draft("RGB", draft)
            image = to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Decoded(None, error=f"too large: more than {MAX_PIXELS:,} pixels (decompression bomb guard)")
    except Exception as exc:  # Pillow raises many types for bad bytes; all of them mean "cannot decode"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Decoded(None, error=f"cannot decode {kind}: {reason[:200]}")
    return Decoded(image, width, height)


def load(path: str | os.PathLike, draft: tuple[int, int] | None = None) -> Decoded:
    """Read and decode one file; an unreadable file is a reason, not an exception."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Decoded(None, error=f"cannot read: {exc.strerror or exc}")
    return decode(data, draft)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled down, CMYK and palettes converted."""
    image.load()
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        grey = np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = pixels.min(), pixels.max()
        grey = ((pixels - low) * (255.0 / (high - low or 1.0))).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
