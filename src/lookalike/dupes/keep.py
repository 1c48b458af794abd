"""Which copy of a photograph to keep: the camera original, when the files say which one it is.

An edit is newer, smaller or lossier than what it was made from, and an editor leaves its name behind; so,
in order (the first rule that tells two files apart decides):

1. camera data: EXIF Make or Model present (a web re-encode strips them);
2. not edited: no Software tag written after the photo was taken (EXIF DateTime later than
   DateTimeOriginal, or a Software tag with no capture date at all);
3. more pixels (a resize or a crop has fewer);
4. not lossy: a JPEG saved at estimated quality below LOW_QUALITY (from its quantisation tables) loses;
5. the native format: where the group holds a JPEG, a PNG or WebP of the same picture is a re-encode, not
   an improvement, even though PNG is lossless;
6. a file that other paths lead to (a symbolic or hard link): it cannot be moved without breaking that path, so
   among otherwise equal copies it is the one to keep; and a file over a symbolic link to one, whose target may
   lie outside the folder (keeping the link would move the folder's only real copy aside). Only then: a link to
   a crop is not kept over the larger original (it stays where it is anyway: find.movable);
7. the oldest modification time (copies are made after their original).

Quality is a coarse class on purpose: a brightened copy re-saved at quality 92 is not "better" than its
quality-75 original. Ties fall to the path, so the choice is stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from PIL import Image

LOW_QUALITY = 60  # estimated JPEG quality below which a copy counts as lossy

# EXIF tags (base IFD 0x0132 DateTime, Exif IFD 0x9003 DateTimeOriginal, 0x9291 its fraction of a second)
MAKE, MODEL, SOFTWARE, DATETIME = 0x010F, 0x0110, 0x0131, 0x0132
EXIF_IFD, DATETIME_ORIGINAL, SUBSEC_ORIGINAL = 0x8769, 0x9003, 0x9291

# The IJG reference luminance table (quality 50), which libjpeg scales for every other quality.
_IJG_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)


@dataclass
class Facts:
    """What the keep rule reads from one file (its header only: nothing is decoded)."""

    camera: str = ""  # "Make Model", or empty
    edited_by: str = ""  # the Software tag when it was written after capture
    pixels: int = 0
    format: str = ""  # JPEG, PNG, WEBP, ...
    quality: int | None = None  # estimated JPEG quality, None for other formats
    mtime_ns: int = 0
    linked: bool = False  # a file other paths lead to (a link to it, a hard link): moving it would break them
    symlink: bool = False  # a symbolic link itself: the file it leads to may lie outside the folder
    taken: str = ""  # EXIF DateTimeOriginal, "YYYY:MM:DD HH:MM:SS"
    taken_fraction: str = ""  # ... and its SubSecTimeOriginal, where the camera wrote one


def read_facts(path: str, width: int, height: int, mtime_ns: int) -> Facts:
    """The facts of one file; an unreadable header leaves the defaults (it then never wins on them)."""
    facts = Facts(pixels=width * height, mtime_ns=mtime_ns)
    try:
        with Image.open(path) as image:
            facts.format = image.format or ""
            exif = image.getexif()
            make, model = str(exif.get(MAKE, "")).strip(" \x00"), str(exif.get(MODEL, "")).strip(" \x00")
            facts.camera = " ".join(p for p in (make, model) if p)
            software = str(exif.get(SOFTWARE, "")).strip(" \x00")
            original = str(exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL, "")).strip(" \x00")
            if _moment(original):  # a placeholder ("0000:00:00 00:00:00") or garbage says nothing
                facts.taken = original
                fraction = str(exif.get_ifd(EXIF_IFD).get(SUBSEC_ORIGINAL, "")).strip(" \x00")
                facts.taken_fraction = fraction if fraction.isdigit() else ""
            changed = str(exif.get(DATETIME, "")).strip(" \x00")
            if software and (not original or (changed and changed > original)):
                facts.edited_by = software
            if facts.format == "JPEG":
                facts.quality = jpeg_quality(getattr(image, "quantization", None) or {})
    except Exception:  # Pillow raises many kinds for a damaged header: the file just proves nothing
        pass
    return facts


def _moment(text: str) -> bool:
    """Whether an EXIF date reads as a real moment ("YYYY:MM:DD HH:MM:SS")."""
    try:
        datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return False
    return True


def taken_apart(a: Facts, b: Facts) -> bool:
    """Both files say when the shutter fired, and not the same moment: two exposures, not one photograph and an
    edit of it (editors keep DateTimeOriginal or drop it; they do not rewrite it). Compared to the second, and to
    its fraction where both carry one (a burst shoots several frames a second)."""
    if not a.taken or not b.taken:
        return False
    if a.taken != b.taken:
        return True
    return bool(a.taken_fraction and b.taken_fraction and a.taken_fraction != b.taken_fraction)


def jpeg_quality(tables: dict) -> int | None:
    """libjpeg's quality setting (1-100) that would give this luminance quantisation table, estimated."""
    luminance = tables.get(0)
    if not luminance or len(luminance) != 64:
        return None
    # Pillow gives the table in natural (row by row) order, as the reference is written here.
    scale = 100 * sum(q / r for q, r in zip(luminance, _IJG_LUMINANCE, strict=True)) / 64
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return max(1, min(100, round(quality)))


class Candidate(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def path(self) -> str: ...


C = TypeVar("C", bound=Candidate)


def choose(members: Sequence[C], facts: dict[int, Facts]) -> tuple[C, str]:
    """The member to keep and why, in one line."""
    has_jpeg = any(facts[m.id].format == "JPEG" for m in members)

    def lossy(f: Facts) -> bool:
        return f.quality is not None and f.quality < LOW_QUALITY

    rules = [
        (lambda f: bool(f.camera), lambda f: f"camera original ({f.camera})"),
        (lambda f: not f.edited_by, lambda f: "not re-saved by an editor"),
        (lambda f: f.pixels, lambda f: f"most pixels ({f.pixels:,})"),
        (lambda f: not lossy(f), lambda f: f"not re-compressed (JPEG quality ~{f.quality})" if f.quality
         else "lossless"),
        (lambda f: not has_jpeg or f.format == "JPEG", lambda f: "the JPEG, not a re-encode of it"),
        (lambda f: (f.linked, not f.symlink), lambda f: "other paths lead to this file (a link): it stays"
         if f.linked else "a file, not a symbolic link to one"),
        (lambda f: -f.mtime_ns, lambda f: "the oldest file"),
    ]
    remaining = sorted(members, key=lambda m: m.path)
    reasons = []
    for n, (key, words) in enumerate(rules):
        best = max(key(facts[m.id]) for m in remaining)
        winners = [m for m in remaining if key(facts[m.id]) == best]
        if len(winners) < len(remaining):
            reason = words(facts[winners[0].id])
            if n == 1:
                edited = next(m for m in remaining if m not in winners)
                reason += f" (another was: {facts[edited.id].edited_by})"
            reasons.append(reason)
            remaining = winners
            if len(remaining) == 1:
                return remaining[0], "; ".join(reasons)
    return remaining[0], "; ".join([*reasons, "otherwise all alike: the first by path"])
