"""Small files that decode huge: memory is bounded by decoded bytes, mode-aware, shared between decodes
(issue 14, item 5)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Index, images


def grey16_png(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG of these dimensions, a horizontal ramp, written row by row: a few MB on disk
    however large it decodes, and never held whole in memory here."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + (np.linspace(0, 65535, width).astype(">u2")).tobytes()
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def float_tiff(width: int, height: int) -> bytes:
    """A deflate-compressed 32-bit float TIFF (mode F): small on disk, 4 bytes a pixel decoded."""
    ramp = np.tile(np.linspace(-1.0, 3.0, width, dtype=np.float32), (height, 1))
    ramp[0, 0] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(ramp, "F").save(buffer, "TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def test_decoded_bytes_are_counted_by_mode():
    for mode, per_pixel in [("L", 1), ("P", 1), ("I;16", 2), ("I", 4), ("F", 4), ("RGB", 4), ("RGBA", 4),
                            ("LA", 4), ("CMYK", 4)]:
        assert images.decoded_bytes(Image.new(mode, (30, 20))) == 600 * per_pixel, mode
    with Image.open(io.BytesIO(grey16_png(12_000, 12_000))) as lazy:  # the header alone tells
        assert images.decoded_bytes(lazy) == 12_000 * 12_000 * 2


@pytest.mark.parametrize("make, mode", [(lambda: grey16_png(9_000, 8_000), "I;16"),
                                        (lambda: float_tiff(3_000, 2_500), "F")])
def test_what_decodes_beyond_the_limit_is_refused_with_a_reason(make, mode, monkeypatch):
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 20_000_000)
    decoded = images.decode(make(), draft=(224, 224))
    assert decoded.image is None
    assert decoded.error.startswith("too large") and mode in decoded.error and "MB" in decoded.error


@pytest.mark.parametrize("make", [lambda: grey16_png(600, 400), lambda: float_tiff(600, 400)])
def test_deep_images_still_decode_to_their_tones(make):
    decoded = images.decode(make(), draft=(64, 64))
    assert decoded.image is not None and decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (600, 400)
    assert 128 <= min(decoded.image.size) < 400  # reduced while decoding, to no less than twice the draft
    grey = np.asarray(decoded.image)[decoded.image.height // 2, :, 0].astype(int)
    assert grey[2] < 20 and grey[-1] > 235 and np.all(np.diff(grey) >= -1)


PEAK = """
import sys
from lookalike import images
data = open(sys.argv[1], "rb").read()
def status(key):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # the peak resident size starts again from now
before = status("VmRSS:")
decoded = images.decode(data, draft=(224, 224))
assert decoded.image is not None, decoded.error
print(decoded.image.size, (status("VmHWM:") - before) // 1024)
"""


@pytest.mark.parametrize("make, decoded_mb", [(lambda: grey16_png(12_000, 12_000), 288),
                                              (lambda: float_tiff(6_000, 6_000), 144)])
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory through /proc")
def test_a_small_file_of_huge_dimensions_decodes_in_about_its_decoded_bytes(make, decoded_mb, tmp_path):
    """Before: a 3 MB 16-bit 12,000 x 12,000 PNG took ~4 GB (float64 copies of full-size pixels)."""
    path = tmp_path / "deep"
    path.write_bytes(make())
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    size, grown_mb = done.stdout.split(")")
    assert int(grown_mb) < 2.5 * decoded_mb + 100, done.stdout
    assert 448 <= min(eval(size + ")")) < 1000


def test_the_budget_makes_decodes_wait_for_their_share_and_refuses_what_can_never_fit():
    budget = images.MemoryBudget(100)
    events: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def first():
        with budget.hold(60):
            events.append("first in")
            first_in.set()
            release.wait(10)
            events.append("first out")

    def second():
        first_in.wait(10)
        with budget.hold(60):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_in.wait(10)
    with budget.hold(40):  # fits beside the first
        events.append("small in")
    release.set()
    for thread in threads:
        thread.join(10)
    assert events.index("second in") > events.index("first out")
    assert "small in" in events and budget.used == 0
    with pytest.raises(MemoryError), budget.hold(101):
        pass
    decoded = images.decode(grey16_png(600, 400), budget=images.MemoryBudget(1000))
    assert decoded.image is None and decoded.error.startswith("too large")


def test_indexing_records_a_huge_decode_as_failed_and_goes_on(tmp_path, tiny_model, monkeypatch):
    from tests.conftest import picture

    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 20_000_000)
    root = tmp_path / "photos"
    root.mkdir()
    (root / "deep.png").write_bytes(grey16_png(9_000, 8_000))
    (root / "float.tif").write_bytes(float_tiff(3_000, 2_500))
    picture("disc").save(root / "fine.jpg")
    with Index.open(tmp_path / "i.lookalike", model=str(tiny_model), create=True) as index:
        summary = index.add([root])
        assert summary.indexed == 1 and summary.failed == 2
        reasons = dict(index.info()["failures"][i].values() for i in range(2))
    assert all(reason.startswith("too large") for reason in reasons.values())
    assert {Path(p).name for p in reasons} == {"deep.png", "float.tif"}


def test_an_upload_that_decodes_huge_is_413_and_counted_against_the_server_budget(tmp_path, tiny_model,
                                                                                    monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server.app import create_app
    from tests.conftest import picture

    root = tmp_path / "photos"
    root.mkdir()
    picture("disc").save(root / "fine.jpg")
    path = tmp_path / "s.lookalike"
    with Index.open(path, model=str(tiny_model), create=True) as index:
        index.add([root])
    monkeypatch.setattr(images, "MAX_DECODED_BYTES", 20_000_000)
    with TestClient(create_app(str(path), max_upload=5_000_000)) as client:
        response = client.post("/search", files={"file": ("q.png", grey16_png(9_000, 8_000), "image/png")})
        assert response.status_code == 413 and "too large" in response.json()["error"]
        service = client.app.state.service
        assert service.decode_budget.used == 0
        ok = client.post("/search", files={"file": ("q.png", grey16_png(600, 400), "image/png")})
        assert ok.status_code == 200
