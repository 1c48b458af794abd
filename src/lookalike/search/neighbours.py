"""Every image's k nearest others written to a file (the "inverted index"), for programs that want the whole
graph: JSON (a list of {path, neighbours: [{rank, path, cosine}]}) or CSV (path, rank, neighbour, cosine)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike.errors import UsageError
from lookalike.fileio import atomic_path

if TYPE_CHECKING:
    from lookalike.index import Index

FORMATS = (".json", ".csv")


def check_format(out_file: str | Path) -> str:
    """The output format from the file name's suffix, refused before any work if it is neither."""
    kind = Path(out_file).suffix.lower()
    if kind not in FORMATS:
        raise UsageError(f"--out must end in .json or .csv, not {Path(out_file).name!r}")
    return kind


def write_neighbours(index: Index, out_file: str | Path, k: int = 10, *, ann: str | None = None) -> int:
    """Write every image's k nearest others to `out_file` (atomically, streamed batch by batch: never the
    whole table in memory). Returns how many images were written."""
    kind = check_format(out_file)
    count = 0
    # surrogateescape: a name that is not UTF-8 goes into the CSV as its own bytes (JSON escapes it)
    with atomic_path(out_file) as temporary, \
            open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = index.neighbours(k, ann=ann)
        if kind == ".csv":
            writer = csv.writer(handle)
            writer.writerow(["path", "rank", "neighbour", "cosine"])
            for path, hits in rows:
                writer.writerows([path, hit.rank, hit.path, f"{hit.score:.6f}"] for hit in hits)
                count += 1
        else:
            handle.write("[")
            for path, hits in rows:
                item = {"path": path, "neighbours": [{"rank": h.rank, "path": h.path, "cosine": round(h.score, 6)}
                                                     for h in hits]}
                handle.write(("," if count else "") + "\n" + json.dumps(item))
                count += 1
            handle.write("\n]\n")
    return count
