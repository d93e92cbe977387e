"""2-D / 3-D maps of embeddings (UMAP or PCA) and cosine nearest neighbours.

A projection is fitted once on the catalog; new products are placed with `.transform` so the map
never moves when someone uploads a product. Rows are L2-normalized first, so euclidean distances
in the map follow the cosine similarities the model is trained with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ScaleError
from .metrics import l2n

METHODS = ("umap", "pca")


@dataclass
class Projection:
    method: str  # the method actually used ("pca" when UMAP had too few points)
    dim: int
    coords: np.ndarray  # (N, dim) float32
    model: Any

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place new rows (M, D) on the fitted map (no refit)."""
        X = l2n(np.atleast_2d(np.asarray(X, dtype=np.float32)))
        return np.asarray(self.model.transform(X), dtype=np.float32)


def fit_projection(X: np.ndarray, method: str = "umap", dim: int = 2, seed: int = 0) -> Projection:
    """Fit a `dim`-D map of X (N, D). PCA is instant; UMAP needs at least 5 rows (fewer: PCA is used)."""
    if method not in METHODS:
        raise ScaleError(f"projection method {method!r} unknown. Fix: use one of {METHODS}.")
    if dim not in (2, 3):
        raise ScaleError(f"projection dim must be 2 or 3, got {dim}.")
    X = l2n(np.asarray(X, dtype=np.float32))
    if X.ndim != 2 or len(X) < 2:
        raise ScaleError(f"a map needs at least 2 products, got {len(X)}. Fix: use a larger catalog.")
    if method == "umap" and len(X) >= 5:
        import umap  # imported here: numba start-up is paid only by those who ask for UMAP

        # 200 epochs (UMAP's default is 500 below 10k rows) and a PCA start: the same clusters in less
        # than half the time; numba compiles on the first fit of a process and caches to disk
        reducer = umap.UMAP(n_components=dim, n_neighbors=max(2, min(15, len(X) - 2)), min_dist=0.1,
                            metric="euclidean", random_state=seed, n_epochs=200,
                            init="pca" if len(X) > dim + 2 else "random")
        coords = reducer.fit_transform(X)
        return Projection("umap", dim, np.asarray(coords, dtype=np.float32), reducer)
    from sklearn.decomposition import PCA

    k = min(dim, X.shape[1], len(X))
    pca = PCA(n_components=k, random_state=seed).fit(X)
    model = _PaddedPCA(pca, dim)
    return Projection("pca", dim, model.transform(X), model)


class _PaddedPCA:
    """PCA whose output always has `dim` columns (zeros when the data has fewer directions)."""

    def __init__(self, pca, dim: int) -> None:
        self.pca, self.dim = pca, dim

    def transform(self, X: np.ndarray) -> np.ndarray:
        Y = self.pca.transform(X)
        if Y.shape[1] < self.dim:
            Y = np.pad(Y, ((0, 0), (0, self.dim - Y.shape[1])))
        return Y.astype(np.float32)


def nearest(query: np.ndarray, gallery: np.ndarray, k: int = 10,
            exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows by cosine similarity to `query` (D,). `exclude` (N,) bool drops rows (the
    product itself). Returns (indices, scores), best first; rows of zeros score 0."""
    q = l2n(np.asarray(query, dtype=np.float32).reshape(1, -1))[0]
    scores = l2n(np.asarray(gallery, dtype=np.float32)) @ q
    if exclude is not None:
        scores = np.where(exclude, -np.inf, scores)
    k = int(min(k, np.isfinite(scores).sum()))
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]
