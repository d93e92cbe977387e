"""Fusion weights: how much each modality counts in the fused product embedding.

fused = sum over present modalities m of w_m * (l2n(pooled_m) - centre_m). With equal weights a weak
modality (a table feature that barely varies, say) drags the sum below its best parts; the weights are
fitted by coordinate ascent on category-retrieval mAP@10 (toolkit-exact) over the `dev` split, never
on `val`. Weights stay positive (every present modality still counts) and the text weight is 1. A
modality below WEAK_BELOW x the best single modality's mAP@10 keeps the smallest weight, unfitted.
`cross_fit` scores the fit on products it was not fitted on (the in-sample score is optimistic).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..eval.metrics import l2n, retrieval_scores
from ..modalities import INDEX, MODALITIES

GRID: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
# A modality retrieving below this share of the best single modality's mAP@10 gets the smallest weight, unfitted.
WEAK_BELOW = 0.5


def weighted_sum(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None,
                 weights: Sequence[float]) -> np.ndarray:
    """(N, H) fused rows for the given per-modality weights (modality order of MODALITIES)."""
    n, h = present.shape[0], next(iter(pooled.values())).shape[1]
    c = np.zeros((len(MODALITIES), h), np.float32) if center is None else center
    out = np.zeros((n, h), np.float64)
    for i, m in enumerate(MODALITIES):
        out += weights[i] * (l2n(pooled[m]) - c[i]) * present[:, i, None]
    return out.astype(np.float32)


def _terms(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """(5, N, H): each modality's centred, masked term of the weighted sum, computed once per fit."""
    return np.stack([weighted_sum(pooled, present, center, np.eye(len(MODALITIES))[i]) for i in range(len(MODALITIES))])


def _score(parts: np.ndarray, weights: np.ndarray, labels, ids) -> float:
    """parts (5, N, H) from _terms."""
    X = l2n(np.tensordot(weights, parts, axes=1).astype(np.float32))
    return float(retrieval_scores(X, X, labels, labels, ids, ids, ks=(10,))["mAP@10"])


def _ascend(parts: np.ndarray, usable: Sequence[bool], labels, ids, grid: Sequence[float], rounds: int,
            weak_below: float = WEAK_BELOW) -> tuple[np.ndarray, float, float]:
    """Coordinate ascent over the non-text weights, scored on the rows of `parts`. A usable modality whose
    own mAP@10 is below `weak_below` x the best single modality's is set to the smallest grid weight and
    not fitted: every free weight is a choice made on a few hundred products, and weak ones overfit."""
    n = len(MODALITIES)
    singles = {i: _score(parts, np.eye(n, dtype=np.float32)[i], labels, ids) for i in range(n) if usable[i]}
    top = max(singles.values(), default=0.0)
    w = np.ones(n, np.float32)
    base = _score(parts, w, labels, ids)
    free = []
    for i, m in enumerate(MODALITIES):
        if m == "text" or not usable[i]:
            continue
        if singles[i] < weak_below * top:
            w[i] = min(grid)
        else:
            free.append(i)
    best = _score(parts, w, labels, ids)
    for _ in range(rounds):
        improved = False
        for i in free:
            for v in grid:
                trial = w.copy()
                trial[i] = v
                s = _score(parts, trial, labels, ids)
                if s > best + 1e-9:
                    best, w, improved = s, trial, True
        if not improved:
            break
    return w, best, base


def fit_weights(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None,
                labels: Sequence[str], ids: Sequence[str], grid: Sequence[float] = GRID,
                rounds: int = 2, weak_below: float = WEAK_BELOW) -> tuple[np.ndarray, float, float]:
    """Weak modalities at the smallest weight, then coordinate ascent over the others (_ascend). Returns
    (weights (5,), mAP@10 with them, mAP@10 with equal weights)."""
    parts = _terms(pooled, present, center)
    return _ascend(parts, present.any(0), labels, ids, grid, rounds, weak_below)


def cross_fit(pooled: Mapping[str, np.ndarray], present: np.ndarray, center: np.ndarray | None,
              labels: Sequence[str], ids: Sequence[str], splits: int = 5, seed: int = 0,
              grid: Sequence[float] = GRID, rounds: int = 2, weak_below: float = WEAK_BELOW) -> dict | None:
    """The fusion fit on products it has not seen. `splits` random halves of the products, each used both
    ways: weights fitted on one half (as fit_weights), then the fused sum, each modality alone and each pair
    (with the same fitted weights) scored on the other half as its own gallery. Returns the mean held-out
    mAP@10 of each, and fused minus the best single and the best pair. On the split the weights were fitted
    on, fused minus its parts is optimistic; this estimate is not. None when no halving leaves 2 products
    on each side (too few products to tell)."""
    n = present.shape[0]
    parts = _terms(pooled, present, center)
    usable = [m for i, m in enumerate(MODALITIES) if present[:, i].sum() >= 2]
    eye = {m: np.eye(len(MODALITIES), dtype=np.float32)[INDEX[m]] for m in MODALITIES}
    labels, ids = np.asarray(labels), np.asarray(ids)
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {}
    for _ in range(splits):
        half = rng.random(n) < 0.5
        if min(half.sum(), (~half).sum()) < 2:
            continue
        for fit_on in (half, ~half):
            w, _, _ = _ascend(parts[:, fit_on], present[fit_on].any(0), list(labels[fit_on]), list(ids[fit_on]),
                              grid, rounds, weak_below)
            held = ~fit_on
            rows = parts[:, held]
            lab, idx = list(labels[held]), list(ids[held])
            keys = {"fused": w, **{m: eye[m] for m in usable},
                    **{f"{a}+{b}": w * (eye[a] + eye[b]) for j, a in enumerate(usable) for b in usable[j + 1:]}}
            for k, v in keys.items():
                scores.setdefault(k, []).append(_score(rows, v, lab, idx))
    if not scores:
        return None
    mean = {k: round(float(np.mean(v)), 2) for k, v in scores.items()}
    out: dict = {"splits": len(scores["fused"]), "fused": mean["fused"],
                 "singles": {m: mean[m] for m in usable}, "pairs": {k: v for k, v in mean.items() if "+" in k}}
    for label, group in (("best single", out["singles"]), ("best pair", out["pairs"])):
        if group:
            best = max(group, key=group.get)
            out[f"fused - {label}"] = {"vs": best, "diff": round(mean["fused"] - group[best], 2)}
    return out
