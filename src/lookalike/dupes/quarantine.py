"""Moving duplicates aside, and back: lookalike never deletes a file, and a kill at any moment loses none.

`move` puts each file into a quarantine folder under its path relative to the indexed folder it came from,
and writes a manifest (JSON) of every move with the file's SHA-256 and what the index knew of it (its
vector too), before and after each move. `undo` moves each file back if it is still in quarantine unchanged
and nothing else has taken its old place; the index then gets its record back without re-embedding.

Every transfer is finishable: on one filesystem it is a single rename; across filesystems the file is copied
to a temporary name beside its destination, flushed, checked against its SHA-256, renamed into place, and
only then is the source removed. Whatever a kill -9 leaves (a partial copy, both copies, the source gone),
running the same command again finishes it: `move` first completes the unfinished manifests in its folder,
and `undo` picks up where it stopped.

The quarantine folder must lie outside every indexed folder (and hold none of them): a folder inside would
be skipped by indexing for good, and one holding an indexed folder could put a file back in its own place.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from lookalike.errors import BadInput, LookalikeError, NotFound, UnsafeMove, UsageError
from lookalike.fileio import atomic_write, sha256_file
from lookalike.images import QUARANTINE_MARKER, absolute

PARTIAL = ".lookalike-partial"
LOCK = ".lookalike-quarantine.lock"
GONE = "gone since the scan (another run may have moved it)"


@dataclass
class Moved:
    source: str
    target: str
    sha256: str
    record: dict | None = None  # what the index knew of the file (see `record_of`)
    earlier: bool = False  # put back by an earlier, interrupted run of the same undo
    manifest: str = ""  # the manifest that records this move (an interrupted one, finished later, has its own)


def check_folder(folder: str | os.PathLike, roots: Sequence[str]) -> Path:
    """The quarantine folder as an absolute path; UnsafeMove when it is inside an indexed folder or holds one
    (symbolic links resolved), UsageError when it is a file or cannot be made (nothing is moved either way)."""
    folder = absolute(folder)
    real = Path(os.path.realpath(folder))
    if real.exists() and not real.is_dir():
        raise UsageError(f"--move-to {folder} is a file, not a folder: give a folder for the quarantine")
    nearest = next((p for p in (real, *real.parents) if p.exists()), Path("/"))
    try:  # a folder made and removed at once: the one true test of "can one be made here" (root, /proc, ...)
        os.rmdir(tempfile.mkdtemp(prefix=".lookalike-probe-", dir=nearest))
    except OSError as exc:
        raise UsageError(f"--move-to {folder} cannot be made or written to ({nearest}: {exc.strerror}): choose "
                         "another folder") from None
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real.is_relative_to(real_root):
            raise UnsafeMove(f"--move-to {folder} is inside the indexed folder {root}: choose a folder outside it")
        if real_root.is_relative_to(real):
            raise UnsafeMove(f"--move-to {folder} holds the indexed folder {root}: choose a folder outside it")
    return folder


def destination(path: str, folder: Path, roots: Sequence[str]) -> Path:
    """Where a file goes in the quarantine folder: its path below the indexed folder it is in (the deepest
    one), else its whole path."""
    candidates = [Path(r) for r in roots if Path(path).is_relative_to(r)]
    if candidates:
        root = max(candidates, key=lambda r: len(r.parts))
        return folder / root.name / Path(path).relative_to(root)
    return folder / Path(path).relative_to(Path(path).anchor)


def record_of(record, index) -> dict:
    """An index FileRecord as JSON (the vector base64 float32), so that undo can put it back, sealed by `index`
    (a lookalike Index: see `Index.seal`): a manifest is a file anyone can edit, and what goes back into the
    index must be what the index wrote."""
    vector = None if record.vector is None else base64.b64encode(
        np.ascontiguousarray(record.vector, "<f4").tobytes()).decode()
    data = {"size": record.size, "mtime_ns": record.mtime_ns, "sha256": record.sha256, "width": record.width,
            "height": record.height, "vector": vector, "error": record.error}
    return {**data, "seal": index.seal(_sealed(record.path, data))}


def file_record(path: str, data: object, sha256: str, index):
    """The JSON of `record_of` back to a FileRecord for `path` (with the file's current size and mtime), or
    None when `index` did not seal it for this path and these bytes (`sha256`): changed, written by someone
    else or for another index, or not a record at all."""
    from lookalike.storage.sqlite import FileRecord

    if not isinstance(data, dict) or data.get("sha256") != sha256:
        return None
    fields = {key: value for key, value in data.items() if key != "seal"}
    if not index.vouches(_sealed(path, fields), data.get("seal")):
        return None
    stat = os.stat(path)
    vector = None if not data.get("vector") else np.frombuffer(base64.b64decode(data["vector"]), "<f4").copy()
    return FileRecord(path, stat.st_size, stat.st_mtime_ns, data.get("sha256"), data.get("width", 0),
                      data.get("height", 0), vector, data.get("error") or "")


def _sealed(path: str, data: dict) -> bytes:
    """What a record's seal signs: the record and the path it belongs to, as canonical JSON."""
    return json.dumps({"path": path, "record": data}, sort_keys=True, separators=(",", ":")).encode()


def move(files: Sequence[tuple[str, str | None, dict | None]], folder: str | os.PathLike, roots: Sequence[str],
         index_path: str | None = None) -> tuple[Path, list[Moved], list[tuple[str, str]]]:
    """Move these (path, expected sha256, index record) files into `folder`, after finishing any move there
    that was interrupted. Returns the manifest's path, what moved (the interrupted ones finished now
    included), and (path, reason) for what did not (changed since indexing, gone, its place taken)."""
    folder = check_folder(folder, roots)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / QUARANTINE_MARKER).write_text("lookalike quarantine: indexing skips this folder\n")
    # One move into a folder at a time: a second would otherwise "finish" the first's manifest while it runs
    with FileLock(folder / LOCK):
        moved, skipped = finish_interrupted(folder)
        manifest = folder / f"manifest-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        entries: list[dict] = []
        record = {"created_at": time.time(), "folder": str(folder),
                  "index": None if index_path is None else str(absolute(index_path)), "complete": False,
                  "moves": entries}
        finished = {m.source for m in moved}
        for path, expected, known in files:
            if path in finished:  # the interrupted move just finished it
                continue
            source = Path(path)
            target = destination(path, folder, roots)
            if not _inside(target, folder):
                skipped.append((path, f"{target} would lie outside {folder} (a link inside it leads away)"))
                continue
            if source.is_symlink() or not source.is_file():
                skipped.append((path, GONE if not source.exists() else "not a regular file"))
                continue
            try:
                digest = sha256_file(source)
            except FileNotFoundError:  # another process moved it since we looked
                skipped.append((path, GONE))
                continue
            if expected and digest != expected:
                skipped.append((path, "changed since it was indexed: run `lookalike index` first"))
                continue
            if target.exists() or target.is_symlink():
                skipped.append((path, f"{target} exists already"))
                continue
            entry = {"from": path, "to": str(target), "sha256": digest, "done": False, "record": known}
            entries.append(entry)
            _save(manifest, record)  # written before the move: an interrupted run can be finished or undone
            try:
                transfer(source, target, digest)
            except FileNotFoundError:  # another run (into another quarantine) moved it since it was hashed
                if source.exists():
                    raise
                entries.remove(entry)
                _save(manifest, record)
                skipped.append((path, GONE))
                continue
            entry["done"] = True
            moved.append(Moved(path, str(target), digest, known, manifest=str(manifest)))
        record["complete"] = True
        if entries:
            _save(manifest, record)
        else:  # nothing moved by this run: no empty manifest to be pointed at
            manifest.unlink(missing_ok=True)
    return manifest, moved, skipped


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` (which need not exist yet) lies in `folder` once every symbolic link on the way is
    followed: a quarantine's sub-folder that is a link to elsewhere, or a manifest naming another place."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def finish_interrupted(folder: Path) -> tuple[list[Moved], list[tuple[str, str]]]:
    """Complete the moves of every manifest in `folder` that a kill left unfinished: what is now in quarantine
    by them (moved before the kill or now) and (path, reason) for what could not be finished."""
    moved: list[Moved] = []
    skipped: list[tuple[str, str]] = []
    for manifest in sorted(folder.glob("manifest-*.json")):
        try:
            record = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if record.get("complete") is not False or record.get("undone_at"):
            continue
        for entry in record.get("moves", []):
            if entry.get("done"):  # moved before the kill: the index may still hold it
                moved.append(Moved(entry["from"], entry["to"], entry["sha256"], entry.get("record"),
                                   manifest=str(manifest)))
                continue
            outcome = resume(Path(entry["from"]), Path(entry["to"]), entry["sha256"])
            if outcome is None:
                entry["done"] = True
                moved.append(Moved(entry["from"], entry["to"], entry["sha256"], entry.get("record"),
                                   manifest=str(manifest)))
            else:
                skipped.append((entry["from"], outcome))
        record["complete"] = True
        _save(manifest, record)
    return moved, skipped


def read_manifest(manifest: str | os.PathLike) -> dict:
    """A quarantine manifest's contents, checked for the fields an undo uses; NotFound or BadInput."""
    if not os.path.lexists(manifest):
        raise NotFound(f"{manifest} does not exist: give the manifest-....json that --move-to wrote in the "
                       "quarantine folder")
    try:
        record = json.loads(Path(manifest).read_text())
        moves = record["moves"]
        if not isinstance(moves, list) or not all(isinstance(e, dict) and isinstance(e.get("from"), str)
                                                  and isinstance(e.get("to"), str)
                                                  and isinstance(e.get("sha256"), str) for e in moves):
            raise TypeError
        if not isinstance(record.get("index"), str | None):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BadInput(f"{manifest} is not a lookalike quarantine manifest") from None
    return record


def undo(manifest: str | os.PathLike, *, dry_run: bool = False, into: Sequence[str] | None = None
         ) -> tuple[list[Moved], list[tuple[str, str]], str | None]:
    """Move every file of a manifest back, finishing an undo that was interrupted. Returns what came back,
    (path, reason) for what could not, and the index the manifest was made for. What came back includes the
    files an interrupted run of this undo had already put back (`Moved.earlier`) when they are still as they
    were: a kill between moving them and writing the index left them out of it. A manifest is trusted only
    for files inside its own folder: an entry whose quarantined copy lies elsewhere is refused. `into`: the
    folders files may go back into (the indexed folders of the index they return to; the manifest alone, a
    file anyone can write, never decides where a file is written); None, anywhere. `dry_run`: what would
    come back, with nothing touched."""
    manifest = Path(manifest)
    read_manifest(manifest)  # a clear error before any lock is taken
    with FileLock(manifest.parent / LOCK):  # one move or undo in a quarantine folder at a time
        return _undo(manifest, dry_run, into)


def _undo(manifest: Path, dry_run: bool, into: Sequence[str] | None
          ) -> tuple[list[Moved], list[tuple[str, str]], str | None]:
    record = read_manifest(manifest)  # again: a run that held the lock may have changed it
    restored: list[Moved] = []
    skipped: list[tuple[str, str]] = []
    for entry in record["moves"]:
        source, target = Path(entry["from"]), Path(entry["to"])
        back = Moved(entry["from"], entry["to"], entry["sha256"], entry.get("record"))
        if not _inside(target, manifest.parent):
            skipped.append((entry["from"], f"the manifest puts it at {target}, outside {manifest.parent}: "
                                           "not a file this quarantine holds"))
            continue
        if into is not None and not any(_inside(source, Path(folder)) for folder in into):
            skipped.append((entry["from"], f"outside the folders of the index it goes back into "
                                           f"({', '.join(into) or 'none'}): left at {target}; move it by hand "
                                           "if that is where it belongs"))
            continue
        if entry.get("restored"):
            if not dry_run and _unchanged(source, entry["sha256"]):
                back.earlier = True
                restored.append(back)
            continue
        if not entry.get("done") and not target.exists() and _unchanged(source, entry["sha256"]):
            if not dry_run:  # never moved (a kill before the move, or in the middle of copying it)
                _partial(target).unlink(missing_ok=True)
            continue
        outcome = resume(target, source, entry["sha256"], act=not dry_run)
        if dry_run:
            if outcome is None:
                restored.append(back)
            else:
                skipped.append((entry["from"], outcome))
            continue
        if outcome is None:
            entry["restored"] = True
            restored.append(back)
            _save(manifest, record)
        else:
            skipped.append((entry["from"], outcome))
    if not dry_run:
        record["undone_at"] = time.time()
        _save(manifest, record)
    return restored, skipped, record.get("index")


def _unchanged(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and sha256_file(path) == sha256
    except OSError:
        return False


def resume(source: Path, target: Path, sha256: str, *, act: bool = True) -> str | None:
    """Bring one transfer source -> target to its end from whatever state a kill left. None when the file
    is at `target` (and gone from `source`), else why it cannot be finished (nothing is then touched).
    `act=False`: the same answer, with nothing touched at all (a dry run)."""
    partial = _partial(target)
    if target.exists():
        if sha256_file(target) != sha256:
            if source.exists():
                return "something else is in its place now"
            return f"{target} changed since it was moved"
        if source.exists():
            if sha256_file(source) != sha256:
                return f"both {source} and {target} exist, and {source} changed"
            if act:
                source.unlink()  # the copy at target is complete and checked: the kill came before this
        if act:
            partial.unlink(missing_ok=True)
        return None
    if not source.exists():
        if act:
            partial.unlink(missing_ok=True)
        return f"{source} is gone"
    if sha256_file(source) != sha256:
        return f"{source} changed since the manifest was written"
    if act:
        transfer(source, target, sha256)
        partial.unlink(missing_ok=True)
    return None


def transfer(source: Path, target: Path, sha256: str) -> None:
    """Move one file, never leaving it only half anywhere: a rename on one filesystem; across filesystems a
    copy to a temporary name, flushed and checked against `sha256`, renamed into place, then the source
    removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if _same_filesystem(source, target.parent):
        os.rename(source, target)
        return
    partial = _partial(target)
    partial.unlink(missing_ok=True)
    with open(source, "rb") as reader, open(partial, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, partial)
    if sha256_file(partial) != sha256:
        partial.unlink(missing_ok=True)
        raise LookalikeError(f"copying {source} to {target} gave other bytes: nothing was moved")
    os.rename(partial, target)
    _fsync_folder(target.parent)
    source.unlink()


def _same_filesystem(path: Path, folder: Path) -> bool:
    return os.stat(path).st_dev == os.stat(folder).st_dev


NAME_MAX = 255  # bytes in one file name on every common Linux and macOS filesystem


def _partial(target: Path) -> Path:
    """The temporary name a copy is written under, beside `target`: readable where it fits in one name, else
    (a long name: 80 CJK characters are 240 bytes) a digest of the name, so that the copy is still possible."""
    readable = f".{target.name}{PARTIAL}"
    if len(os.fsencode(readable)) <= NAME_MAX:
        return target.with_name(readable)
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()[:32]
    return target.with_name(f".{digest}{PARTIAL}")


def _fsync_folder(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _save(manifest: Path, record: dict) -> None:
    atomic_write(manifest, json.dumps(record, indent=1))
