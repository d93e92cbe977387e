"""Fusion weights: how much each modality counts in the fused product embedding.

fused = sum over present modalities m of w_m * (l2n(pooled_m) - centre_m). With equal weights a weak
modality (a table feature that barely varies, say) drags the sum below its best parts; the weights are
fitted by coordinate ascent on category-retrieval mAP@10 (toolkit-exact) over the `dev` split, never
on `val`. Weights stay positive (every present modality still counts) and the text weight is 1.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..eval.metrics import l2n, retrieval_scores
from ..modalities import MODALITIES

GRID: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)


def weighted_sum(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None,
                 weights: Sequence[float]) -> np.ndarray:
    """(N, H) fused rows for the given per-modality weights (modality order of MODALITIES)."""
    n, h = present.shape[0], next(iter(pooled.values())).shape[1]
    c = np.zeros((len(MODALITIES), h), np.float32) if center is None else center
    out = np.zeros((n, h), np.float64)
    for i, m in enumerate(MODALITIES):
        out += weights[i] * (l2n(pooled[m]) - c[i]) * present[:, i, None]
    return out.astype(np.float32)


def _score(parts: np.ndarray, weights: np.ndarray, labels, ids) -> float:
    """parts (5, N, H): each modality's centred, masked term of the sum, computed once per fit."""
    X = l2n(np.tensordot(weights, parts, axes=1).astype(np.float32))
    return float(retrieval_scores(X, X, labels, labels, ids, ids, ks=(10,))["mAP@10"])


def fit_weights(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None,
                labels: Sequence[str], ids: Sequence[str], grid: Sequence[float] = GRID,
                rounds: int = 2) -> tuple[np.ndarray, float, float]:
    """Coordinate ascent from equal weights. Returns (weights (5,), mAP@10 with them, mAP@10 equal).
    A change is kept only when it improves the score, so the result never scores below equal weights."""
    w = np.ones(len(MODALITIES), np.float32)
    parts = np.stack([weighted_sum(pooled, present, center, np.eye(len(MODALITIES))[i]) for i in range(len(MODALITIES))])
    base = best = _score(parts, w, labels, ids)
    for _ in range(rounds):
        improved = False
        for i, m in enumerate(MODALITIES):
            if m == "text" or not present[:, i].any():
                continue
            for v in grid:
                trial = w.copy()
                trial[i] = v
                s = _score(parts, trial, labels, ids)
                if s > best + 1e-9:
                    best, w, improved = s, trial, True
        if not improved:
            break
    return w, best, base
