"""End-to-end indexing speed of `lookalike index` on Caltech101, beside the model-only ceiling, in one run.

    python -m benchmarks.index_speed [--images DIR] [--model efficientnet-lite0]

End to end: a fresh index, the real command in a subprocess (discovery, reading, hashing, decoding,
inference, SQLite writes). Model only: the same model on batches of already prepared pixels, so the gap
between the two is what the pipeline costs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import CALTECH, command, commit, machine, write_section
from lookalike import images
from lookalike.models.embedder import Embedder


def end_to_end(photos: Path, model: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "lookalike", "index", str(photos), "--index",
                                 f"{tmp}/bench.lookalike", "--model", model, "-q"],
                                capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    indexed, failed = map(int, re.search(r"(\d+) indexed, .* (\d+) failed", result.stdout).groups())
    return indexed + failed, seconds


def model_only(photos: Path, model: str, batch_size: int = 32, batches: int = 20) -> float:
    embedder = Embedder.load(model)
    size = embedder.spec.input_size
    paths = sorted(photos.rglob("*.jpg"))[:: 97][:batch_size]
    inputs = embedder.inputs(np.stack([embedder.prepare(images.load(p, draft=(size, size)).image) for p in paths]))
    embedder.run(inputs)  # warm-up
    started = time.perf_counter()
    for _ in range(batches):
        embedder.run(inputs)
    return batches * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=CALTECH)
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()
    Embedder.load(args.model)  # export once, outside the timing
    files, seconds = end_to_end(args.images, args.model)
    ceiling = model_only(args.images, args.model)
    rate = files / seconds
    what = f"`lookalike index` end to end, {files:,} files of {args.images.name}, {args.model} fp32"
    body = f"""## Indexing speed (issue 2)

`{command()}` at commit {commit()}, on {machine()}.

| what | images/s | |
|---|---|---|
| {what} | **{rate:.0f}** | {seconds:.1f} s wall, including start-up |
| model only, batches of 32 prepared images | {ceiling:.0f} | the ceiling |

End to end reaches {rate / ceiling:.0%} of the model-only ceiling. Target: ≥ 150 images/s end to end.
The reference pipeline (Keras ResNet-50) took 16.6 min for 8,677 images (8.7 images/s).
"""
    print(body)
    write_section("index-speed", body)


if __name__ == "__main__":
    main()
