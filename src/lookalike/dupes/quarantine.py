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
import binascii
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
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


def record_of(record) -> dict:
    """An index FileRecord as JSON (the vector base64 float32), so that undo can put it back."""
    vector = None if record.vector is None else base64.b64encode(
        np.ascontiguousarray(record.vector, "<f4").tobytes()).decode()
    return {"size": record.size, "mtime_ns": record.mtime_ns, "sha256": record.sha256, "width": record.width,
            "height": record.height, "vector": vector, "error": record.error}


def file_record(path: str, data: object, sha256: str):
    """The JSON of `record_of` back to a FileRecord for `path` (with the file's current size and mtime), or
    None when it is not one for these bytes (`sha256`) or its vector is not finite numbers."""
    from lookalike.storage.sqlite import FileRecord

    if not isinstance(data, dict) or data.get("sha256") != sha256:
        return None
    try:
        vector = None if not data.get("vector") else np.frombuffer(base64.b64decode(data["vector"], validate=True),
                                                                    "<f4").copy()
        width, height, error = int(data.get("width", 0)), int(data.get("height", 0)), str(data.get("error") or "")
    except (TypeError, ValueError, binascii.Error):
        return None
    if vector is not None and not (len(vector) and np.isfinite(vector).all()):
        return None
    found = os.stat(path)
    return FileRecord(path, found.st_size, found.st_mtime_ns, sha256, width, height, vector, error)


def sealed_part(entry: dict) -> bytes:
    """What the seal of a manifest's entry signs (see `move`): where the file was and went, its bytes, and the
    index's record of it, as canonical JSON."""
    return json.dumps({key: entry.get(key) for key in ("from", "to", "sha256", "record")}, sort_keys=True,
                      separators=(",", ":")).encode()


def move(files: Sequence[tuple[str, str | None, dict | None]], folder: str | os.PathLike, roots: Sequence[str],
         index_path: str | None = None, seal: Callable[[bytes], str] | None = None
         ) -> tuple[Path, list[Moved], list[tuple[str, str]]]:
    """Move these (path, expected sha256, index record) files into `folder`, after finishing any move there
    that was interrupted. Returns the manifest's path, what moved (the interrupted ones finished now
    included), and (path, reason) for what did not (changed since indexing, gone, its place taken). `seal`
    (the index's `Index.seal`) signs each entry of the manifest: an undo then acts only on entries the index
    vouches for, since a manifest is a file anyone who can write the folder can change."""
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
            if seal is not None:
                entry["seal"] = seal(sealed_part(entry))
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
    if not stat.S_ISREG(os.stat(manifest).st_mode):  # a FIFO or /dev/zero would be read for ever
        raise BadInput(f"{manifest} is not a lookalike quarantine manifest (not a regular file)")
    try:
        record = json.loads(Path(manifest).read_text())
        moves = record["moves"]
        if not isinstance(moves, list) or not all(isinstance(e, dict) and isinstance(e.get("from"), str)
                                                  and isinstance(e.get("to"), str)
                                                  and isinstance(e.get("sha256"), str) for e in moves):
            raise TypeError
        if not isinstance(record.get("index"), str | None):
            raise TypeError
        if any("\0" in e["from"] or "\0" in e["to"] for e in moves):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise BadInput(f"{manifest} is not a lookalike quarantine manifest") from None
    for side in ("from", "to"):
        if len({e[side] for e in moves}) < len(moves):
            raise BadInput(f"{manifest} names one file twice ({side!r}): not a manifest lookalike wrote")
    return record


Vouches = Callable[[bytes, object], bool]  # Index.vouches: (sealed bytes, seal) -> whether the index wrote them


def undo(manifest: str | os.PathLike, *, dry_run: bool = False, into: Sequence[str] | None = None,
         vouches: Vouches | None = None) -> tuple[list[Moved], list[tuple[str, str]], str | None]:
    """Move every file of a manifest back, finishing an undo that was interrupted. Returns what came back,
    (path, reason) for what could not, and the index the manifest was made for. What came back includes the
    files an interrupted run of this undo had already put back (`Moved.earlier`) when they are still as they
    were: a kill between moving them and writing the index left them out of it. A manifest is trusted only
    for files inside its own folder: an entry whose quarantined copy lies elsewhere is refused. `into`: the
    folders files may go back into (the indexed folders of the index they return to; the manifest alone, a
    file anyone can write, never decides where a file is written); None, anywhere. `vouches` (the index's
    `Index.vouches`): only entries it sealed are acted on; None, every entry. `dry_run`: what would come back,
    with nothing touched."""
    manifest = Path(manifest)
    read_manifest(manifest)  # a clear error before any lock is taken
    with FileLock(manifest.parent / LOCK):  # one move or undo in a quarantine folder at a time
        return _undo(manifest, dry_run, into, vouches)


def _undo(manifest: Path, dry_run: bool, into: Sequence[str] | None, vouches: Vouches | None
          ) -> tuple[list[Moved], list[tuple[str, str]], str | None]:
    record = read_manifest(manifest)  # again: a run that held the lock may have changed it
    restored: list[Moved] = []
    skipped: list[tuple[str, str]] = []
    for entry in record["moves"]:
        try:
            outcome = _undo_one(entry, manifest, record, dry_run, into, vouches)
        except OSError as exc:  # this entry's paths (too long, unreadable): the others go on
            outcome = f"{exc.strerror or exc}"
        if isinstance(outcome, Moved):
            restored.append(outcome)
        elif outcome:
            skipped.append((entry["from"], outcome))
    if not dry_run:
        record["undone_at"] = time.time()
        _save(manifest, record)
    return restored, skipped, record.get("index")


def _undo_one(entry: dict, manifest: Path, record: dict, dry_run: bool, into: Sequence[str] | None,
              vouches: Vouches | None) -> Moved | str | None:
    """One entry of `_undo`: the file back (Moved), why not (str), or None for an entry with nothing to do."""
    source, target = Path(entry["from"]), Path(entry["to"])
    back = Moved(entry["from"], entry["to"], entry["sha256"], entry.get("record"))
    if target.is_symlink():
        return f"{target} is a symbolic link, not a file this quarantine holds"
    if not _inside(target, manifest.parent):
        moved = record.get("folder") if isinstance(record.get("folder"), str) else None
        hint = f"; if the quarantine folder was moved, move it back to {moved}" if moved else ""
        return f"the manifest puts it at {target}, outside {manifest.parent}: not a file this quarantine holds{hint}"
    if vouches is not None and not vouches(sealed_part(entry), entry.get("seal")):
        return (f"this entry of the manifest was not written by the index it goes back into (changed, or made for "
                f"another index): left at {target}")
    if into is not None and not any(_inside(source, Path(folder)) for folder in into):
        return (f"outside the folders of the index it goes back into ({', '.join(into) or 'none'}): left at "
                f"{target}; move it by hand if that is where it belongs")
    if entry.get("restored"):
        if not dry_run and _unchanged(source, entry["sha256"]):
            back.earlier = True
            return back
        return None
    if not entry.get("done") and not target.exists() and _unchanged(source, entry["sha256"]):
        if not dry_run:  # never moved (a kill before the move, or in the middle of copying it)
            _partial(target).unlink(missing_ok=True)
        return None
    outcome = resume(target, source, entry["sha256"], act=not dry_run)
    if outcome is not None:
        return outcome
    if not dry_run:
        entry["restored"] = True
        _save(manifest, record)
    return back


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
