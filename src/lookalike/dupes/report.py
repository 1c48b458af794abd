"""Duplicate findings for people and programs: rows, JSON, CSV, and an HTML page with pictures."""

from __future__ import annotations

import csv
import html
from pathlib import Path

from lookalike.dupes.find import Cluster, Findings
from lookalike.images import printable
from lookalike.viz import BAD, GOOD, caption_name, rows_grid, tile_of


def evidence(cluster: Cluster, member_id: int) -> str:
    """Why this member is in its cluster: its link to the one kept, in words."""
    link = cluster.links.get(member_id)
    return link.describe() if link is not None else ""


def as_dict(findings: Findings) -> dict:
    return {
        "scanned": findings.scanned,
        "candidate_pairs": findings.candidates,
        "candidate_pairs_checked": findings.candidates - findings.skipped,  # the others: proven pairs joined them
        "candidate_pairs_checked_now": findings.checked_now,  # the others checked: verdicts cached by earlier runs
        "candidate_floor": findings.floor,
        "seconds": findings.seconds,
        "clusters": [
            {"kind": c.kind, "keep": c.keep.path, "reason": c.reason, "keep_aliases": c.keep.aliases,
             "duplicates": [{"path": m.path, "evidence": evidence(c, m.id), "link": c.links[m.id].kind,
                             "checks": _checks(c, m.id),
                             "aliases": m.aliases, "width": m.width, "height": m.height, "size": m.size}
                            for m in c.others]}
            for c in findings.clusters
        ],
    }


def _checks(cluster: Cluster, member_id: int) -> dict | None:
    """Every measure of the verification that linked this member, or None for bytes and pixels."""
    evidence = cluster.links[member_id].evidence
    return evidence.as_dict() if evidence is not None else None


def write_csv(findings: Findings, path: str | Path) -> None:
    # surrogateescape: a name that is not UTF-8 is written as its own bytes, the file it names exactly
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cluster", "kind", "role", "path", "width", "height", "size", "evidence", "reason"])
        for n, cluster in enumerate(findings.clusters, 1):
            for member in cluster.members:
                keep = member.id == cluster.keep.id
                writer.writerow([n, cluster.kind, "keep" if keep else "duplicate", member.path, member.width,
                                 member.height, member.size, evidence(cluster, member.id),
                                 cluster.reason if keep else ""])


def write_html(findings: Findings, folder: str | Path, *, max_clusters: int = 500) -> Path:
    """index.html, one PNG per cluster (the one to keep first, framed green) and the similarity histogram."""
    from matplotlib.figure import Figure  # a Figure of its own: no global backend, no pyplot state

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    if len(findings.neighbour_cosines):
        ax.hist(findings.neighbour_cosines, bins=100, color="tab:blue")
        ax.set_yscale("log")
    ax.axvline(findings.floor, color="tab:red", label=f"pairs checked from cosine {findings.floor:.2f}")
    ax.set(xlabel="cosine similarity of each image to its nearest neighbours", ylabel="pairs (log)",
           title="Which neighbours were checked pixel by pixel")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "similarities.png", dpi=100)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>lookalike: duplicates</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1400px}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;border-bottom:1px solid #ddd}"
        ".keep{color:#1e963c;font-weight:600}</style>",
        f"<h1>Duplicates</h1><p>{findings.scanned:,} images scanned, {len(findings.clusters):,} clusters, "
        f"{sum(len(c.others) for c in findings.clusters):,} duplicates; {html.escape(findings.pairs_text())} "
        f"({findings.seconds:.1f} s). A duplicate is the same photograph (same bytes, same pixels, or "
        "an edit of it that the pixels prove), never merely another shot of the same thing. Nothing has been "
        "moved: see <code>lookalike dupes --move-to</code>.</p>",
        "<img src='similarities.png' alt='histogram of neighbour similarities'>",
    ]
    for n, cluster in enumerate(findings.clusters[:max_clusters], 1):
        tiles = [tile_of(cluster.keep.path, "keep", caption_name(cluster.keep.path), GOOD)]
        tiles += [tile_of(m.path, evidence(cluster, m.id), caption_name(m.path), BAD) for m in cluster.others]
        rows_grid([tiles[i:i + 6] for i in range(0, len(tiles), 6)], folder / f"cluster-{n:04d}.png")
        rows = "".join(
            f"<tr><td class='{'keep' if m.id == cluster.keep.id else ''}'>"
            f"{'keep' if m.id == cluster.keep.id else 'duplicate'}</td><td>{html.escape(printable(m.path))}</td>"
            f"<td>{m.width}×{m.height}</td><td>{m.size:,}</td><td>{html.escape(evidence(cluster, m.id))}</td></tr>"
            for m in cluster.members)
        parts.append(f"<h2>{n}. {cluster.kind}, {len(cluster.members)} images</h2>"
                     f"<p>Keep <b>{html.escape(printable(Path(cluster.keep.path).name))}</b>: "
                     f"{html.escape(cluster.reason)}</p>"
                     f"<img src='cluster-{n:04d}.png' alt='cluster {n}'><table><tr><th></th><th>path</th>"
                     f"<th>size</th><th>bytes</th><th>evidence</th></tr>{rows}</table>")
    if len(findings.clusters) > max_clusters:
        parts.append(f"<p>… and {len(findings.clusters) - max_clusters:,} more clusters: see --json or --csv.</p>")
    page = folder / "index.html"
    page.write_text("\n".join(parts))
    return page
