"""2-D / 3-D maps of embeddings (UMAP or PCA) and cosine nearest neighbours.

A projection is fitted once on the catalog; new products are placed with `.transform` so the map
never moves when someone uploads a product. Rows are L2-normalized first, so euclidean distances
in the map follow the cosine similarities the model is trained with.

UMAP is fitted on at most `UMAP_SAMPLE` rows (a seeded sample): its cost grows with every row, and a
million-product map fitted whole would take hours. The other rows are placed like uploads are, at the
weighted mean of their nearest sampled rows, so the whole catalog lands on the same fixed map.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ScaleError
from ..eval.metrics import l2n

METHODS = ("umap", "pca")
UMAP_SAMPLE = 20_000  # rows UMAP is fitted on; the rest are placed on its map
PLACE_BLOCK = 8192  # rows placed at a time: memory stays O(block x sample)


@dataclass
class Projection:
    method: str  # the method actually used ("pca" when UMAP had too few points)
    dim: int
    coords: np.ndarray  # (N, dim) float32
    model: Any
    fitted: np.ndarray | None = None  # rows the map was fitted on (sorted), None when all of them

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place new rows (M, D) on the fitted map (no refit)."""
        X = l2n(np.atleast_2d(np.asarray(X, dtype=np.float32)))
        return np.asarray(self.model.transform(X), dtype=np.float32)


def fit_projection(X: np.ndarray, method: str = "umap", dim: int = 2, seed: int = 0,
                   sample: int = UMAP_SAMPLE) -> Projection:
    """Fit a `dim`-D map of X (N, D). PCA is instant; UMAP needs at least 5 rows (fewer: PCA is used) and is
    fitted on `sample` rows at most (seeded by `seed`), the others placed on its map."""
    if method not in METHODS:
        raise ScaleError(f"projection method {method!r} unknown. Fix: use one of {METHODS}.")
    if dim not in (2, 3):
        raise ScaleError(f"projection dim must be 2 or 3, got {dim}.")
    if method == "umap" and int(sample) < 5:
        raise ScaleError(f"UMAP sample of {sample} rows: it needs at least 5. Fix: pass sample >= 5 "
                         f"(default {UMAP_SAMPLE}).")
    n = len(X) if hasattr(X, "__len__") else 0
    if method == "umap" and n > sample and getattr(X, "ndim", 0) == 2:
        return _fit_umap_sample(X, dim, seed, int(sample))
    X = l2n(np.asarray(X, dtype=np.float32))
    if X.ndim != 2 or len(X) < 2:
        raise ScaleError(f"a map needs at least 2 products, got {len(X)}. Fix: use a larger catalog.")
    if method == "umap" and len(X) >= 5:
        import umap  # imported here: numba start-up is paid only by those who ask for UMAP

        k = max(2, min(15, len(X) - 2))
        idx, dist = exact_knn(X, X, k)
        # Exact neighbours from one matrix product replace UMAP's NN-descent: at catalog sizes (thousands)
        # they are instant and spare its numba compilation, which was most of a first map's time.
        # 200 epochs (UMAP's default is 500 below 10k rows) and a PCA start: the same clusters, faster.
        reducer = umap.UMAP(n_components=dim, n_neighbors=k, min_dist=0.1, metric="euclidean", random_state=seed,
                            n_epochs=200, init="pca" if len(X) > dim + 2 else "random",
                            precomputed_knn=(idx, dist, None))
        with warnings.catch_warnings():  # it warns that its own transform is off: _KnnPlacer places new rows
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            warnings.filterwarnings("ignore", message="n_jobs value")
            coords = np.asarray(reducer.fit_transform(X), dtype=np.float32)
        return Projection("umap", dim, coords, _KnnPlacer(X, coords, k))
    return _fit_pca(X, dim, seed)


def _fit_umap_sample(X: np.ndarray, dim: int, seed: int, sample: int) -> Projection:
    """UMAP on `sample` seeded rows of X (which may be a memmap: only the sample and one block of the
    rest are ever in memory as float32), then the other rows placed block by block."""
    rows = np.sort(np.random.default_rng(seed).choice(len(X), size=sample, replace=False))
    fit = fit_projection(np.asarray(X[rows]), "umap", dim, seed, sample=sample)
    coords = np.empty((len(X), dim), dtype=np.float32)
    coords[rows] = fit.coords
    rest = np.ones(len(X), dtype=bool)
    rest[rows] = False
    rest_rows = np.flatnonzero(rest)
    for s in range(0, len(rest_rows), PLACE_BLOCK):
        block = rest_rows[s: s + PLACE_BLOCK]
        coords[block] = fit.transform(X[block])
    return Projection("umap", dim, coords, fit.model, fitted=rows)


def _fit_pca(X: np.ndarray, dim: int, seed: int) -> Projection:
    from sklearn.decomposition import PCA

    k = min(dim, X.shape[1], len(X))
    pca = PCA(n_components=k, random_state=seed).fit(X)
    model = _PaddedPCA(pca, dim)
    return Projection("pca", dim, model.transform(X), model)


def exact_knn(Q: np.ndarray, X: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of X (N, D) for each row of Q (M, D) by euclidean distance, nearest first:
    (M, k) int64 indices and float32 distances. Rows go in blocks so memory stays O(block * N)."""
    k = min(k, len(X))
    xx = (X * X).sum(1)
    out_i = np.empty((len(Q), k), dtype=np.int64)
    out_d = np.empty((len(Q), k), dtype=np.float32)
    for s in range(0, len(Q), block):
        q = Q[s: s + block]
        d2 = np.maximum((q * q).sum(1)[:, None] + xx[None] - 2.0 * (q @ X.T), 0.0)
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < len(X) else np.tile(np.arange(len(X)), (len(q), 1))
        pd = np.take_along_axis(d2, part, 1)
        order = np.argsort(pd, axis=1, kind="stable")
        out_i[s: s + block] = np.take_along_axis(part, order, 1)
        out_d[s: s + block] = np.sqrt(np.take_along_axis(pd, order, 1))
    return out_i, out_d


class _KnnPlacer:
    """Places new rows on a fitted map at the weighted mean of their k nearest catalog rows' positions,
    closer rows weighing more: UMAP's own starting point for `transform`, without its refinement epochs,
    so an upload lands among its neighbours at once and the map itself never moves."""

    def __init__(self, X: np.ndarray, coords: np.ndarray, k: int) -> None:
        self.X, self.coords, self.k = X, coords, k

    def transform(self, X: np.ndarray) -> np.ndarray:
        idx, d = exact_knn(X, self.X, self.k)
        rho = d[:, :1]
        scale = np.maximum(d.mean(1, keepdims=True) - rho, 1e-6)
        w = np.exp(-(d - rho) / scale)
        return ((w[..., None] * self.coords[idx]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)


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
