"""Nearest-neighbour search over the store's vectors."""

from lookalike.search.exact import ExactIndex

__all__ = ["ExactIndex"]
