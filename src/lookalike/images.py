"""Finding images on disk and decoding them into RGB, whatever shape they arrive in.

Files are recognised by their first bytes, so a JPEG without an extension is found; a file with an
image extension is kept even when its bytes say otherwise, so that it is recorded as failed with a
reason instead of silently ignored. Decoding never raises for a bad file: it returns a reason.
"""

from __future__ import annotations

import functools
import io
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageMode

# A guard against decompression bombs: 12,000 x 12,000 is more than any camera makes today. Checked here, per
# image, rather than by changing Pillow's global Image.MAX_IMAGE_PIXELS under the host program.
MAX_PIXELS = 144_000_000
ORIENTATION_TAG = 0x0112

# A folder holding this file is a quarantine of moved duplicates (quarantine.py): never indexed.
QUARANTINE_MARKER = ".lookalike-quarantine"

IMAGE_EXTENSIONS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}


@functools.cache
def heif_supported() -> bool:
    """Whether HEIC/HEIF (phone photos) can be read: pillow-heif's opener is registered with Pillow the first
    time such a file is met, not when lookalike is imported."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


# What a browser is told an image is, by the format Pillow decodes (never by the file's name): a file named
# .html or .svg that decodes as a GIF is served as image/gif, and what decodes as none of these is not served.
MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
               "GIF": "image/gif", "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff",
               "HEIF": "image/heic", "AVIF": "image/avif"}


def media_type(handle: BinaryIO) -> str | None:
    """The media type of the image in an open file, from its decoded format (reads only the header)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(handle) as image:
                return MEDIA_TYPES.get(image.format or "")
    except Exception:  # Pillow raises many types for what is not an image: all mean "not servable"
        return None


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


def printable(text: str, *, controls: bool = False) -> str:
    """A path (or any text holding one) as it can be shown: bytes of a file name that are not UTF-8, which
    Python keeps as surrogate escapes, become \\xNN; with `controls`, so do control characters (a name holding
    ESC [31m would otherwise restyle, or move the cursor of, the terminal it is printed on: only for a name
    alone, since the console's own output holds escape codes). For people only; the path itself stays as it is."""
    if controls:
        text = CONTROL.sub(_escaped, text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# C0 and C1 controls, and the bidirectional ones that reorder what follows (U+202E shows "photo\u202egpj.exe"
# as "photoexe.jpg")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escaped(found: re.Match) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def absolute(path: str | os.PathLike) -> Path:
    """A path as an index stores it: absolute, with ~, . and .. folded, but symbolic links kept as named."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def discover(root: str | os.PathLike, skip: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Every image file under `root` (or `root` itself if it is a file), as absolute paths, sorted.

    Hidden files and folders are skipped, and so are quarantine folders of moved duplicates and the files and
    folders in `skip` (an index's own cache, when it lives inside the photos); symbolic links to folders are
    not followed, so a walk always ends and never wanders outside the tree it was given.
    """
    root = absolute(root)
    skipped = {absolute(path) for path in skip}
    if root.is_file():
        if root not in skipped:
            yield root
        return
    for folder, dirs, files in os.walk(root):
        if QUARANTINE_MARKER in files:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) not in skipped)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            if path not in skipped and path.is_file() and is_candidate(path):
                yield path


@dataclass
class Decoded:
    """The outcome of decoding one file: an RGB image and its original size, or the reason there is none."""

    image: Image.Image | None
    width: int = 0
    height: int = 0
    error: str = ""


# Decoding is bounded by the bytes the pixels take once decoded, not by their count: a 3 MB 16-bit PNG of
# 12,000 x 12,000 decodes to 288 MB, a float TIFF to 4 bytes a pixel. Above this, a file is refused with a
# reason (the 144-megapixel guard above still holds too).
MAX_DECODED_BYTES = 1 << 30
# How a file's first bytes are checked and, for small files, how much is read at once (bigger files are
# hashed in chunks and decoded from disk, never read whole).
READ_WHOLE_BYTES = 64 << 20
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def decoded_bytes(image: Image.Image) -> int:
    """The memory the pixels of an opened (not yet loaded) image take once decoded, in its own mode: Pillow
    keeps one-band images at their sample size (1 byte for L and P, 2 for I;16, 4 for I and F) and every
    multi-band image (RGB, RGBA, CMYK, LA...) at 4 bytes a pixel."""
    mode = ImageMode.getmode(image.mode)
    sample = np.dtype(mode.typestr).itemsize
    per_pixel = sample if len(mode.bands) == 1 else 4 * sample
    return image.width * image.height * per_pixel


class MemoryBudget:
    """Bytes of decoded pixels that may be held at once, across threads: a decode waits for its share, so
    four huge uploads (or decode threads) at once never need four times the memory. A decode that needs
    more than the whole budget is refused instead of waiting forever."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.capacity:
            raise MemoryError(f"needs {_mb(nbytes)} to decode, more than the {_mb(self.capacity)} allowed")
        with self._changed:
            self._changed.wait_for(lambda: self.used + nbytes <= self.capacity)
            self.used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


# Letterbox and pillarbox bars (`trim_bars`): rows (or columns) whose grey levels spread less than BAR_SPREAD
# around the frame's edge colour (within BAR_COLOUR), at both opposite edges, the two bars of about the same
# width (BAR_BALANCE px + 2 %), leaving at least BAR_KEEP of the picture.
BAR_SPREAD = 6.0
BAR_COLOUR = 10.0
BAR_BALANCE = 2
BAR_KEEP = 0.4


def trim_bars(image: Image.Image) -> Image.Image:
    """`image` without the letterbox or pillarbox bars a program put around it (a portrait photo padded into a
    landscape frame, a video still, a product shot padded to a square), else `image` itself.

    Why: the model sees the bars as picture. They squeeze the content into a corner of its input, and a copy
    of the same photo padded differently (or not at all) looks like another picture. Only padding is removed:
    bars must be flat, of the edge colour, and centred (the same width at both opposite edges), so a sky or a
    white wall touching one edge stays, and at least BAR_KEEP of each side is kept.
    """
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 8:
        return image
    edge = float(np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])))
    top, bottom = _bars(grey.std(axis=1), grey.mean(axis=1), edge)
    left, right = _bars(grey.std(axis=0), grey.mean(axis=0), edge)
    if (top, bottom, left, right) == (0, grey.shape[0], 0, grey.shape[1]):
        return image
    return image.crop((left, top, right, bottom))


def _bars(spread: np.ndarray, level: np.ndarray, edge: float) -> tuple[int, int]:
    """One axis of `trim_bars`: the (start, end) of what lies between two balanced bars, or (0, n)."""
    flat = (spread < BAR_SPREAD) & (np.abs(level - edge) < BAR_COLOUR)
    n = len(flat)
    if flat.all():  # one flat colour throughout: nothing to cut
        return 0, n
    start, end = int(np.argmin(flat)), n - int(np.argmin(flat[::-1]))  # the first and last rows not flat
    before, after = start, n - end
    if (before == 0 or after == 0 or abs(before - after) > BAR_BALANCE + 0.02 * n
            or end - start < BAR_KEEP * n):
        return 0, n
    return start, end


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.0f} MB"


def decode(source: bytes | BinaryIO, draft: tuple[int, int] | None = None,
           budget: MemoryBudget | None = None) -> Decoded:
    """The bytes of an image file (or an open file, read only as far as decoding needs) -> an upright RGB
    image, or a reason.

    `draft` is the size the caller needs at least: JPEGs decode at 1/2, 1/4 or 1/8 scale while decoding, and
    every format is then reduced by a whole factor while at least twice that size is left (Pillow's
    reducing gap, no visible loss), before any conversion: most of the cost of indexing a photo is pixels
    that resizing throws away. The memory a decode takes is bounded by MAX_DECODED_BYTES and, with
    `budget`, shared with the other decodes running at the time.
    """
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    head = handle.read(16)
    handle.seek(0)
    if not head:
        return Decoded(None, error="empty file")
    kind = sniff(head)
    if kind is None:
        return Decoded(None, error="not an image: unknown file format")
    if kind == "heif" and not heif_supported():
        return Decoded(None, error="HEIC/HEIF image: pip install pillow-heif to read it")
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own, smaller default limit; MAX_PIXELS below decides (and Pillow's
            # DecompressionBombError, past twice its limit, is still caught).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)
            width, height = image.size
            if width * height > MAX_PIXELS:
                return Decoded(None, width, height, f"too large: {width}x{height} pixels (limit {MAX_PIXELS:,})")
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
            if orientation in (5, 6, 7, 8):  # stored lying on its side
                width, height = height, width
            if draft and image.format == "JPEG":
                image.draft("RGB", draft)
            cost = decoded_bytes(image)
            if cost > MAX_DECODED_BYTES:
                return Decoded(None, width, height, f"too large: {width}x{height} {image.mode} pixels decode to "
                                                    f"{_mb(cost)} (limit {_mb(MAX_DECODED_BYTES)})")
            # What is held at the peak: the decoded pixels, and the copy one conversion makes.
            with budget.hold(2 * cost) if budget else nullcontext():
                picture = to_rgb(_reduce(image, draft))
                if orientation in _TRANSPOSE:
                    picture = picture.transpose(_TRANSPOSE[orientation])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Decoded(None, error=f"too large: more than {MAX_PIXELS:,} pixels (decompression bomb guard)")
    except MemoryError as exc:
        return Decoded(None, width, height, f"too large: {exc}" if str(exc) else "too large: out of memory")
    except Image.UnidentifiedImageError:  # its message names the Python object read from: say it plainly
        return Decoded(None, error=f"cannot decode {kind}: not a valid {kind} file")
    except Exception as exc:  # Pillow raises many types for bad bytes; all of them mean "cannot decode"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Decoded(None, error=f"cannot decode {kind}: {reason[:200]}")
    return Decoded(picture, width, height)


def _reduce(image: Image.Image, draft: tuple[int, int] | None) -> Image.Image:
    """Load `image`, shrunk by a whole factor while at least twice `draft` is left (if draft is given),
    converting first only what Image.reduce cannot take (16-bit greys to 8 bits, palettes, bilevel)."""
    image.load()
    factor = min(image.width // (2 * draft[0]), image.height // (2 * draft[1])) if draft else 1
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        image = _grey8(image)
    elif image.mode in ("P", "PA", "1"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else
                              "L" if image.mode == "1" else "RGB")
    return image.reduce(factor)


def load(path: str | os.PathLike, draft: tuple[int, int] | None = None, budget: MemoryBudget | None = None
         ) -> Decoded:
    """Read and decode one file; an unreadable file is a reason, not an exception. The file is read only as
    far as decoding needs (a huge file is never read whole)."""
    try:
        with open(path, "rb") as handle:
            return decode(handle, draft, budget)
    except OSError as exc:
        return Decoded(None, error=f"cannot read: {exc.strerror or exc}")


def _strips(image: Image.Image, pixels: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows as an array) of an image, about `pixels` at a time: a full-size copy is never made."""
    rows = max(1, pixels // max(1, image.width))
    for top in range(0, image.height, rows):
        yield top, np.asarray(image.crop((0, top, image.width, min(image.height, top + rows))))


def _grey8(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit integer grey image -> 8-bit L (16-bit samples over 0-65535, as in to_rgb before),
    a strip at a time: the only full-size allocation is the 1-byte result."""
    out = np.empty((image.height, image.width), np.uint8)
    sixteen = image.mode.startswith("I;16")
    if not sixteen:  # a 32-bit image holds 16-bit samples when any exceeds 8 bits
        sixteen = any(strip.max() > 255 for _, strip in _strips(image) if strip.size)
    for top, strip in _strips(image):
        scaled = strip.astype(np.float32) * np.float32(255.0 / 65535.0) if sixteen else strip
        out[top:top + len(strip)] = np.clip(scaled, 0, 255)
    return Image.fromarray(out, "L")


def _float8(image: Image.Image) -> Image.Image:
    """A float image -> 8-bit L stretched over its range, NaNs as 0, a strip at a time."""
    low, high = np.inf, -np.inf
    for _, strip in _strips(image):
        finite = strip[np.isfinite(strip)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    if not np.isfinite(low):
        low = high = 0.0
    out = np.empty((image.height, image.width), np.uint8)
    for top, strip in _strips(image):
        clean = np.nan_to_num(strip.astype(np.float32), nan=0.0, posinf=high, neginf=low)
        out[top:top + len(strip)] = np.clip((clean - low) * (255.0 / (high - low or 1.0)), 0, 255)
    return Image.fromarray(out, "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled down, CMYK and palettes converted."""
    image.load()
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _grey8(image).convert("RGB")
    if image.mode == "F":
        return _float8(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
