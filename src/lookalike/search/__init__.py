"""Nearest-neighbour search over the store's vectors: one protocol (base.VectorIndex), several engines.

faiss and annoy are imported only when their index is built.
"""

from lookalike.search.annoy_index import AnnoyIndex
from lookalike.search.base import VectorIndex
from lookalike.search.exact import ExactIndex
from lookalike.search.hnsw import HNSWIndex

__all__ = ["AnnoyIndex", "ExactIndex", "HNSWIndex", "VectorIndex"]
