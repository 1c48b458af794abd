"""An evaluation, told three ways: rows for the terminal, a markdown page, and matplotlib plots."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from lookalike.evaluation.protocol import REFERENCE, EvalResult, has_reference
from lookalike.images import printable
from lookalike.viz import BAD, GOOD, QUERY, caption_name, rows_grid, tile_of


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f} %"


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value * 1000:.1f} µs" if value < 0.1 else f"{value:.2f} ms"


def summary_rows(result: EvalResult) -> list[tuple[str, str, str]]:
    """(figure, lookalike, reference) rows: the reference pipeline's table, with ours beside it."""
    k = result.k
    reference_p = f"{REFERENCE['p_at_4']} %" if k == 4 and result.protocol == "classes" else "-"
    steps = [f"α-QE {result.expansion}"] * bool(result.expansion) + [f"α-DBA {result.augmentation}"] * bool(
        result.augmentation)
    rows = [
        ("ranking (as `lookalike search`; --dba 0 --qe 0: plain cosine)", ", ".join(steps) or "plain cosine",
         "plain distance"),
        (f"P@{k}, query excluded ({result.queries:,} queries, {result.groups} groups)", _pct(result.p_at_k),
         reference_p),
        (f"recall@{k} (share of the query's group found)", _pct(result.recall_at_k), "-"),
        ("mAP (trapezoid AP as holidays_map.py, query left out)" if result.protocol == "holidays"
         else "mAP (complete rankings)", _pct(result.map), "-"),
    ]
    for dims, value in result.pca:
        ref = REFERENCE["pca"].get(dims)
        rows.append((f"P@{k} after PCA to {dims} dims (euclidean)", _pct(value),
                     f"{ref} %" if ref is not None and k == 4 else "-"))
    reference_ms = REFERENCE["query_ms"]
    for method in result.methods:
        ref = next((v for key, v in reference_ms.items() if _same_method(key, method.name)), None)
        sampled = f", {method.queries:,} sampled queries" if method.queries else ""
        figure = (f"one query: {method.name}, no re-ranking (recall@10 {_pct(method.recall_at_10)}, "
                  f"P@{k} {_pct(method.p_at_k)}{sampled})")
        rows.append((figure, _ms(method.ms_per_query) if not method.note else method.note, _ms(ref)))
    if result.extraction_s is not None:
        rows.append((f"feature extraction, whole set ({result.extraction_images:,} images)",
                     f"{result.extraction_s / 60:.2f} min ({result.extraction_images / result.extraction_s:.0f}/s)",
                     f"{REFERENCE['extraction_s'] / 60:.1f} min"))
    if result.ms_per_image is not None:
        rows.append(("feature extraction, one image from its file", _ms(result.ms_per_image),
                     f"~{REFERENCE['extraction_ms_per_image']:.0f} ms"))
    return rows


def _same_method(reference_key: str, name: str) -> bool:
    if reference_key.startswith("annoy"):
        return name.startswith("annoy") and "PCA-150" in name
    if reference_key == "exact, PCA-150":
        return name == "exact, PCA-150"
    return name.startswith("exact,") and "PCA" not in name


def worst_groups(result: EvalResult, count: int = 10) -> list[tuple[str, float]]:
    return sorted(result.per_group.items(), key=lambda item: (item[1], item[0]))[:count]


_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>])")


def literal(text: str) -> str:
    """Text from the data (a folder or file name, a model name) as markdown that shows it as it is: HTML
    escaped, every markdown character (| included, which would split a table row) backslash-escaped, line
    breaks as spaces, non-UTF-8 bytes of a name as \\xNN."""
    text = html.escape(printable(" ".join(str(text).splitlines())), quote=False)
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def markdown(result: EvalResult, plots: dict[str, str] | None = None) -> str:
    plots = plots or {}
    reference = has_reference(result)
    table = (["| figure | lookalike | reference |", "|---|---|---|",
              *(f"| {a} | {b} | {c} |" for a, b, c in summary_rows(result))] if reference else
             ["| figure | lookalike |", "|---|---|", *(f"| {a} | {b} |" for a, b, _ in summary_rows(result))])
    lines = [
        f"# lookalike eval: {literal(Path(result.dataset).name)}",
        "",
        f"Model **{literal(result.model)}**, {result.images:,} images, {result.groups} groups, k = {result.k}."
        + (f" Reference (on Caltech101): {REFERENCE['model']}." if reference else ""),
        "",
        *table,
        "",
        "The PCA rows follow the reference's protocol (PCA fitted on the whole set, euclidean distance on the "
        "PCA coordinates). Query times are medians of single queries on a warm process; recall@10 is measured "
        "against exact search at full dimension; lookalike's own PCA re-normalises and ranks by cosine.",
    ]
    for title, key in (("P@k against PCA dimensions", "pca"), ("Query time per method", "query_time")):
        if key in plots:
            lines += ["", f"## {title}", "", f"![{title}]({plots[key]})"]
    worst = worst_groups(result)
    if worst:
        lines += ["", f"## The {len(worst)} worst groups by P@{result.k}", "", "| group | images | P@k |",
                  "|---|---|---|"]
        lines += [f"| {literal(name)} | {result.group_sizes.get(name, 0)} | {_pct(value)} |" for name, value in worst]
        if "worst" in plots:
            lines += ["", "Each row: the group's first image (blue frame), then its nearest neighbours; green: same "
                      "group, red: another.", "", f"![worst groups]({plots['worst']})"]
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, folder: str | Path) -> Path:
    """report.md with its plots (PNG) in `folder`; returns the markdown file."""
    from matplotlib.figure import Figure  # a Figure of its own: no global backend, no pyplot state

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if result.pca:
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        dims = [d for d, _ in result.pca]
        ax.plot(dims, [100 * v for _, v in result.pca], "o-", label=f"lookalike, {result.model}")
        if result.k == 4 and has_reference(result):
            ref = [(d, v) for d, v in REFERENCE["pca"].items()]
            ax.plot([d for d, _ in ref], [v for _, v in ref], "s--", color="grey", label="reference, ResNet-50")
        ax.set_xscale("log")
        ax.set(xlabel="PCA dimensions", ylabel=f"P@{result.k} (%)", title=f"P@{result.k} against PCA dimensions")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "pca.png", dpi=110)
        plots["pca"] = "pca.png"
    timed = [m for m in result.methods if not math.isnan(m.ms_per_query)]
    if timed:
        shown = REFERENCE["query_ms"] if has_reference(result) else {}
        names = [f"lookalike: {m.name}" for m in timed] + [f"reference: {k}" for k in shown]
        values = [m.ms_per_query for m in timed] + list(shown.values())
        colours = ["tab:blue"] * len(timed) + ["grey"] * len(shown)
        fig = Figure(figsize=(8, 0.45 * len(names) + 1.2))
        ax = fig.subplots()
        ax.barh(names[::-1], values[::-1], color=colours[::-1])
        ax.set_xscale("log")
        ax.set(xlabel="ms per query (log scale)", title="One query, warm process")
        fig.tight_layout()
        fig.savefig(folder / "query_time.png", dpi=110)
        plots["query_time"] = "query_time.png"
    worst = [name for name, _ in worst_groups(result) if name in result.examples]
    if worst:
        rows = []
        for name in worst:
            paths, labels = result.examples[name], result.example_labels[name]
            row = [tile_of(paths[0], f"{name}  P@{result.k} {_pct(result.per_group[name])}",
                           caption_name(paths[0]), QUERY)]
            row += [tile_of(p, label, caption_name(p), GOOD if label == name else BAD)
                    for p, label in zip(paths[1:], labels[1:], strict=True)]
            rows.append(row)
        rows_grid(rows, folder / "worst.png")
        plots["worst"] = "worst.png"
    page = folder / "report.md"
    page.write_text(markdown(result, plots))
    return page
