"""lookalike: reverse image search over a folder of photos, on a CPU, with no server."""

from lookalike.errors import LookalikeError
from lookalike.index import Hit, Index
from lookalike.models.embedder import Embedder
from lookalike.pipeline import Summary

__version__ = "0.1.0"
__all__ = ["Embedder", "Hit", "Index", "LookalikeError", "Summary", "__version__"]
