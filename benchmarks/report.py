"""Writing benchmark results into docs/BENCHMARKS.md: each script owns one section, replaced on every run.

A section sits between `<!-- NAME -->` and `<!-- /NAME -->`; the rest of the page is left as it is, so
figures from different scripts (and days) live side by side, each with the machine and the command.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "BENCHMARKS.md"
DATASETS = ROOT.parent / "shared" / "datasets"
CALTECH = DATASETS / "caltech101"


def machine(packages: tuple[str, ...] = ("onnxruntime", "numpy", "pillow")) -> str:
    """One line: CPU, cores, Python and the versions that matter for the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{name} {metadata.version(name)}")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, " + ", ".join(versions)


def command() -> str:
    module = Path(sys.argv[0]).resolve().relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
    return "python -m " + " ".join([module, *sys.argv[1:]])


def commit() -> str:
    """HEAD, and when the tree differs from it, which files did: the figures were measured on code that no
    commit holds (the page and its plots, which the benchmarks write, do not count)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = [line[3:] for line in status.splitlines() if not line[3:].startswith(("docs/BENCHMARKS.md", "docs/img/"))]
    if not changed:
        return head
    listed = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"{head} with uncommitted changes ({listed})"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of docs/BENCHMARKS.md with `body`."""
    block = f"<!-- {name} -->\n{body.strip()}\n<!-- /{name} -->"
    text = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote section {name!r} of {PAGE.relative_to(ROOT)}")
