"""lookalike: reverse image search over a folder of photos, on a CPU, with no server.

The names below are imported on first use (PEP 562), so that `import lookalike` costs nothing: the command
line's launcher (`lookalike.__main__`) must be running before numpy and the index are imported, or Ctrl-C
during that second would end in a traceback.
"""

from __future__ import annotations

from importlib import import_module  # loaded with Python itself: free

TYPE_CHECKING = False  # not typing's: importing typing alone took long enough for Ctrl-C to land in it
if TYPE_CHECKING:
    from lookalike.errors import LookalikeError
    from lookalike.index import Hit, Index
    from lookalike.models.embedder import Embedder
    from lookalike.pipeline import Summary

__version__ = "0.1.0"
__all__ = ["Embedder", "Hit", "Index", "LookalikeError", "Summary", "__version__"]
_HOMES = {"Embedder": "lookalike.models.embedder", "Hit": "lookalike.index", "Index": "lookalike.index",
          "LookalikeError": "lookalike.errors", "Summary": "lookalike.pipeline"}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
