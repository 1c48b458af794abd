"""Errors that reach people.

Every error lookalike raises on purpose is a `LookalikeError` whose message is one line a person can act
on. The CLI prints that line and exits non-zero; anything else is a bug and still gets one line, not a
traceback (see cli.py).
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class: the message is a complete, one-line explanation with what to do next."""


class IndexNotFound(LookalikeError):
    """The index file the user pointed at does not exist or is not a lookalike index."""


class ModelMismatch(LookalikeError):
    """An index holds vectors of one model and was asked to add or compare those of another."""


class ModelUnavailable(LookalikeError):
    """A model cannot be loaded here: not exported, not downloaded, or its extra is not installed."""


class NotAnImage(LookalikeError):
    """A file given as a query or to add cannot be decoded as an image."""


class EmptyIndex(LookalikeError):
    """A search was asked of an index that holds no vectors yet."""


class NotIndexed(LookalikeError):
    """A path was named as an indexed image but the index has no vector for it."""
