"""The choices a search takes, defined once: the CLI (typer) and the server (FastAPI) both validate
against these enums, and the library checks plain strings against the same values."""

from __future__ import annotations

from enum import Enum


class Engine(str, Enum):  # noqa: UP042 (typer and FastAPI need a str Enum)
    """Which nearest-neighbour engine answers; auto picks by collection size and memory budget."""

    auto = "auto"
    exact = "exact"
    exact_f16 = "exact-f16"
    hnsw = "hnsw"
    ivfpq = "ivfpq"
    annoy = "annoy"


class Metric(str, Enum):  # noqa: UP042 (typer and FastAPI need a str Enum)
    """How closeness is scored: cosine similarity (higher is closer) or euclidean distance (lower)."""

    cosine = "cosine"
    euclidean = "euclidean"


ENGINES: tuple[str, ...] = tuple(engine.value for engine in Engine)
METRICS: tuple[str, ...] = tuple(metric.value for metric in Metric)
