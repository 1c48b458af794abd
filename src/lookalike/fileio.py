"""Writing files so that nobody sees half of one, and hashing them: the one copy of each, for every module.

A reader (another process, a user's program, a crash-restarted run) sees the old file or the new one,
never a partial write; two processes writing the same target never share a temporary name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(target: Path) -> Path:
    """A fresh hidden name beside `target` (same folder, so same filesystem: the rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write in full; on success it is renamed onto `target`, on failure removed.

        with atomic_path("out.csv") as partial:
            partial.write_text(...)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(target)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike[str], data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `target` atomically."""
    with atomic_path(target) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, read in chunks (a file larger than memory is fine)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
