"""Errors that reach people, one class per failure mode, and `require` for optional dependencies.

Every error lookalike raises on purpose is a `LookalikeError` whose message is one line a person can act
on. Each class also inherits the builtin it refines (`NotAnImage` is a `ValueError`, `IndexNotFound` a
`FileNotFoundError`), so library callers can catch what they already know. The CLI prints the line and
exits with the class's `exit_code`:

    1  any other error            4  a dependency or model is missing (the message names the extra)
    2  a usage error (an option)   5  the index was built with another model or settings: rebuild it
    3  something was not found     6  the input cannot be used (not an image, too few images, empty)
                                   7  a storage backend cannot be reached or is busy (Milvus)
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LookalikeError(Exception):
    """Base class: the message is a complete, one-line explanation with what to do next."""

    exit_code = 1


class UsageError(LookalikeError, ValueError):
    """An option or argument that cannot work (a bad value, a missing or conflicting option)."""

    exit_code = 2


class NotFound(LookalikeError, FileNotFoundError):
    """Something the user named does not exist: a file, a folder, an index, an indexed image."""

    exit_code = 3

    def __str__(self) -> str:  # FileNotFoundError would print "(None) message" for some arguments
        return str(self.args[0]) if self.args else ""


class IndexNotFound(NotFound):
    """The index file the user pointed at does not exist or is not a lookalike index."""


class NotIndexed(NotFound):
    """A path was named as an indexed image but the index has no vector for it."""


class MissingDependency(LookalikeError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""

    exit_code = 4


class ModelUnavailable(MissingDependency):
    """A model cannot be loaded here: not exported, not downloaded, or its extra is not installed."""


class ModelMismatch(LookalikeError, ValueError):
    """An index holds vectors of one model and was asked to add or compare those of another."""

    exit_code = 5


class BadInput(LookalikeError, ValueError):
    """Data that cannot be used as given: too few images, a damaged manifest, an empty index."""

    exit_code = 6


class NotAnImage(BadInput):
    """A file given as a query or to add cannot be decoded as an image."""


class EmptyIndex(BadInput):
    """A search was asked of an index that holds no vectors yet."""


class StoreUnavailable(LookalikeError, ConnectionError):
    """A storage backend (a Milvus server, a Milvus Lite file) cannot be reached or is in use."""

    exit_code = 7


class IndexReadOnly(LookalikeError, PermissionError):
    """The index is somewhere this process may not write: it answers searches but cannot be changed."""


class IndexDamaged(LookalikeError):
    """The index file is corrupt (SQLite finds it malformed): it must be rebuilt from the photos."""


class DiskFull(LookalikeError, OSError):
    """The disk (or the file system's quota) ran out while writing: what was committed before is kept."""


class IndexBusy(StoreUnavailable):
    """Another process writes to the same index in a way that cannot be shared (a second Milvus writer)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional `module`, or raise MissingDependency naming the extra that installs it.

    `purpose` says what needs it ("serving", "PCA"); `extra` is the lookalike extra, or a plain pip
    requirement when it starts with "pip:" (for packages no extra brings).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = extra[4:] if extra.startswith("pip:") else f"'lookalike[{extra}]'"
        raise MissingDependency(f"{purpose} needs {module.split('.')[0]}: pip install {hint}") from None


class UnsafeMove(UsageError):
    """A quarantine move that could lose or hide files (a folder inside an indexed folder) was refused."""
