"""Duplicate detection, honestly: a dev set (where the verification thresholds were chosen) and a test set
with other photos, other seeds and more edits (what is reported), hard negatives that must not be flagged,
imagededup's PHash on the same sets, and the time of the whole command.

    python -m benchmarks.dupes [--workdir DIR] [--skip-timing]

Sets (benchmarks/dupes_sets.py):
  dev   600 Caltech101 originals, 200 of them with 8 edited copies; holidays_dev groups 1000-1074; 205
        synthetic re-shots of dev photos (benchmarks/dupes_sets.reshot: camera turned, parallax, a part moved);
        952 look-alike studio shots of 16 other Caltech101 classes (dupes_sets.DEV_HARD_CLASSES);
  test  1,000 other Caltech101 originals, 250 of them with 16 edited copies (the dev seven with other seeds,
        and nine more); holidays_dev groups 1075-1149; Caltech101 Motorbikes + airplanes + Faces_easy.
Every image of a set goes into one index (efficientnet-lite0 int8, the default) and `lookalike dupes INDEX
--json` runs on it as a user would.

Truth: an original and its copies are one cluster; every other image is alone, except files that are
byte-identical in the dataset itself (holidays_dev holds two such pairs), which are counted apart.

The baseline is imagededup's PHash (64-bit, max_distance_threshold 10, its default), installed without its
CNN extras: `pip install --no-deps imagededup` (+ PyWavelets, scipy, tqdm, matplotlib); its hashing needs no
torch, but its package imports a torchvision model module at import time, which is stubbed out here.
fastdup was not run (see docs/BENCHMARKS.md).

The 100k timing (`timing_100k`): an index of 100,000 synthetic vectors (drawn around real embeddings as in
benchmarks/scale.py) whose files do not exist; the whole command is timed as a re-run finds it (every
candidate pair's verdict cached by a first run whose checks were stubbed); a first run's verification is
estimated from its cost per candidate pair on the test set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from benchmarks.dupes_sets import (
    DEV_EDITS,
    DEV_HARD_CLASSES,
    TEST_EDITS,
    link_hard_negatives,
    link_holidays,
    make_edited_set,
    make_reshots,
)
from benchmarks.report import command, commit, machine, write_section

SIZES = {"dev": (600, 200), "test": (1000, 250)}


def build(workdir: Path, split: str) -> tuple[Path, dict]:
    """The set's folders and its index (made once per workdir); returns (index, truth)."""
    root = workdir / split
    index = workdir / f"{split}.lookalike"
    truth_file = root / "truth.json"
    if not truth_file.is_file():
        for sub in ("edited", "holidays", "hard"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        truth = make_edited_set(root / "edited", split, *SIZES[split])
        link_holidays(root / "holidays", split)
        link_hard_negatives(root / "hard", split)
        truth_file.write_text(json.dumps(truth))
    fresh = False
    if split == "dev" and not any((root / "hard").iterdir()):  # added later, as the re-shots were
        link_hard_negatives(root / "hard", split)
        fresh = True
    if split == "dev" and not (root / "reshots").is_dir():  # added later: the index takes them in as new files
        (root / "reshots").mkdir()
        make_reshots(root / "reshots")
        fresh = True
    if fresh or not index.exists():
        subprocess.run([sys.executable, "-m", "lookalike", "index", str(root), "--index", str(index), "-q"],
                       check=True, capture_output=True)
    return index, json.loads(truth_file.read_text())


def run_dupes(index: Path) -> tuple[dict, float, float]:
    """`lookalike dupes INDEX --json`: (its answer, seconds, peak RSS MB of that process alone: os.wait4's usage,
    not RUSAGE_CHILDREN, whose maximum is that of the largest child so far, a `lookalike index` build included)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([sys.executable, "-m", "lookalike", "dupes", str(index), "--json", "-q"],
                                   stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, process.args, out.read(), err.read())
        answer = json.loads(out.read())
    return answer, seconds, usage.ru_maxrss / 1024


def answer_of(index: Path, saved: Path, reuse: bool) -> dict:
    """The answer on one set with its times (cold: no cache; warm: run again), saved to `saved`; with
    `reuse`, the one saved by an earlier run."""
    if reuse and saved.is_file():
        return json.loads(saved.read_text())
    checks = index.parent / f"{index.name}-cache" / "dupes.sqlite"  # the checks' cache: cold means without it
    checks.unlink(missing_ok=True)
    answer, cold, peak = run_dupes(index)
    with sqlite3.connect(checks) as db:
        feature_rows = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
    warm = run_dupes(index)[1]
    answer["bench"] = {"cold_seconds": cold, "warm_seconds": warm, "peak_rss_mb": peak, "feature_rows": feature_rows,
                       "load": os.getloadavg()[0], "commit": commit()}
    saved.write_text(json.dumps(answer))
    return answer


def clusters_of_answer(answer: dict) -> list[tuple[str, set[str]]]:
    """(kept path, every member path) per cluster."""
    return [(c["keep"], {c["keep"], *(d["path"] for d in c["duplicates"])}) for c in answer["clusters"]]


def pairs_of(groups) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in combinations(sorted(g), 2)}


def identical_in_dataset(paths: list[str]) -> set[frozenset[str]]:
    """Pairs of files that are byte-identical in the dataset itself (true duplicates nobody made)."""
    by_hash: dict[str, list[str]] = {}
    for path in paths:
        by_hash.setdefault(hashlib.sha256(Path(path).read_bytes()).hexdigest(), []).append(path)
    return pairs_of([g for g in by_hash.values() if len(g) > 1])


def score(root: Path, truth: dict, clusters: list[tuple[str | None, set[str]]], edits: dict) -> dict:
    """Pair precision and recall on the edited set (per edit too), the share of clusters keeping the
    original, and images flagged among the hard negatives."""
    edited = root / "edited"
    true_groups = [{str(edited / o), *(str(edited / c) for c, _ in copies)} for o, copies in truth.items() if copies]
    true_pairs = pairs_of(true_groups)
    # Caltech101's Faces_easy are crops of its Faces photos: Faces_easy/image_N is the same photograph as
    # Faces/image_N (and as every edited copy of it). Those pairs are true duplicates the dataset brought.
    twins = set()
    for original, copies in truth.items():
        if original.startswith("Faces-"):
            twin = root / "hard" / original.replace("Faces-", "Faces_easy-", 1)
            if twin.exists() or twin.is_symlink():
                group = {str(edited / original), *(str(edited / c) for c, _ in copies)}
                twins |= {frozenset({str(twin), member}) for member in group}
    true_pairs |= twins
    found_pairs = pairs_of(g for _, g in clusters)
    on_edited = {p for p in found_pairs if all(x.startswith(str(edited) + "/") for x in p)}
    crossing = {p for p in found_pairs if any(x.startswith(str(edited) + "/") for x in p)} - on_edited
    hits = true_pairs & found_pairs
    result = {
        "pair_precision": len(hits) / len(on_edited | crossing) if on_edited | crossing else 1.0,
        "pair_recall": len(hits) / len(true_pairs),
        "per_edit": {},
    }
    copy_edit = {str(edited / c): e for copies in truth.values() for c, e in copies}
    for label in edits:
        wanted = {frozenset({str(edited / o), str(edited / c)}) for o, copies in truth.items()
                  for c, e in copies if e == label}
        involved = {p for p in on_edited | crossing if any(copy_edit.get(x) == label for x in p)}
        result["per_edit"][label] = {"recall": len(wanted & found_pairs) / len(wanted),
                                     "precision": len(involved & true_pairs) / len(involved) if involved else 1.0}
    originals = {str(edited / o) for o, copies in truth.items() if copies}
    found_originals = [keep for keep, group in clusters if keep is not None and group & originals]
    result["original_kept"] = (sum(k in originals for k in found_originals) / len(found_originals)
                               if found_originals else None)
    for negatives in ("holidays", "hard", "reshots"):
        folder = root / negatives
        names = sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else []
        if not names:
            continue
        identical = identical_in_dataset(names) | twins
        inside = set(names)
        flagged, wrongly = set(), set()
        for _, group in clusters:
            for x in group & inside:
                flagged.add(x)
                if not any(frozenset({x, y}) in identical for y in group if y != x):
                    wrongly.add(x)
        result[negatives] = {"images": len(names), "flagged": len(flagged), "flagged_wrongly": len(wrongly),
                             "identical_in_dataset": len(identical - twins),
                             "flagged_with_their_faces_twin": len(flagged - wrongly) if negatives == "hard" else 0,
                             "flagged_names": sorted(Path(x).name for x in wrongly)[:40],
                             "flagged_groups": sorted(sorted(Path(x).name for x in group)
                                                      for _, group in clusters if group & wrongly)[:40]}
    return result


# Flagged look-alike groups looked at by eye (the pictures side by side), so the page can say which are the
# same photograph (the dataset's own near-duplicates) and which are not. A group not listed was not looked at.
JUDGED = {
    **{frozenset(f"Motorbikes-image_{n}.jpg" for n in group): "the same photograph" for group in (
        ("0068", "0198"), ("0018", "0147"), ("0193", "0196"), ("0191", "0194"), ("0428", "0429"), ("0506", "0507"),
        ("0419", "0420"))},
    **{frozenset(f"Motorbikes-image_{n}.jpg" for n in group): "the same photograph, the bike recoloured"
       for group in (("0192", "0195"), ("0413", "0415"), ("0716", "0717"))},
    frozenset(f"Motorbikes-image_{n}.jpg" for n in ("0728", "0729", "0730")):
        "the same photograph, retouched (fairing added; 0730 also enlarged)",
    **{frozenset(f"Motorbikes-image_{n}.jpg" for n in group): "DIFFERENT motorbikes (wrong)"
       for group in (("0715", "0738"), ("0724", "0734"))},
    **{frozenset(group): "the same photograph (background or crop changed)" for group in (
        ("grand_piano-image_0003.jpg", "grand_piano-image_0046.jpg"),
        ("grand_piano-image_0006.jpg", "grand_piano-image_0014.jpg"),
        ("grand_piano-image_0009.jpg", "grand_piano-image_0072.jpg"),
        ("grand_piano-image_0041.jpg", "grand_piano-image_0051.jpg"),
        ("revolver-image_0036.jpg", "revolver-image_0060.jpg"),
        ("watch-image_0173.jpg", "watch-image_0211.jpg"), ("wrench-image_0012.jpg", "wrench-image_0016.jpg"))},
    frozenset({"watch-image_0122.jpg", "watch-image_0126.jpg"}): "the same photograph, background and dial changed",
}


def judged(groups: list[list[str]]) -> str:
    """The flagged groups, each with what looking at it said."""
    return "; ".join(f"{' = '.join(g)} ({JUDGED.get(frozenset(g), 'not looked at')})" for g in groups) or "none"


def phash_clusters(root: Path) -> tuple[list[tuple[None, set[str]]], float]:
    """imagededup PHash, max_distance_threshold 10, over every file of the set; clusters as connected
    components of its duplicate lists."""
    import types

    stub = types.ModuleType("imagededup.utils.models")  # its CNN models need torchvision; hashing does not
    stub.__getattr__ = lambda name: None
    sys.modules.setdefault("imagededup.utils.models", stub)
    import logging

    from imagededup.methods import PHash
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    logging.getLogger("imagededup").setLevel(logging.WARNING)
    started = time.perf_counter()
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".webp", ".png"))
    hasher = PHash(verbose=False)
    encodings = {}
    for path in files:
        code = hasher.encode_image(image_file=path)
        if code:
            encodings[path] = code
    duplicates = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=10)
    position = {p: i for i, p in enumerate(encodings)}
    rows = [position[a] for a, found in duplicates.items() for b in found]
    cols = [position[b] for a, found in duplicates.items() for b in found]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(position), len(position)))
    _, labels = connected_components(graph, directed=False)
    names = list(encodings)
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, set()).add(names[i])
    return [(None, g) for g in groups.values() if len(g) > 1], time.perf_counter() - started


def verification_only(seed: int = 6_000_000) -> dict:
    """Pairs checked by `verify.compare` alone, no index (dev photos only): close synthetic re-shots of every
    second dev-half holidays photo at three parallax amplitudes (dupes_sets.close_reshot), and the test set's
    extra edit kinds made on 120 dev Caltech photos without edited copies. Accepted share per row."""
    import io

    from PIL import Image

    from benchmarks.dupes_sets import HOLIDAYS, close_reshot, originals
    from lookalike.dupes import verify

    def features(image) -> verify.Features:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=90)
        return verify.features_of(np.asarray(Image.open(buffer).convert("RGB")))

    rows: dict[str, list[bool]] = {}
    holidays = [p for p in sorted(HOLIDAYS.glob("*.jpg")) if int(p.stem) // 100 < 1075][1::2]
    for n, path in enumerate(holidays):
        image = Image.open(path)
        for parallax in (0.15, 0.3, 0.5):
            shot = close_reshot(image, np.random.default_rng(seed + n), parallax)
            rows.setdefault(f"close re-shot, parallax {parallax} px", []).append(
                verify.compare(features(image), features(shot)).same)
    extra = [label for label in TEST_EDITS if label not in DEV_EDITS]
    for n, path in enumerate(originals("dev")[:SIZES["dev"][0]][1::3][:120]):
        image = Image.open(path).convert("RGB")
        original = features(image)
        for label in extra:
            edit, _ = TEST_EDITS[label]
            rows.setdefault(f"{label} (a test edit kind, on dev photos)", []).append(
                verify.compare(original, features(edit(image, np.random.default_rng(seed + n)))).same)
    return {label: {"pairs": len(found), "accepted": sum(found)} for label, found in rows.items()}


def feature_cost(folder: Path, count: int = 300) -> dict:
    """What a first run pays per file before any pair is checked: decoding and verification features
    (lookalike.dupes.cache.compute) of `count` files of the set, timed alone, on one thread per core as
    `lookalike dupes` computes them."""
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.dupes.cache import compute

    files = sorted(folder.glob("*.jpg"))[:count]
    load = os.getloadavg()[0]
    workers = len(os.sched_getaffinity(0))
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(compute, map(str, files)))
    return {"files": len(files), "seconds_per_file": (time.perf_counter() - started) / max(1, len(files)),
            "load": load, "threads": workers}


def timing_100k(real_index: Path, n: int = 100_000) -> dict:
    """The whole `lookalike dupes` on n synthetic vectors whose files do not exist (see the docstring):
    1. `lookalike index`'s last step (the ANN engine built and saved), timed apart;
    2. a first run with every pair check replaced by a stub that says "not the same" at no cost: candidate
       search, bookkeeping, clusters; it leaves a verdict for every candidate pair in the cache;
    3. the real command, `lookalike dupes INDEX --json`, in its own process, as a re-run finds it (every
       verdict cached): what a user waits for on a collection checked before."""
    from benchmarks.scale import calibrate_sigma, synthesise
    from lookalike import Index
    from lookalike.dupes import cache, verify
    from lookalike.dupes.find import find
    from lookalike.storage.sqlite import FileRecord, Store

    with Index.open(real_index) as idx:
        _, real = idx.vectors()
        spec = idx.spec
    rng = np.random.default_rng(0)
    sigma, target = calibrate_sigma(real, rng)
    result: dict = {"n": n, "sigma": sigma, "median_nn_cosine": target}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "synthetic.lookalike"
        store = Store.create(path, spec)
        written = 0
        for chunk in synthesise(real, n, rng, sigma, chunk=10_000):
            store.write([FileRecord(f"/nonexistent/{written + i:06d}.jpg", 1000, 0, f"{written + i:064x}", 300, 200,
                                    v) for i, v in enumerate(chunk)])
            written += len(chunk)
        store.close()
        with Index.open(path) as index:
            started = time.perf_counter()
            result["engine"] = index.prepare_search()
            result["prepare_seconds"], result["prepare_load"] = time.perf_counter() - started, os.getloadavg()[0]
        stub = verify.Features(*(np.zeros((1, 1), np.uint8),) * 2, *(np.empty((0, 2), np.float32),
                                np.empty((0, 32), np.uint8)) * 2)
        real_compute, real_compare = cache.compute, verify.compare
        cache.compute = lambda file: stub  # type: ignore[assignment]
        verify.compare = lambda a, b: verify.Evidence(False, "stub")  # type: ignore[assignment]
        try:
            with Index.open(path) as index:
                result["stub_load"] = os.getloadavg()[0]
                findings = find(index)
            result["stub_seconds"], result["candidate_pairs"] = findings.seconds, findings.candidates
        finally:
            cache.compute, verify.compare = real_compute, real_compare
        result["load"] = os.getloadavg()[0]
        answer, result["seconds"], result["peak_rss_mb"] = run_dupes(path)
        result["clusters"], result["pairs_checked"] = len(answer["clusters"]), answer["candidate_pairs_checked"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the sets and indexes here (reused when present)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--reuse-answers", action="store_true", help="score the answers an earlier run saved in "
                        "WORKDIR (SPLIT-answer.json, with their times) instead of running lookalike again")
    parser.add_argument("--timing", type=Path, help=argparse.SUPPRESS)  # one 100k timing, in its own process
    args = parser.parse_args()
    if args.timing:
        print(json.dumps(timing_100k(args.timing)))
        return
    holder = None if args.workdir else tempfile.TemporaryDirectory()
    workdir = args.workdir or Path(holder.name)
    workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for split, edits in (("dev", DEV_EDITS), ("test", TEST_EDITS)):
        index, truth = build(workdir, split)
        answer = answer_of(index, workdir / f"{split}-answer.json", args.reuse_answers)
        scored = score(workdir / split, truth, clusters_of_answer(answer), edits)
        results[split] = {"lookalike": {**scored, **answer["bench"],
                                        "candidates": answer.get("candidate_pairs", answer["candidate_pairs_checked"]),
                                        "checked": answer["candidate_pairs_checked"], "images": answer["scanned"]}}
        saved_phash = workdir / f"{split}-phash.json"  # the baseline's scores, kept like the answers
        if args.reuse_answers and saved_phash.is_file():
            results[split]["imagededup PHash"] = {"reused": True, **json.loads(saved_phash.read_text())}
        else:
            try:
                clusters, phash_seconds = phash_clusters(workdir / split)
                results[split]["imagededup PHash"] = {**score(workdir / split, truth, clusters, edits),
                                                      "seconds": phash_seconds, "commit": commit()}
                saved_phash.write_text(json.dumps(results[split]["imagededup PHash"]))
            except ImportError as exc:
                results[split]["imagededup PHash"] = {"error": str(exc)}
        print(split, json.dumps(results[split], default=str), flush=True)
    results["features"] = feature_cost(workdir / "test" / "edited")
    results["verification_only"] = verification_only()
    timing = None
    saved_timing = workdir / "timing-100k.json"
    if args.reuse_answers and saved_timing.is_file():
        timing = json.loads(saved_timing.read_text())
    elif not args.skip_timing:
        out = subprocess.run([sys.executable, "-m", "benchmarks.dupes", "--timing", str(workdir / "test.lookalike")],
                             check=True, capture_output=True, text=True).stdout
        timing = json.loads(out.strip().splitlines()[-1])
        timing["load"], timing["commit"] = os.getloadavg()[0], commit()
        saved_timing.write_text(json.dumps(timing))
        print("timing", json.dumps(timing), flush=True)
    write_section("dupes", render(results, timing))
    if holder is not None:
        holder.cleanup()


def render(results: dict, timing: dict | None) -> str:
    def pr(r: dict) -> str:
        return f"{r['precision']:.3f} / {r['recall']:.3f}"

    tools = ["lookalike", "imagededup PHash"]
    lines = []
    for split in ("test", "dev"):
        res = results[split]
        usable = [t for t in tools if "error" not in res[t]]
        lines.append(f"\n**{split} set** ({res['lookalike']['images']:,} images"
                     f"{', where the thresholds were chosen' if split == 'dev' else ', reported'}): "
                     "pair precision / recall\n")
        lines.append("| edit | " + " | ".join(usable) + " |")
        lines.append("|---" * (len(usable) + 1) + "|")
        for label in res["lookalike"]["per_edit"]:
            lines.append(f"| {label} | " + " | ".join(pr(res[t]["per_edit"][label]) for t in usable) + " |")
        lines.append("| **all edited copies** | " + " | ".join(
            f"**{res[t]['pair_precision']:.3f} / {res[t]['pair_recall']:.3f}**" for t in usable) + " |")
        kept = res["lookalike"]["original_kept"]
        lines.append("| unedited original kept | " + (f"{kept:.1%}" if kept is not None else "-")
                     + " | -" * (len(usable) - 1) + " |")
        hard_title = ("Caltech Motorbikes + airplanes + Faces_easy: flagged per 1,000" if split == "test" else
                      f"Caltech look-alike studio shots of {len(DEV_HARD_CLASSES)} other classes (dev only; "
                      "FEW_INLIERS chosen here): flagged per 1,000")
        for negatives, title in (("holidays", "holidays_dev half: images flagged"),
                                 ("reshots", "synthetic re-shots (dev only; MAX_LOCAL_SHIFT chosen here): flagged"),
                                 ("hard", hard_title)):
            if negatives not in res["lookalike"]:
                continue
            cells = []
            for t in usable:
                if negatives not in res[t]:  # a baseline score saved before this set existed
                    cells.append("not run")
                    continue
                n = res[t][negatives]
                if negatives == "hard":
                    cells.append(f"{1000 * n['flagged_wrongly'] / n['images']:.1f} ({n['flagged_wrongly']} of "
                                 f"{n['images']:,}; {n['flagged_with_their_faces_twin']} more flagged with their "
                                 "Faces twin, true duplicates)")
                else:
                    cells.append(f"{n['flagged_wrongly'] / n['images']:.1%} ({n['flagged_wrongly']} of "
                                 f"{n['images']:,}; {n['identical_in_dataset']} byte-identical pairs in the set "
                                 "not counted)")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        bench = res["lookalike"]
        checked = (f" ({bench['checked']:,} checked, the others joined by proven pairs)"
                   if bench.get("checked", bench["candidates"]) != bench["candidates"] else "")
        lines.append(f"| time, whole command: first run (nothing cached) / again (commit {bench['commit']}, load "
                     f"{bench['load']:.0f}) | {bench['cold_seconds']:.0f} s / {bench['warm_seconds']:.0f} s, "
                     f"{bench['candidates']:,} candidate pairs{checked}, peak RSS {bench['peak_rss_mb']:,.0f} MB | "
                     + " | ".join(f"{res[t]['seconds']:.0f} s" for t in usable[1:]) + " |")
        for t in tools:
            if "error" in res[t]:
                lines.append(f"\n{t} did not run: {res[t]['error']}")
    dev_hard = results["dev"]["lookalike"].get("hard", {}).get("images", 0)
    wrong = judged(results["test"]["lookalike"].get("hard", {}).get("flagged_groups", []))
    dev_wrong = judged(results["dev"]["lookalike"].get("hard", {}).get("flagged_groups", []))
    hol = results["test"]["lookalike"].get("holidays", {}).get("flagged_groups", [])
    timing_text = "not measured in this run"
    first_run = 0.0
    if timing:
        test = results["test"]["lookalike"]
        files = results.get("features", {})
        per_file = files.get("seconds_per_file", 0.0)
        # The cold run also computed the features of every file in a pair: taken out, at the rate just timed.
        per_pair = max(0.0, test["cold_seconds"] - test.get("feature_rows", 0) * per_file) / max(1, test["candidates"])
        first_run = timing["n"] * per_file + timing["candidate_pairs"] * per_pair
        timing_text = (f"{timing['n']:,} synthetic vectors (sigma {timing['sigma']:.3f}: median nearest-neighbour "
                       f"cosine {timing['median_nn_cosine']:.3f}, as the test index's, whose many edited copies "
                       "make neighbours close), no files. `lookalike index`'s last step built the "
                       f"{timing['engine']} engine in {timing['prepare_seconds']:.0f} s (load "
                       f"{timing['prepare_load']:.1f}); then **the whole `lookalike dupes INDEX --json`, as a re-run "
                       f"finds it (a verdict cached for each of its {timing['candidate_pairs']:,} candidate pairs): "
                       f"{timing['seconds']:.0f} s**, peak RSS {timing['peak_rss_mb']:,.0f} MB (load "
                       f"{timing['load']:.1f}). The first run before it, with every pair check stubbed out "
                       "to a refusal, so that none is skipped (candidate search, bookkeeping, clusters, keep rule): "
                       f"{timing['stub_seconds']:.0f} s (load "
                       f"{timing['stub_load']:.1f}). A first run on real files must also compute every file's "
                       f"features and check the candidate pairs that proven pairs do not already join: on the test set "
                       f"{1000 * per_file:.1f} ms per file (decoding "
                       f"and ORB, {files.get('files', 0)} files timed alone on {files.get('threads', 1)} threads, "
                       f"load {files.get('load', 0):.1f}) and {1000 * per_pair:.1f} ms per candidate pair (the cold "
                       f"run's {test['cold_seconds']:.0f} s less its {test.get('feature_rows', 0):,} files' features "
                       f"at that rate, over its {test['candidates']:,} candidate pairs, "
                       f"{test.get('checked', test['candidates']):,} of them checked; the estimate assumes as large a "
                       f"share would be skipped), so {timing['n']:,} files and "
                       f"{timing['candidate_pairs']:,} pairs would take "
                       f"about {first_run / 3600:,.1f} h on these two cores: an estimate, not a measurement.")
    test = results["test"]["lookalike"]
    missed = []
    if "holidays" in test and test["holidays"]["flagged_wrongly"] > 0.01 * test["holidays"]["images"]:
        h = test["holidays"]
        missed.append(f"holidays {h['flagged_wrongly'] / h['images']:.1%} flagged ({h['flagged_wrongly']} of "
                      f"{h['images']}) against ≤ 1 %")
    if "hard" in test and test["hard"]["flagged_wrongly"] > 0.03 * test["hard"]["images"]:
        missed.append(f"Caltech subset {test['hard']['flagged_wrongly'] / test['hard']['images']:.1%} flagged")
    if test["pair_precision"] < 0.98 or test["pair_recall"] < 0.95:
        missed.append(f"pair precision / recall {test['pair_precision']:.3f} / {test['pair_recall']:.3f}")
    low = [f"{label} {r['recall']:.3f}" for label, r in test["per_edit"].items() if r["recall"] < 0.95]
    if low:
        missed.append("recall under 0.95 for one kind of edit alone (the target is over all edits): " + ", ".join(low))
    if timing and first_run > 60:
        missed.append(f"100,000 images in < 60 s only as a re-run ({timing['seconds']:.0f} s); a first run, which "
                      f"must check its pairs, about {first_run / 3600:,.1f} h (an estimate, below)")
    missed_text = ("**Missed: " + "; ".join(missed) + ".**") if missed else "Every target met."
    reused = [r for r in (results["dev"].get("imagededup PHash", {}), results["test"].get("imagededup PHash", {}))
              if r.get("reused")]
    reused_text = ""
    if reused:  # --reuse-answers: the baseline's scores come from the run that saved them
        made = sorted({r.get("commit", "a commit it did not record") for r in reused})
        reused_text = (" (imagededup PHash's scores and times are those saved by an earlier run of this benchmark on "
                       f"the same sets, at {' and '.join(made)}; lookalike's answers are this run's where their saved "
                       "files were deleted first: each row says its commit)")
    only = results.get("verification_only", {})
    only_text = "; ".join(f"{label}: {r['accepted']} of {r['pairs']} accepted" for label, r in only.items())
    return f"""## Duplicates (issue 13)

{missed_text}

`{command()}` at commit {commit()}{reused_text}, on
{machine(("onnxruntime", "numpy", "opencv-python-headless", "scipy", "faiss-cpu", "imagededup"))};
load average during the run {os.getloadavg()[0]:.1f} (other work shared the 2 cores: times are pessimistic).

A duplicate is the same photograph (same bytes, same pixels, or an edit the pixels prove); another shot is
not. Edited copies of Caltech101 photos (benchmarks/dupes_sets.py): the dev set chose the verification
thresholds (src/lookalike/dupes/verify.py); the test set has other photos, other seeds and nine more edits.
The dev set's "banner" edit (an opaque band across the top) was added to choose the tolerance for covered
borders after the first test set had shown the test's caption bar failing: that test edit was seen, so the
test set was then made again from other photos with other seeds (benchmarks/dupes_sets.py); the holidays
half (groups 1075-1149) is the same as before and its flagged pairs were looked at in the earlier sessions
(their recorded evidence again in this one, before the re-shot check was made). That check (the local shifts
of aligned patches, src/lookalike/dupes/verify.py) was chosen on the dev set only, with 205 synthetic
re-shots added to it (benchmarks/dupes_sets.reshot: none of the dev holidays re-shots passed the earlier checks,
so they could not choose it; a holidays image flagged with its own synthetic re-shot counts as flagged in the
dev set's holidays row). Precision counts every found pair that involves an edited-set image; a pair of two
originals is wrong.

Changed since the run before (issue 13, third session), each chosen on the dev set: (1) few matched points must
come with more agreeing cells (under FEW_INLIERS 30, MIN_CELLS_FEW_INLIERS 0.75 instead of 0.65): the dev set
now holds {dev_hard:,} look-alike studio shots of 16 other Caltech101 classes, but none of its pairs fell in
that corner, so the threshold is the highest that keeps every dev edited pair with under 30 points (their
lowest: 0.766); the rule's form came from the two Ducati pairs the test set had flagged (seen there). (2) The
local-shift check runs on every pair that passes the rest (it ran only under 0.8 of cells agreeing in fine
detail) and also refuses a pair whose patch at the 90th percentile moved more than MAX_PART_SHIFT 0.9 px (a
part of the scene moved: people, water). On the dev set neither refuses an original-edit pair; they refuse
17 pairs of two edits of one photo (those still meet through the original) and one pair of the look-alike
shots that is one photograph with its watch's dial display changed (watch 0122/0126); one of the two synthetic
re-shots that passed before is refused. (3) Two files whose EXIF capture times differ are two shots: no effect on these
sets (no file of Caltech101 or holidays_dev sampled, 1 in 7, carries DateTimeOriginal). A fine-texture
(high-pass) agreement measure was tried on the dev set and not used: the closest dev re-shots agree in it as
well as JPEG-30 copies do (per-cell median 0.80-0.88 against edits' 1st percentile 0.77).

Pairs checked by the verification alone (no index; dev photos only; `verification_only` in
benchmarks/dupes.py): {only_text or 'not measured in this run'}. With the checks as they were before (commit
882abea, same function, same seeds, run once in this session): at 0.5 px 81 of 104 close re-shots accepted,
cropped 20 % 119 and mirrored, resized 70 % 115 of 120, every other row the same: running the shift check on
every pair costs these edits 2 of 1,080 and refuses 18 more close re-shots. A re-shot from a tripod with under
~0.3 px of parallax cannot be told from an edit by these checks.
{chr(10).join(lines)}

Targets (issue 13): holidays ≤ 1 % flagged, Caltech subset ≤ 3 % flagged, test pair precision ≥ 0.98 and
recall ≥ 0.95, original kept ≥ 95 %, 100k images < 60 s. {missed_text}

Look-alike studio shots flagged, by group, with what looking at each group said: test set: {wrong}. Dev set:
{dev_wrong}. holidays (test half): {'; '.join(' = '.join(g) for g in hol) or 'none'}.

100,000 images: {timing_text}

fastdup was not run: not installed here (non-commercial licence, telemetry on by default; see FACTS.md).
"""


if __name__ == "__main__":
    main()
