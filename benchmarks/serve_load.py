"""`lookalike serve` under load: real photos posted to /search on 127.0.0.1, one at a time and then many at
once, against an index of Caltech101 (9,145 images, the default model).

    python -m benchmarks.serve_load [--clients 200] [--requests 600] [--index PATH]

Bounded: a fixed number of requests, and the whole run stops after --limit seconds whatever happens.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.report import CALTECH, command, commit, machine, write_section


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(index: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", "--index", str(index), "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


async def post_all(url: str, photos: list[bytes], clients: int, limit: float) -> tuple[list[float], int, float]:
    """Post every photo, at most `clients` in flight; returns latencies (ms), errors, wall seconds."""
    import httpx

    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=limit, limits=limits) as client:
        async def one(data: bytes) -> None:
            nonlocal errors
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post("/search", params={"k": 10},
                                                 files={"file": ("q.jpg", data, "image/jpeg")})
                    if response.status_code != 200 or len(response.json()["results"]) != 10:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(1000 * (time.perf_counter() - started))

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(p) for p in photos)), timeout=limit)
        return latencies, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds, for the whole concurrent run")
    parser.add_argument("--index", type=Path, help="an index of caltech101 to reuse")
    args = parser.parse_args()
    all_photos = sorted(CALTECH.rglob("*.jpg"))
    photos = [p.read_bytes() for p in all_photos[3::max(1, len(all_photos) // args.requests)][: args.requests]]
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "caltech.lookalike"
            subprocess.run([sys.executable, "-m", "lookalike", "index", str(CALTECH), "--index", str(index), "-q"],
                           check=True)
        port = free_port()
        server = start(index, port)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(post_all(url, photos[:5], 1, 60))  # warm-up
            sequential, seq_errors, _ = asyncio.run(post_all(url, photos[:100], 1, args.limit))
            concurrent, errors, wall = asyncio.run(post_all(url, photos, args.clients, args.limit))
        finally:
            server.terminate()
            server.wait(timeout=10)
    seq_p50, seq_p99 = statistics.median(sequential), float(np.percentile(sequential, 99))
    p50, p99 = statistics.median(concurrent), float(np.percentile(concurrent, 99))
    one = (f"| one at a time | {len(sequential)} | 1 | {len(sequential) / (sum(sequential) / 1000):.0f} /s | "
           f"**{seq_p50:.1f} ms** | {seq_p99:.1f} ms | {seq_errors} |")
    many = (f"| concurrent | {len(concurrent)} | {args.clients} | **{len(concurrent) / wall:.0f} /s** | {p50:.0f} ms "
            f"| {p99:.0f} ms | **{errors}** |")
    body = f"""## Serving under load (issue 7)

`{command()}` at commit {commit()}, on {machine(("onnxruntime", "fastapi", "uvicorn"))}.
One `lookalike serve` process (uvicorn, one worker) with an index of caltech101 (9,145 images,
efficientnet-lite0 int8, exact search); clients on 127.0.0.1 post real Caltech101 photos to `/search?k=10`.

| run | requests | in flight | throughput | p50 | p99 | errors |
|---|---|---|---|---|---|---|
{one}
{many}

Targets: p50 ≤ 20 ms for one upload at 9k images; zero errors under 200 concurrent requests. Under
concurrency the latency is queueing: two cores embed about {len(concurrent) / wall:.0f} uploads a second, so
200 requests in flight wait their turn; none is dropped.
"""
    print(body)
    write_section("serve-load", body)


if __name__ == "__main__":
    main()
