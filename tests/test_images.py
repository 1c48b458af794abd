"""Discovery by content and decoding of every awkward kind of file, good and bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike import images
from tests.conftest import picture


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size and holds almost no data: a decompression-bomb shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0\0\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\0\0", "png"),
        (b"GIF89a\x01\0", "gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
        (b"BM6\0\0\0\0\0\0\0\x36\0\0\0", "bmp"),
        (b"II*\0\x08\0\0\0", "tiff"),
        (b"\0\0\0\x18ftypheic\0\0", "heif"),
        (b"hello, world\n", None),
        (b"", None),
    ],
)
def test_sniff_recognises_formats_by_their_first_bytes(head, kind):
    assert images.sniff(head) == kind


def test_discover_finds_images_by_content_and_extension_and_skips_the_rest(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    picture("disc").save(tmp_path / "a.jpg")
    picture("disc").save(tmp_path / "sub" / "b.PNG")
    (tmp_path / "sub" / "deeper" / "tmp").write_bytes(jpeg_bytes(picture("noise")))  # no extension
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.jpg").write_text("a text file named .jpg")  # kept, to be recorded as failed
    (tmp_path / ".hidden").mkdir()
    picture("disc").save(tmp_path / ".hidden" / "c.jpg")
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)  # a loop that must not be followed

    found = [p.relative_to(tmp_path).as_posix() for p in images.discover(tmp_path)]

    assert found == ["a.jpg", "fake.jpg", "sub/b.PNG", "sub/deeper/tmp"]


def test_discover_accepts_a_single_file(tmp_path):
    picture("disc").save(tmp_path / "a.jpg")
    assert list(images.discover(tmp_path / "a.jpg")) == [tmp_path / "a.jpg"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"just some text, named .jpg", "not an image"),
        (jpeg_bytes(picture("disc"))[:300], "cannot decode jpeg"),
        (png_claiming(100_000, 100_000), "too large"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode png"),
    ],
    ids=["zero-bytes", "text-named-jpg", "truncated-jpeg", "png-bomb-header", "garbage-png"],
)
def test_bad_files_become_reasons_not_exceptions(data, reason):
    decoded = images.decode(data, draft=(64, 64))
    assert decoded.image is None
    assert reason in decoded.error


def test_unreadable_file_is_a_reason(tmp_path):
    decoded = images.load(tmp_path / "missing.jpg")
    assert decoded.image is None and decoded.error.startswith("cannot read")


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red in CMYK
    decoded = images.decode(jpeg_bytes(cmyk))
    assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (40, 30)
    r, g, b = np.asarray(decoded.image)[15, 20]
    assert r > 200 and g < 60 and b < 60


def test_16_bit_png_keeps_its_tones():
    ramp = (np.linspace(0, 65535, 64 * 16).reshape(16, 64)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    decoded = images.decode(buffer.getvalue())
    grey = np.asarray(decoded.image)[..., 0]
    assert decoded.image.mode == "RGB"
    assert grey.min() < 10 and grey.max() > 245  # the full range survives, not clipped to white
    assert np.all(np.diff(grey[8].astype(int)) >= 0)


def test_exif_orientation_is_applied_and_size_is_upright():
    wide = Image.new("RGB", (80, 40), "blue")
    wide.paste((255, 0, 0), (0, 0, 40, 40))  # left half red
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = 6  # stored lying on its side: rotate 90 degrees clockwise to view
    decoded = images.decode(jpeg_bytes(wide, exif=exif.tobytes()))
    assert decoded.image.size == (40, 80)
    assert (decoded.width, decoded.height) == (40, 80)
    top = np.asarray(decoded.image)[5, 20]
    assert top[0] > 200 and top[2] < 60  # the red half is now on top


def test_alpha_is_composited_on_white_and_palettes_converted():
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    decoded = images.to_rgb(rgba)
    assert tuple(np.asarray(decoded)[5, 15]) == (255, 255, 255)
    assert tuple(np.asarray(decoded)[5, 5]) == (0, 0, 255)
    palette = picture("disc").convert("P")
    assert images.to_rgb(palette).mode == "RGB"


def test_jpeg_draft_decodes_big_photos_at_reduced_scale_but_reports_the_real_size():
    big = picture("stripes", size=(1600, 1200))
    decoded = images.decode(jpeg_bytes(big), draft=(224, 224))
    assert (decoded.width, decoded.height) == (1600, 1200)
    assert 224 <= min(decoded.image.size) < 600


def test_real_jpeg_without_extension_from_caltech_decodes():
    from tests.conftest import CALTECH

    tmp = CALTECH / "BACKGROUND_Google" / "tmp"
    if not tmp.exists():
        pytest.skip("shared datasets not present")
    assert images.is_candidate(tmp)
    decoded = images.load(tmp)
    assert decoded.image is not None and (decoded.width, decoded.height) == (184, 140)


def test_decode_accepts_gif_webp_bmp_tiff(tmp_path):
    image = picture("disc")
    for fmt in ("GIF", "WEBP", "BMP", "TIFF"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        decoded = images.decode(buffer.getvalue())
        assert decoded.image is not None, fmt
        assert decoded.image.mode == "RGB" and decoded.image.size == image.size



def test_importing_lookalike_leaves_pillows_global_settings_alone():
    """A host program's Pillow limits and plugins are its own: lookalike checks sizes per image, and registers
    the HEIC opener only when it meets a HEIC file."""
    import subprocess
    import sys

    code = ("from PIL import Image; limit = Image.MAX_IMAGE_PIXELS; ids = set(Image.ID); "
            "import lookalike, lookalike.images, lookalike.index; "
            "assert Image.MAX_IMAGE_PIXELS == limit, Image.MAX_IMAGE_PIXELS; "
            "assert set(Image.ID) == ids, set(Image.ID) - ids")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
