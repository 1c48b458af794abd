"""Fetch ONNX models hosted on the Hugging Face Hub, or find them in the local Hub cache.

The local cache is always tried first, without touching the network, so a machine that has the file
(downloaded earlier, or copied in with its `models--owner--name/snapshots/...` layout) works offline.
Only then, and only if HF_HUB_OFFLINE is not set, is the Hub asked. Any failure there becomes one line
that says how to get the file onto the machine.
"""

from __future__ import annotations

from pathlib import Path

from lookalike.errors import ModelUnavailable
from lookalike.models.registry import ModelSpec


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ModelUnavailable("Hub models need huggingface_hub: pip install 'lookalike[hub]'") from None
    return huggingface_hub


def cached_hub_file(spec: ModelSpec) -> Path | None:
    """The model's file in the local Hub cache, or None; never touches the network."""
    hub = _hub()
    try:
        path = hub.hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, local_files_only=True)
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
    if hub.constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"{spec.name} ({where}) is not in the local Hub cache and HF_HUB_OFFLINE is set: {advice}"
        )
    try:
        return Path(hub.hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(
            f"{spec.name} ({where}) could not be downloaded from the Hugging Face Hub ({reason[:120]}): {advice}"
        ) from None
