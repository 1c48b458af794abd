"""Instance and class retrieval, step by step (issue 15): holidays_dev mAP and Caltech101 P@4 / mAP for each
change to the descriptor and the search, with what each costs in indexing speed and query time.

    python -m benchmarks.holidays [--skip-caltech] [--speed-images 2000]

Every row builds fresh indexes through `Index.add` (the real pipeline: read, hash, decode, resize, embed,
store) and evaluates them with `lookalike eval`'s code: holidays_dev with the INRIA Holidays protocol (147
queries, the query left out, trapezoid AP as holidays_map.py), Caltech101 with the reference protocol (8,677
images without BACKGROUND_Google, every image a query, itself excluded). GeM p = 3 and α-QE with n = 2, α = 3
are the published standard values; α-DBA's shortlist (100) and neighbours (2) were chosen on these two sets,
as were the opt-in input size (longer side 320 px) and the rule that letterbox bars are cut only when centred
(a first, one-sided rule cut flat skies too), so this page is a dev set for them: the held-out Holidays half
is measured elsewhere.

Speed on a shared machine: the default before issue 15 (v1) and the new one (v3) index the same Caltech101
images in turns, in this one run, with the load average recorded beside each figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.report import CALTECH, DATASETS, command, commit, machine, write_section
from lookalike import Index, images
from lookalike.evaluation.protocol import evaluate_index
from lookalike.models.embedder import Embedder
from lookalike.models.registry import MODELS, ModelSpec
from lookalike.search.rerank import NO_AUGMENTATION, NO_EXPANSION, Augmentation, QueryExpansion


def cpu_flags() -> str:
    """The processor's int8 instruction sets, which decide how an int8 model computes (Linux only)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "instruction sets unknown"
    found = [name for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if name in flags]
    return ", ".join(found) or "none of avx2, avx512f, avx512_vnni, avx_vnni, amx_int8"


HOLIDAYS = DATASETS / "holidays_dev"
DEFAULT = MODELS["efficientnet-lite0"]
# The default before this page's last change: v2 (GeM p=3, 224x224, no bars cut) with 8-bit int8 weights.
V2 = replace(DEFAULT, version=2, trim=False, calibration=2)
# The default before issue 15: v1 (average pooling), 8-bit int8 weights: for indexing speed on this machine.
V1 = replace(DEFAULT, version=1, gem=0.0, trim=False, calibration=2)
DBA = Augmentation()  # the default re-ranking: shortlist 100, 2 neighbours, α = 3
BEST = MODELS["lite0-320"]


@dataclass
class Step:
    name: str
    spec: ModelSpec
    expansion: QueryExpansion = NO_EXPANSION
    augmentation: Augmentation = NO_AUGMENTATION
    caltech: bool = True  # False: holidays_dev only (a Caltech101 index takes ~15 min on a loaded machine)


STEPS = [
    Step("v2 (before): GeM p=3, 224×224, int8 with 8-bit weights, plain cosine", V2, caltech=False),
    Step("v3: + letterbox bars cut, int8 with 7-bit weights, plain cosine (`--dba 0`)", DEFAULT),
    Step("v3 + α-DBA of the shortlist (100 re-ranked, 2 neighbours, α=3): **the new default**", DEFAULT,
         augmentation=DBA),
    Step("v3 + α-DBA + α-QE (n=2, α=3, opt-in: `--qe 2`)", DEFAULT, QueryExpansion(2, 3.0), DBA),
    Step("v3, fp32 (`--precision fp32`), plain cosine", replace(DEFAULT, precision="fp32"), caltech=False),
    Step("v3, fp32 + α-DBA", replace(DEFAULT, precision="fp32"), augmentation=DBA, caltech=False),
    Step("v3, aspect kept, longer side 320 px (opt-in: `--model lite0-320`), plain cosine", BEST, caltech=False),
    Step("lite0-320 + α-DBA", BEST, augmentation=DBA, caltech=False),
]
SPEED = (("v1", V1), ("v3", DEFAULT))


def build(spec: ModelSpec, photos: Path, target: Path, exclude: str | None = None) -> float:
    """A fresh index of `photos` (less the `exclude` folder); returns images/s end to end."""
    parts = [p for p in sorted(photos.iterdir()) if p.name != exclude] if exclude else [photos]
    with Index.open(target, model=spec, create=True) as index:
        summary = index.add(parts)
    return summary.images_per_second


def query_ms(index_path: Path, queries: list[Path], step: Step) -> float:
    """Median ms for one query from an image file to 10 results (decode, embed, search, re-ranking if on)."""
    with Index.open(index_path) as index:
        index.search(queries[0], k=10, qe=step.expansion, dba=step.augmentation)
        times = []
        for query in queries:
            started = time.perf_counter()
            index.search(query, k=10, qe=step.expansion, dba=step.augmentation)
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def speed_in_turns(paths: list[Path], rounds: int, tmp: Path) -> list[tuple[str, float, float]]:
    """The default before issue 15 (v1) and now (v3) indexing the same files in turns: (which, images/s, load)."""
    folder = tmp / "speed-photos"
    folder.mkdir()
    for n, path in enumerate(paths):  # links: the same bytes, one folder
        (folder / f"{n:05d}{path.suffix}").symlink_to(path)
    out = []
    for round_ in range(rounds):
        for name, spec in SPEED:
            rate = build(spec, folder, tmp / f"speed-{name}-{round_}.lookalike")
            out.append((name, rate, os.getloadavg()[0]))
            print("speed", name, round(rate), out[-1][2], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-caltech", action="store_true", help="holidays_dev only (quick)")
    parser.add_argument("--speed-images", type=int, default=3000, help="Caltech101 files per speed turn")
    parser.add_argument("--speed-rounds", type=int, default=2)
    args = parser.parse_args()
    for spec in {s.spec.to_json(): s.spec for s in STEPS}.values():
        Embedder(spec)  # export and quantise once, outside the timings
    caltech_files = [p for p in images.discover(CALTECH) if "BACKGROUND_Google" not in p.parts]
    queries = caltech_files[5::290][:30]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        built: dict[str, tuple[Path, Path, float, float]] = {}
        for step in STEPS:
            key = step.spec.to_json()
            if key not in built:
                holidays_index = tmp / f"holidays-{len(built)}.lookalike"
                build(step.spec, HOLIDAYS, holidays_index)
                caltech_index, rate, load = tmp / f"caltech-{len(built)}.lookalike", float("nan"), float("nan")
                if step.caltech and not args.skip_caltech:
                    rate = build(step.spec, CALTECH, caltech_index, exclude="BACKGROUND_Google")
                    load = os.getloadavg()[0]
                built[key] = (holidays_index, caltech_index, rate, load)
            holidays_index, caltech_index, rate, load = built[key]
            with Index.open(holidays_index) as index:
                hol = evaluate_index(index, HOLIDAYS, protocol="holidays", pca_dims=(), methods=False,
                                     expansion=step.expansion, augmentation=step.augmentation)
            row = {"step": step.name, "holidays": hol.map, "p4": float("nan"), "map": float("nan"), "rate": rate,
                   "load": load, "ms": float("nan")}
            if step.caltech and not args.skip_caltech:
                with Index.open(caltech_index) as index:
                    cal = evaluate_index(index, CALTECH, exclude=("BACKGROUND_Google",), pca_dims=(), methods=False,
                                         expansion=step.expansion, augmentation=step.augmentation)
                row.update(p4=cal.p_at_k, map=cal.map, ms=query_ms(caltech_index, queries, step))
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        speed = [] if args.skip_caltech else speed_in_turns(caltech_files[:: max(1, len(caltech_files)
                                                                                  // args.speed_images)],
                                                            args.speed_rounds, tmp)

    def pct(value: float) -> str:
        return "-" if value != value else f"{100 * value:.2f} %"

    def num(value: float, fmt: str) -> str:
        return "-" if value != value else format(value, fmt)

    lines = [f"| {r['step']} | {pct(r['holidays'])} | {pct(r['p4'])} | {pct(r['map'])} | {num(r['rate'], '.0f')} "
             f"(load {num(r['load'], '.1f')}) | {num(r['ms'], '.1f')} |" for r in rows]
    turns = ", ".join(f"{name} {rate:.0f}/s (load {load:.1f})" for name, rate, load in speed)

    def ratio(name: str) -> str:
        old = [rate for which, rate, _ in speed if which == "v1"]
        new = [rate for which, rate, _ in speed if which == name]
        return f"{statistics.mean(b / a for a, b in zip(old, new, strict=True)):.2f}" if old and new else "-"

    body = f"""## Instance retrieval: Holidays and Caltech101, step by step (issue 15)

`{command()}` at commit {commit()}, on {machine(("onnxruntime", "numpy", "pillow"))}.
holidays_dev: 402 images, 147 queries, INRIA Holidays protocol (query left out, trapezoid AP as holidays_map.py).
Caltech101: 8,677 images, every one a query, itself excluded. Indexing: `Index.add` end to end on Caltech101
(read, hash, decode, resize, embed, store); one query: an image file to 10 results, median of
{len(queries)}, exact search over the Caltech101 index. The machine was shared with other work: the load
average (1 minute, 2 cores) is given beside each speed.

| step | holidays_dev mAP | Caltech101 P@4 | Caltech101 mAP | indexing images/s | ms / query |
|---|---|---|---|---|---|
{chr(10).join(lines)}

"-": not measured in this run (a Caltech101 index takes minutes on this machine; steps that change only the
search reuse their model's index). Indexing speed is the model's alone: re-ranking changes only queries.

α-DBA of the shortlist (search/rerank.py): the best 100 candidates of a query are re-scored, each as itself
plus its 2 nearest other candidates weighted by cosine³. The neighbours come from the shortlist, so a query
never augments the images it is compared with: on holidays_dev that is the protocol's "query left out" case
(the classic whole-index DBA, with the query left out of the index, gave the same 85.25 % in a probe). The
shortlist length (100) and neighbours (2) were chosen on holidays_dev and Caltech101 (shortlists of 20-50
lost Caltech101 P@4, down to 89.02 % at 20 × 2), so for this choice both are dev sets; α = 3 is the
published value. Scores shown are cosines to the augmented vectors (an exact copy of the query keeps 1);
`--dba 0` gives plain cosine order and scores.

Default indexing before issue 15 (v1: average pooling, 8-bit weights) and now (v3) indexing the same
{args.speed_images:,} Caltech101 files in turns: {turns or '-'}. Speed against v1, mean of the turns: v3
**{ratio("v3")}**.

Why the int8 recipe changed: this run's processor ({cpu_flags()}) has AVX2 but no VNNI. There ONNX Runtime
multiplies uint8 activations by int8 weights with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit
weights: the 8-bit int8 copy's vectors had a mean cosine of only 0.87 to fp32 (60 holidays_dev images; the
earlier figures on this page came from an Intel Xeon, where they matched fp32). 7-bit weights cannot
saturate (2 × 255 × 64 fits in 16 bits), so every x86 CPU computes the same vectors; they cost a little
quality against fp32 (compare the rows above).

Tried and not used: the query also embedded rotated by ±90° (best score of the three) gave 83.76 % on
holidays_dev alone (int8, plain cosine) and about 87 % with α-DBA, but needs the query image itself (not its
stored vector) and three model runs per query; its effect on Caltech101 was not measured, so it was not
built. A query embedded at 224×224 plus longer side 320 (summed) against the 224×224 index: 84.86 % in an fp32
probe, 82.27 % with the int8 graphs. Earlier: PCA-whitening learned on Caltech101 lowered holidays_dev mAP
(79.7 → 76.6-78.1 % at 128-1024 dims), so none is applied (learned on the collection itself,
`lookalike index --pca N --whiten` exists); three input scales summed reached 83.4 % on holidays_dev at about
five times the compute.
"""
    print(body)
    write_section("holidays", body)


if __name__ == "__main__":
    main()
