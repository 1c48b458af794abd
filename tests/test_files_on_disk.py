"""Files and disks as they are (issue 14, item 11): a file bigger than memory, lookalike's own cache inside the
photo folder, an index in a read-only place, a damaged index, a full disk."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lookalike import Index
from lookalike.errors import DiskFull, IndexDamaged, LookalikeError
from tests.conftest import picture, run_cli

ROOT = Path(__file__).resolve().parents[1]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


PEAK = """
import sys
from lookalike import Index
def status(key):  # kB
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
index = Index.open(sys.argv[1], model=sys.argv[3], create=True)
index.embedder  # the model loads before the measure
open("/proc/self/clear_refs", "w").write("5")  # the peak resident size starts again from now
before = status("VmRSS:")
summary = index.add([sys.argv[2]], workers=1)
print(summary.indexed, summary.failed, (status("VmHWM:") - before) // 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory through /proc")
def test_a_file_bigger_than_the_read_limit_is_hashed_in_chunks_and_decoded_from_disk(tmp_path, tiny_model):
    """A 1.5 GB photo (a JPEG with a long tail, sparse on disk) is indexed without being read into memory."""
    root = tmp_path / "photos"
    root.mkdir()
    big = root / "big.jpg"
    picture("disc").save(big, quality=90)
    with open(big, "r+b") as handle:
        handle.truncate(1_500_000_000)
    picture("stripes").save(root / "small.jpg")
    index_path = tmp_path / "i.lookalike"
    done = subprocess.run([sys.executable, "-c", PEAK, str(index_path), str(root), str(tiny_model)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    indexed, failed, grown_mb = (int(v) for v in done.stdout.split())
    assert (indexed, failed) == (2, 0)
    assert grown_mb < 400, done.stdout  # reading it whole would take 1,500 MB
    with Index.open(index_path) as index:
        stored = {Path(row[0]).name: row[5] for row in index.store.details().values()}
    assert stored["big.jpg"] == file_sha256(big)


def test_lookalikes_own_cache_inside_the_photo_folder_is_never_indexed(tmp_path, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    for n in range(3):
        picture("disc", seed=n).save(root / f"{n}.jpg")
    index_path = root / "photos.lookalike"  # the index lives inside the folder it indexes
    with Index.open(index_path, model=str(tiny_model), create=True) as index:
        assert index.add([root]).indexed == 3
        index.prepare_search()
        thumbs = Path(str(index_path) + "-cache") / "thumbs"
        thumbs.mkdir(parents=True, exist_ok=True)
        for n in range(3):  # as the server caches them
            picture("stripes", seed=n).save(thumbs / f"{n + 1}.jpg")
        again = index.add([root])
        assert (again.indexed, again.unchanged) == (0, 3)
        assert len(index) == 3
        assert all("-cache" not in path for path, _ in index.neighbours(1))


def as_nobody() -> list[str]:
    """How to run a command as a user who cannot write here: root ignores file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop write permission")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def read_only_index(tiny_model):
    """An index (and its photos) in a folder nobody may write, readable by all."""
    place = Path(tempfile.mkdtemp(prefix="lookalike-ro-"))
    try:
        os.chmod(place, 0o755)
        photos = place / "photos"
        photos.mkdir()
        for n in range(3):
            picture("noise", seed=n).save(photos / f"{n}.jpg")
        model = place / "tiny.onnx"
        shutil.copy(tiny_model, model)
        index_path = place / "ro.lookalike"
        with Index.open(index_path, model=str(model), create=True) as index:
            index.add([photos])
        for path in [place, photos, *photos.iterdir(), model, *place.glob("ro.lookalike*")]:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        yield index_path, photos
    finally:
        for path in [place, *place.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        shutil.rmtree(place, ignore_errors=True)


def test_an_index_in_a_read_only_place_answers_searches_and_refuses_writes_clearly(read_only_index):
    index_path, photos = read_only_index
    prefix = as_nobody()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(index_path.parent),
           "LOOKALIKE_CACHE": str(index_path.parent / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", "lookalike", *args], capture_output=True, text=True,
                              timeout=300, env=env, cwd="/")

    info = cli("info", "--index", str(index_path))
    assert info.returncode == 0, info.stderr
    assert "3 indexed" in info.stdout
    found = cli("search", "--id", str(photos / "0.jpg"), "--index", str(index_path), "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    assert "Traceback" not in found.stderr
    added = cli("index", str(photos), "--index", str(index_path), "-q")
    assert added.returncode != 0
    assert "read-only" in added.stderr and "not a lookalike index" not in added.stderr
    assert "internal error" not in added.stderr and len(added.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("table", ["files", "vectors", "meta"])
def test_a_damaged_index_is_one_clear_line(tmp_path, tiny_model, photo_dir, table):
    index_path = tmp_path / "d.lookalike"
    with Index.open(index_path, model=str(tiny_model), create=True) as index:
        index.add([photo_dir])
    with sqlite3.connect(index_path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root_page = db.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,)).fetchone()[0]
    with open(index_path, "r+b") as handle:  # one table's first page becomes garbage
        handle.seek((root_page - 1) * page_size)
        handle.write(b"\xa5" * page_size)
    result = run_cli("info", "--index", str(index_path))
    result_search = run_cli("search", str(photo_dir / "disc" / "disc0.jpg"), "--index", str(index_path))
    for outcome in (result, result_search):
        assert outcome.returncode != 0
        assert "internal error" not in outcome.stderr and "Traceback" not in outcome.stderr
        assert "damaged" in outcome.stderr, outcome.stderr
        assert len(outcome.stderr.strip().splitlines()) == 1


def test_a_full_disk_while_indexing_is_one_clear_error_and_keeps_what_was_written(tmp_path, tiny_model,
                                                                                   photo_dir):
    index_path = tmp_path / "full.lookalike"
    with Index.open(index_path, model=str(tiny_model), create=True) as index:
        index.add([photo_dir / "disc"])
        pages = index.store.db.execute("PRAGMA page_count").fetchone()[0]
        index.store.db.execute(f"PRAGMA max_page_count = {pages}")  # as if the disk were full from now on
        many = tmp_path / "many"
        many.mkdir()
        for n in range(200):
            picture("noise", seed=n, size=(64, 48)).save(many / f"{n}.png")
        with pytest.raises(DiskFull) as raised:
            index.add([many], batch_size=4)
        assert isinstance(raised.value, OSError) and isinstance(raised.value, LookalikeError)
        assert "full" in str(raised.value) and str(index_path) in str(raised.value)
    with Index.open(index_path) as index:
        assert len(index) >= 3  # what was committed before is all there


def test_sqlite_errors_map_to_lookalike_errors():
    from lookalike.storage.sqlite import explained

    assert isinstance(explained(sqlite3.OperationalError("database or disk is full"), "x"), DiskFull)
    assert isinstance(explained(sqlite3.DatabaseError("database disk image is malformed"), "x"), IndexDamaged)
    assert isinstance(explained(sqlite3.DatabaseError("file is not a database"), "x"), IndexDamaged)
