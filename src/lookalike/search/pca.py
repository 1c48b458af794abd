"""PCA: fewer dimensions, faster search, often no worse results (the reference pipeline used 150 of 2048).

A `Projection` is fitted once on a collection's vectors and applied the same way to every query. Its output
is L2-normalised again, so the cosine similarity still means what it means everywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import BadInput, require


class Projection:
    """mean float32 [d], components float32 [dims, d]; with whitening, each axis divided by its spread."""

    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: np.ndarray | None = None):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.scale = None if scale is None else np.asarray(scale, np.float32)

    @property
    def dims(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, vectors: np.ndarray, dims: int, *, whiten: bool = False, seed: int = 0) -> Projection:
        """Fit on float32 [n, d]; dims may not exceed min(n, d)."""
        PCA = require("sklearn.decomposition", "eval", "PCA").PCA
        n, d = vectors.shape
        if not 1 <= dims <= min(n, d):

            raise BadInput(f"PCA to {dims} dims needs at least {dims} images of at least {dims} dims "
                                 f"(have {n} of {d})")
        # covariance_eigh: one d x d covariance and its eigendecomposition, exact and fast when n >> d (100k x
        # 1280: seconds, where sklearn's "auto" picks a randomized SVD that took 1-2 minutes on two cores)
        solver = "covariance_eigh" if n >= 2 * d else "auto"
        pca = PCA(dims, svd_solver=solver, random_state=seed).fit(vectors)
        scale = 1.0 / np.sqrt(np.maximum(pca.explained_variance_, 1e-12)) if whiten else None
        return cls(pca.mean_, pca.components_, scale)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """float32 [n, d] -> the raw PCA coordinates float32 [n, dims] (not normalised)."""
        out = (np.atleast_2d(vectors).astype(np.float32, copy=False) - self.mean) @ self.components.T
        return out * self.scale if self.scale is not None else out

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """float32 [n, d] -> unit vectors float32 [n, dims], ready for cosine search."""
        out = self.project(vectors)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {"mean": self.mean, "components": self.components}
        if self.scale is not None:
            arrays["scale"] = self.scale
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Projection:
        with np.load(path) as data:
            return cls(data["mean"], data["components"], data.get("scale"))
