"""Moving duplicates aside, and back: lookalike never deletes a file.

`move` puts each file into a quarantine folder under its path relative to the indexed folder it came from,
and writes a manifest (JSON) of every move with the file's SHA-256, before and after each move, so that
even an interrupted run can be undone. `undo` moves each file back if it is still where the manifest put
it, unchanged, and nothing has taken its old place. The quarantine folder holds a marker file, so indexing
never descends into it (even when it lies inside an indexed folder).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lookalike.errors import BadInput
from lookalike.fileio import atomic_write, sha256_file
from lookalike.images import QUARANTINE_MARKER, absolute


@dataclass
class Moved:
    source: str
    target: str
    sha256: str


def destination(path: str, folder: Path, roots: Sequence[str]) -> Path:
    """Where a file goes in the quarantine folder: its path below the indexed folder it is in (the deepest
    one), else its whole path."""
    candidates = [Path(r) for r in roots if Path(path).is_relative_to(r)]
    if candidates:
        root = max(candidates, key=lambda r: len(r.parts))
        return folder / root.name / Path(path).relative_to(root)
    return folder / Path(path).relative_to(Path(path).anchor)


def move(files: Sequence[tuple[str, str | None]], folder: str | os.PathLike, roots: Sequence[str]) -> tuple[
        Path, list[Moved], list[tuple[str, str]]]:
    """Move these (path, expected sha256) files into `folder`. Returns the manifest's path, what moved, and
    (path, reason) for what did not (changed since indexing, gone, or its place in quarantine taken)."""
    folder = absolute(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / QUARANTINE_MARKER).write_text("lookalike quarantine: indexing skips this folder\n")
    manifest = folder / f"manifest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    moved: list[Moved] = []
    skipped: list[tuple[str, str]] = []
    moves: list[dict[str, object]] = []
    record = {"created_at": time.time(), "folder": str(folder), "moves": moves}

    def save() -> None:
        atomic_write(manifest, json.dumps(record, indent=1))

    for path, expected in files:
        source = Path(path)
        target = destination(path, folder, roots)
        if not source.is_file():
            skipped.append((path, "gone"))
            continue
        digest = sha256_file(source)
        if expected and digest != expected:
            skipped.append((path, "changed since it was indexed: run `lookalike index` first"))
            continue
        if target.exists():
            skipped.append((path, f"{target} exists already"))
            continue
        entry = {"from": path, "to": str(target), "sha256": digest, "done": False}
        moves.append(entry)
        save()  # written before the move: an interrupted run can still be undone
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        entry["done"] = True
        moved.append(Moved(path, str(target), digest))
    save()
    return manifest, moved, skipped


def undo(manifest: str | os.PathLike) -> tuple[list[Moved], list[tuple[str, str]]]:
    """Move every file of a manifest back. Returns what came back and (path, reason) for what could not."""
    manifest = Path(manifest)
    try:
        record = json.loads(manifest.read_text())
        moves = record["moves"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInput(f"{manifest} is not a lookalike quarantine manifest") from None
    restored: list[Moved] = []
    skipped: list[tuple[str, str]] = []
    for entry in moves:
        source, target = Path(entry["from"]), Path(entry["to"])
        if source.exists() and not target.exists():
            continue  # never moved (interrupted before the move): nothing to undo
        if not target.is_file():
            skipped.append((entry["from"], f"not in quarantine any more ({target})"))
            continue
        if source.exists():
            skipped.append((entry["from"], "something else is in its place now"))
            continue
        if sha256_file(target) != entry["sha256"]:
            skipped.append((entry["from"], f"{target} changed in quarantine"))
            continue
        source.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), str(source))
        restored.append(Moved(entry["from"], entry["to"], entry["sha256"]))
    record["undone_at"] = time.time()
    manifest.write_text(json.dumps(record, indent=1))
    return restored, skipped
