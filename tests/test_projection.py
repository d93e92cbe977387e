"""core.explore.projection: PCA / UMAP maps that place new rows without refitting, and nearest neighbours."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import ScaleError
from core.explore.projection import exact_knn, fit_projection, nearest


def _blobs(n=60, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, d)) * 4
    y = np.arange(n) % 3
    return centers[y] + rng.standard_normal((n, d)), y


def test_pca_is_fit_once_and_transform_is_consistent():
    X, _ = _blobs()
    p = fit_projection(X, "pca", dim=3)
    assert p.method == "pca" and p.coords.shape == (60, 3)
    np.testing.assert_allclose(p.transform(X[:5]), p.coords[:5], atol=1e-4)
    before = p.coords.copy()
    p.transform(np.random.default_rng(1).standard_normal((4, 16)))
    assert np.array_equal(before, p.coords)  # new rows never move the map


def test_umap_places_new_points_near_their_cluster():
    X, y = _blobs(n=45)
    p = fit_projection(X, "umap", dim=2, seed=0)
    assert p.method == "umap" and p.coords.shape == (45, 2)
    new = p.transform(X[:3] + 0.01)
    for i in range(3):
        d = np.linalg.norm(p.coords - new[i], axis=1)
        assert y[np.argsort(d)[:5]].tolist().count(y[i]) >= 4


def test_small_inputs_and_errors():
    X, _ = _blobs(n=4)
    assert fit_projection(X, "umap").method == "pca"  # too few rows for UMAP
    with pytest.raises(ScaleError):
        fit_projection(X, "tsne")
    with pytest.raises(ScaleError):
        fit_projection(X[:1], "pca")


def test_nearest_scores_and_exclusion():
    G = np.array([[1, 0], [0.9, 0.1], [0, 1], [0, 0]], dtype=np.float32)
    idx, sc = nearest(np.array([1.0, 0.0]), G, k=3, exclude=np.array([True, False, False, False]))
    assert idx.tolist() == [1, 2, 3]
    assert sc[0] == pytest.approx(0.9 / np.hypot(0.9, 0.1)) and sc[-1] == 0.0


def test_exact_knn_matches_brute_force_across_blocks():
    rng = np.random.default_rng(3)
    X, Q = rng.standard_normal((50, 8)), rng.standard_normal((7, 8))
    idx, dist = exact_knn(Q, X, k=5, block=3)  # blocks smaller than Q: the seams are exercised
    full = np.linalg.norm(Q[:, None] - X[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :5])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], rtol=1e-4, atol=1e-5)
    i_self, d_self = exact_knn(X, X, k=1)
    assert (i_self[:, 0] == np.arange(50)).all() and np.allclose(d_self, 0, atol=1e-3)


def test_umap_fits_a_sample_and_places_the_other_rows_on_its_map():
    X, y = _blobs(n=90)
    p = fit_projection(X, "umap", dim=2, seed=0, sample=30)
    assert p.method == "umap" and p.coords.shape == (90, 2) and np.isfinite(p.coords).all()
    assert len(p.fitted) == 30 and (np.diff(p.fitted) > 0).all()
    # the sampled rows carry exactly the map UMAP fits on them alone (seeded)
    alone = fit_projection(X[p.fitted], "umap", dim=2, seed=0)
    np.testing.assert_allclose(p.coords[p.fitted], alone.coords, atol=1e-5)
    # the other rows are placed like uploads, among the sampled rows of their own cluster
    rest = np.setdiff1d(np.arange(90), p.fitted)
    np.testing.assert_allclose(p.coords[rest], p.transform(X[rest]), atol=1e-5)
    fitted_xy, fitted_y = p.coords[p.fitted], y[p.fitted]
    for i in rest:
        near = np.argsort(np.linalg.norm(fitted_xy - p.coords[i], axis=1))[:3]
        assert (fitted_y[near] == y[i]).sum() >= 2
    assert fit_projection(X, "umap", sample=90).fitted is None  # under the cap: fitted on all rows
    with pytest.raises(ScaleError, match="sample >= 5"):
        fit_projection(X, "umap", sample=3)
