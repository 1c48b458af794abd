"""Fetch ONNX models hosted on the Hugging Face Hub, or find them in the local Hub cache.

The local cache is always tried first, without touching the network, so a machine that has the file
(downloaded earlier, or copied in with its `models--owner--name/snapshots/...` layout) works offline.
Only then, and only if HF_HUB_OFFLINE is not set, is the Hub asked. Any failure there becomes one line
that says how to get the file onto the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from lookalike.errors import ModelUnavailable, require
from lookalike.models.registry import ModelSpec


def _hub():
    return require("huggingface_hub", "hub", "Hub models")


def _cache_dir() -> str | None:
    # Read at call time: huggingface_hub reads HF_HUB_CACHE once, when it is first imported.
    return os.environ.get("HF_HUB_CACHE") or None


def _offline(hub) -> bool:
    return hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def cached_hub_file(spec: ModelSpec) -> Path | None:
    """The model's file in the local Hub cache, or None; never touches the network."""
    hub = _hub()
    try:
        path = hub.hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, cache_dir=_cache_dir(),
                                   local_files_only=True)
    except Exception:  # every flavour of "not in the cache" (the exception names differ between versions)
        return None
    return Path(path)


def fetch_hub_file(spec: ModelSpec) -> Path:
    """The model's file: from the local cache, else downloaded into it."""
    cached = cached_hub_file(spec)
    if cached is not None:
        return cached
    hub = _hub()
    where = f"{spec.repo_id}/{spec.filename}"
    advice = (
        f"download it on a connected machine with `lookalike models --fetch {spec.name}` and copy the Hub cache "
        "(~/.cache/huggingface/hub) here, or point HF_HUB_CACHE at a copy"
    )
    if _offline(hub):
        raise ModelUnavailable(
            f"{spec.name} ({where}) is not in the local Hub cache and HF_HUB_OFFLINE is set: {advice}"
        )
    try:
        return Path(hub.hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, cache_dir=_cache_dir()))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(
            f"{spec.name} ({where}) could not be downloaded from the Hugging Face Hub ({reason[:120]}): {advice}"
        ) from None
