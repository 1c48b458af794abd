"""The image sets of the duplicates benchmark: edited copies of real photos (a dev set for choosing thresholds,
a test set with other photos, other seeds and other edits for reporting), and sets of *other shots* that must
not be flagged.

Edited copies: originals are Caltech101 photos outside the three hard-negative classes (Motorbikes, airplanes,
Faces_easy) and BACKGROUND_Google; dev takes every 9th such file, test every 9th file starting at the 7th, so
no photo is in both. (The first test set started at the 5th, with seeds from 7,000,000: its results were seen
while the verification was changed, so the test set was made again from other photos with other seeds.)
Each chosen photo gets one copy per edit, each made alone with its own seed. Copies are written after the
originals, so they are newer (as edits are); originals keep the dataset's mtime.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from benchmarks.report import CALTECH, DATASETS

HARD_CLASSES = ("Motorbikes", "airplanes", "Faces_easy")
# The dev set's look-alike studio shots (for choosing thresholds; the three above are test-only): other classes
# of one kind of object photographed alike, many on white. Photos that are originals of the edited sets are left
# out (they would be byte-identical twins, and the test set's must stay unseen).
DEV_HARD_CLASSES = ("car_side", "watch", "laptop", "chair", "grand_piano", "helicopter", "cellphone", "camera",
                    "headphone", "wheelchair", "revolver", "stapler", "scissors", "wrench", "cup", "lamp")
HOLIDAYS = DATASETS / "holidays_dev"
TEST_OFFSET, TEST_SEED = 6, 8_000_000  # the second test set (see above)

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def _resize(im: Image.Image, rng: np.random.Generator, factor: float = 0.5) -> Image.Image:
    return im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.BILINEAR)


def _crop_borders(im: Image.Image, rng: np.random.Generator, share: float = 0.10) -> Image.Image:
    """`share` of the width and of the height off each border (dev: 10 %: 64 % of the picture kept)."""
    dx, dy = round(im.width * share), round(im.height * share)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


def _crop_corner(im: Image.Image, rng: np.random.Generator, share: float = 0.20) -> Image.Image:
    """`share` of the width and of the height off, split at random between the borders (64 % kept)."""
    dx, dy = round(im.width * share), round(im.height * share)
    left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
    return im.crop((left, top, left + im.width - dx, top + im.height - dy))


def _font(size: int):
    return ImageFont.load_default(size=max(10, size))


def _caption(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """White text with a black outline, at a random height (dev)."""
    out = im.copy()
    size = max(10, im.height // 12)
    y = int(rng.integers(0, max(1, im.height - size - 2)))
    ImageDraw.Draw(out).text((4, y), "© 2024 holiday photos", fill=(255, 255, 255), font=_font(size),
                             stroke_width=1, stroke_fill=(0, 0, 0))
    return out


def _caption_bar(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A dark bar across the bottom with a caption in it, as social sites add (test)."""
    out = im.copy()
    bar = max(12, im.height // 9)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, im.height - bar, im.width, im.height), fill=(20, 20, 20))
    draw.text((6, im.height - bar + 2), f"Summer {int(rng.integers(1990, 2025))}, with love", fill=(240, 240, 200),
              font=_font(bar - 4))
    return out


def _banner(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An opaque band of a random colour across the top with a title in it, as a slide or a post adds (dev: the
    occluding edit thresholds are chosen on; the test set's caption bar is another, at the bottom)."""
    out = im.copy()
    band = max(12, int(im.height * rng.uniform(0.08, 0.14)))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, im.width, band), fill=colour)
    text = tuple(255 - c for c in colour)
    draw.text((int(rng.integers(2, max(3, im.width // 4))), 2), f"Trip {int(rng.integers(1, 99))}", fill=text,
              font=_font(band - 4))
    return out


def _watermark(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Large half-transparent text across the middle (test)."""
    base = im.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    size = max(12, im.width // 8)
    ImageDraw.Draw(layer).text((im.width // 10, im.height // 2 - size // 2), "© PHOTOSTOCK", font=_font(size),
                               fill=(255, 255, 255, 110))
    return Image.alpha_composite(base, layer).convert("RGB")


def _rotate(im: Image.Image, rng: np.random.Generator, degrees: float = 5.0) -> Image.Image:
    """Rotated, same size, corners filled black (dev: 5°)."""
    return im.rotate(degrees * (1 if rng.random() < 0.5 else -1), Image.BICUBIC, expand=False)


def _straighten(im: Image.Image, rng: np.random.Generator, degrees: float = 3.0) -> Image.Image:
    """Rotated and cropped to the largest upright rectangle without corners, as editors straighten (test)."""
    angle = np.radians(degrees)
    rotated = im.rotate(degrees * (1 if rng.random() < 0.5 else -1), Image.BICUBIC, expand=False)
    w, h = im.size
    # the inner rectangle with the same aspect that fits in the rotated frame
    scale = 1 / (np.cos(angle) + np.sin(angle) * max(w / h, h / w))
    cw, ch = int(w * scale), int(h * scale)
    return rotated.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))


# name -> (edit, how it is saved)
DEV_EDITS: dict[str, tuple[Edit, str]] = {
    "resized 50 %": (_resize, "jpeg"),
    "JPEG quality 30": (lambda im, rng: im, "jpeg30"),
    "cropped 10 % per border": (_crop_borders, "jpeg"),
    "brightness +30 %": (lambda im, rng: ImageEnhance.Brightness(im).enhance(1.3), "jpeg"),
    "mirrored": (lambda im, rng: ImageOps.mirror(im), "jpeg"),
    "caption": (_caption, "jpeg"),
    "rotated 5°": (_rotate, "jpeg"),
}
DEV_ONLY = ("banner",)  # added to the dev set after the test set was first run (see docs/BENCHMARKS.md)
DEV_EDITS["banner"] = (_banner, "jpeg")
TEST_EDITS: dict[str, tuple[Edit, str]] = {
    # the same seven, on other photos with other seeds (caption height, rotation side, quality)
    **{label: edit for label, edit in DEV_EDITS.items() if label not in DEV_ONLY},
    "WebP re-encode": (lambda im, rng: im, "webp"),
    "cropped 20 % (random borders)": (_crop_corner, "jpeg"),
    "contrast +40 %": (lambda im, rng: ImageEnhance.Contrast(im).enhance(1.4), "jpeg"),
    "brightness -25 %": (lambda im, rng: ImageEnhance.Brightness(im).enhance(0.75), "jpeg"),
    "greyscale": (lambda im, rng: ImageOps.grayscale(im).convert("RGB"), "jpeg"),
    "mirrored, resized 70 %": (lambda im, rng: _resize(ImageOps.mirror(im), rng, 0.7), "jpeg"),
    "caption bar": (_caption_bar, "jpeg"),
    "watermark": (_watermark, "jpeg"),
    "straightened 3°": (_straighten, "jpeg"),
}


def originals(split: str) -> list[Path]:
    """The photos a split draws its originals from, in a fixed order."""
    photos = [p for p in sorted(CALTECH.rglob("*.jpg"))
              if p.parent.name not in (*HARD_CLASSES, "BACKGROUND_Google")]
    return photos[::9] if split == "dev" else photos[TEST_OFFSET::9]


def make_edited_set(folder: Path, split: str, count: int, edited: int) -> dict[str, list[tuple[str, str]]]:
    """Write `count` originals and, for `edited` of them (every third), one copy per edit of the split into
    `folder`. Returns truth: original file name -> [(copy file name, edit name)]."""
    edits = DEV_EDITS if split == "dev" else TEST_EDITS
    seed_base = 0 if split == "dev" else TEST_SEED
    photos = originals(split)[:count]
    truth: dict[str, list[tuple[str, str]]] = {}
    for path in photos:
        name = f"{path.parent.name}-{path.name}"
        shutil.copy2(path, folder / name)  # keeps the dataset's (older) mtime
        truth[name] = []
    for n, path in enumerate(photos[::3][:edited]):
        name = f"{path.parent.name}-{path.name}"
        original = Image.open(path).convert("RGB")
        for t, (label, (edit, saved)) in enumerate(edits.items()):
            rng = np.random.default_rng(seed_base + 1000 * n + t)
            image = edit(original, rng)
            stem = f"e{t:02d}-{Path(name).stem}"
            if saved == "webp":
                copy = stem + ".webp"
                image.save(folder / copy, quality=80)
            else:
                copy = stem + ".jpg"
                quality = int(saved[4:]) if saved != "jpeg" else int(rng.integers(85, 96))
                image.save(folder / copy, quality=quality)
            truth[name].append((copy, label))
    return truth


def link_hard_negatives(folder: Path, split: str = "test") -> list[str]:
    """Look-alike studio shots, as symbolic links into `folder`: for test Caltech101 Motorbikes + airplanes +
    Faces_easy, for dev DEV_HARD_CLASSES less the edited sets' originals. Many studio shots of the same kind of
    thing, and a few real near-duplicates among them."""
    names = []
    taken = {*originals("dev"), *originals("test")} if split == "dev" else set()
    for cls in HARD_CLASSES if split == "test" else DEV_HARD_CLASSES:
        for path in sorted((CALTECH / cls).glob("*.jpg")):
            if path in taken:
                continue
            name = f"{cls}-{path.name}"
            os.symlink(path, folder / name)
            names.append(name)
    return names


def reshot(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A synthetic *other shot* of the same scene (dev only, for choosing thresholds): the camera turned a
    little (a homography moving each corner up to 1.5 % of the frame), parallax (a smooth displacement field
    of 0.4-1.5 px at the 320 px the checks run on), in half of them a part of the scene moved (a patch shifted
    by 2-5 % of the frame: a person, a branch), and another exposure's noise and JPEG."""
    import cv2

    rgb = np.asarray(im.convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    moved = (corners + rng.uniform(-0.015, 0.015, (4, 2)) * (w, h)).astype(np.float32)
    homography = cv2.getPerspectiveTransform(moved, corners).astype(np.float32)  # output pixel -> source pixel
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ones = np.ones_like(xx)
    src = np.einsum("ij,jhw->ihw", homography, np.stack([xx, yy, ones]))
    map_x, map_y = src[0] / src[2], src[1] / src[2]
    amplitude = rng.uniform(0.4, 1.5) * max(h, w) / 320
    field = rng.normal(0, 1, (2, 4, 4)).astype(np.float32)
    map_x += cv2.resize(field[0], (w, h), interpolation=cv2.INTER_CUBIC) * amplitude
    map_y += cv2.resize(field[1], (w, h), interpolation=cv2.INTER_CUBIC) * amplitude
    out = cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        ph, pw = int(h * rng.uniform(0.12, 0.25)), int(w * rng.uniform(0.12, 0.25))
        y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
        dy, dx = (int(v) for v in rng.uniform(0.02, 0.05, 2) * (h, w) * rng.choice([-1, 1], 2))
        y2, x2 = min(max(0, y + dy), h - ph), min(max(0, x + dx), w - pw)
        out[y2:y2 + ph, x2:x2 + pw] = out[y:y + ph, x:x + pw].copy()
    out += rng.normal(0, rng.uniform(1.5, 4.0), out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def close_reshot(im: Image.Image, rng: np.random.Generator, parallax: float) -> Image.Image:
    """A synthetic *close* re-shot (dev only): the camera barely moved (a similarity: zoom 0.97-1.03, rotation
    within 0.5°, a few pixels of shift), a faint smooth parallax field of `parallax` px at the 320 px the checks
    run on, another exposure (gain 0.9-1.1) and its noise. What `reshot` makes, but closer: its fine detail
    mostly agrees, as in the holidays re-shots that pass."""
    import cv2

    rgb = np.asarray(im.convert("RGB"), np.float32)
    h, w = rgb.shape[:2]
    similarity = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-0.5, 0.5), rng.uniform(0.97, 1.03))
    similarity[:, 2] += rng.uniform(-3, 3, 2)
    inverse = cv2.invertAffineTransform(similarity)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = rng.normal(0, 1, (2, 4, 4)).astype(np.float32) * parallax * max(h, w) / 320
    map_x = inverse[0, 0] * xx + inverse[0, 1] * yy + inverse[0, 2] + cv2.resize(field[0], (w, h),
                                                                                 interpolation=cv2.INTER_CUBIC)
    map_y = inverse[1, 0] * xx + inverse[1, 1] * yy + inverse[1, 2] + cv2.resize(field[1], (w, h),
                                                                                 interpolation=cv2.INTER_CUBIC)
    out = cv2.remap(rgb, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT) * rng.uniform(0.9, 1.1)
    out += rng.normal(0, rng.uniform(1.5, 4.0), out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def make_reshots(folder: Path, seed: int = 5_000_000) -> list[tuple[str, str]]:
    """One synthetic re-shot (see `reshot`) of every second holidays_dev photo of the dev half and of 100 dev
    Caltech101 photos that have no edited copies, written into `folder`; their originals are in the dev set
    already. Returns [(source path, re-shot name)]: pairs that must NOT be flagged."""
    holidays = [p for p in sorted(HOLIDAYS.glob("*.jpg")) if int(p.stem) // 100 < 1075][::2]
    sources = holidays + originals("dev")[1::3][:100]
    pairs = []
    for n, path in enumerate(sources):
        rng = np.random.default_rng(seed + n)
        shot = f"reshot-{path.parent.name}-{path.stem}.jpg"
        reshot(Image.open(path), rng).save(folder / shot, quality=int(rng.integers(85, 96)))
        pairs.append((str(path), shot))
    return pairs


def link_holidays(folder: Path, half: str) -> list[str]:
    """holidays_dev: groups of other shots of one scene. `half` dev: groups 1000-1074, test: 1075-1149."""
    names = []
    for path in sorted(HOLIDAYS.glob("*.jpg")):
        group = int(path.stem) // 100
        if (group < 1075) == (half == "dev"):
            os.symlink(path, folder / path.name)
            names.append(path.name)
    return names
