"""Evaluation metrics for embeddings: pure numpy / scikit-learn, no torch.

Follows the M5Product toolkit's protocol (docs/SCALE.md section 8):

- `retrieval_scores`: category-level retrieval, mAP@K and P@K (x100), dot-product scores,
  the query's own id dropped from its ranking; toolkit-exact by default (`protocol`).
- `query_ap` / `paired_bootstrap`: per-query AP@K, and a paired bootstrap interval of the difference
  between two embeddings of the same queries (is fused really above text alone on this split?).
- `instance_recall`: instance-level cross-modal matching, Recall@K (x100), row i matches row i.
- `linear_probe`: logistic regression on frozen embeddings, nested k-fold cross-validation.
- `clustering`: k-means, NMI and purity (x100).
- `pca_project` / `concat_pca`: the "frozen backbone" baseline embedding.
- `l2n`: safe row L2 normalization (zero rows stay zero).
- `collapse_score`: mean cosine of rows to their mean direction (1.0 = collapsed feature).

Ties: `retrieval_scores` ranks with a stable sort, so equal scores keep gallery order (as a
top-k would, approximately); `instance_recall` counts ties against the query (pessimistic), so
degenerate embeddings (for example all zeros) never score well.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "l2n",
    "retrieval_scores",
    "query_ap",
    "paired_bootstrap",
    "instance_recall",
    "linear_probe",
    "clustering",
    "pca_project",
    "concat_pca",
    "collapse_score",
]


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalization as float32/float64; rows of (near) zeros stay zero, no NaN."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    safe = np.where(norms > eps, norms, 1.0)
    return np.where(norms > eps, x / safe, 0.0).astype(x.dtype, copy=False)


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {x.shape}")
    return x


def _encode_pair(a: Sequence[Any], b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Map two label (or id) sequences to shared integer codes so any hashable type compares."""
    a = np.asarray(a)
    b = np.asarray(b)
    both = np.concatenate([a.astype(object), b.astype(object)]) if a.dtype != b.dtype else np.concatenate([a, b])
    try:
        _, codes = np.unique(both, return_inverse=True)
    except TypeError:  # mixed, unorderable types
        table: dict[Any, int] = {}
        codes = np.array([table.setdefault(v, len(table)) for v in both.tolist()])
    codes = codes.reshape(-1)
    return codes[: len(a)], codes[len(a):]


RETRIEVAL_PROTOCOLS = ("toolkit", "skip")


def _per_query(query, gallery, query_labels, gallery_labels, query_ids, gallery_ids, ks, chunk: int,
               protocol: str) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """AP@K and P@K (fractions) of every query for each K, and which queries the protocol counts."""
    if protocol not in RETRIEVAL_PROTOCOLS:
        raise ValueError(f"protocol must be one of {RETRIEVAL_PROTOCOLS}, got {protocol!r}")
    q = _as_2d("query", query)
    g = _as_2d("gallery", gallery)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    nq, ng = len(q), len(g)
    if len(query_labels) != nq or len(gallery_labels) != ng:
        raise ValueError("query_labels / gallery_labels must match query / gallery rows")
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("give both query_ids and gallery_ids, or neither")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    ql, gl = _encode_pair(query_labels, gallery_labels)
    use_ids = query_ids is not None
    if use_ids:
        if len(query_ids) != nq or len(gallery_ids) != ng:  # type: ignore[arg-type]
            raise ValueError("query_ids / gallery_ids must match query / gallery rows")
        qi, gi = _encode_pair(query_ids, gallery_ids)  # type: ignore[arg-type]
    toolkit = protocol == "toolkit"

    max_k = max(ks)
    ap_all = {k: np.zeros(nq) for k in ks}
    p_all = {k: np.zeros(nq) for k in ks}
    counted = np.zeros(nq, dtype=bool)
    pos_range = np.arange(max_k)
    for start in range(0, nq, max(1, int(chunk))):
        stop = min(start + max(1, int(chunk)), nq)
        scores = (q[start:stop] @ g.T).astype(np.float64)  # (C, Ng)
        keep = np.ones_like(scores, dtype=bool)
        if use_ids:
            keep = qi[start:stop, None] != gi[None, :]
        positive = (ql[start:stop, None] == gl[None, :]) & keep
        n_pos = positive.sum(1) + (1 if toolkit else 0)  # toolkit: the query is in its own pos_set
        n_ranked = keep.sum(1)
        scores = np.where(keep, scores, -np.inf)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :max_k]  # (C, <=max_k)
        rel = np.take_along_axis(positive, top, axis=1)  # dropped items are never positive
        width = rel.shape[1]
        ok = np.ones(len(n_pos), dtype=bool) if toolkit else n_pos > 0
        counted[start:stop] = ok
        for K in ks:
            kk = np.minimum(np.minimum(K, n_pos), n_ranked)  # (C,)
            inside = pos_range[None, :width] < kk[:, None]
            hit = rel & inside
            hits = hit.sum(1)
            prec = np.cumsum(hit, axis=1) / (pos_range[None, :width] + 1.0)
            ap = np.where(hits > 0, (prec * hit).sum(1) / np.maximum(hits, 1), 0.0)
            p = hits / np.maximum(kk, 1)
            ap_all[K][start:stop] = ap
            p_all[K][start:stop] = p

    return ap_all, p_all, counted


def retrieval_scores(
    query: np.ndarray,
    gallery: np.ndarray,
    query_labels: Sequence[Any],
    gallery_labels: Sequence[Any],
    query_ids: Sequence[Any] | None = None,
    gallery_ids: Sequence[Any] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 512,
    protocol: str = "toolkit",
) -> dict[str, float | int]:
    """Category retrieval: returns {"mAP@K", "P@K"} (x100) for K in ks, "queries", "queries_skipped".

    Scores are dot products (normalize beforehand for cosine). When ids are given, gallery items
    with the query's id are dropped from that query's ranking. Per query and K:
    k = min(K, |pos_set|, #ranked); P@K = hits in top k / k; AP@K = (1/#hits) * sum over hit
    positions i < k of (hits so far / (i + 1)), 0 with no hits.

    protocol="toolkit" (the M5Product toolkit's `evaluate_unit_v2.py`, the headline number):
    pos_set is every item with the query's label, the query itself included, so |pos_set| is the
    remaining gallery positives + 1; every query is counted, one with no other positive scores 0.
    protocol="skip" (this project's earlier variant, kept as a labelled second row): pos_set
    excludes the query, and queries without another positive are skipped. It reads higher.
    With no query at all (or none usable under "skip"), every score is NaN.
    """
    ap, p, ok = _per_query(query, gallery, query_labels, gallery_labels, query_ids, gallery_ids, ks, chunk, protocol)
    used = int(ok.sum())
    out: dict[str, float | int] = {}
    for K in ap:
        out[f"mAP@{K}"] = 100.0 * float(ap[K][ok].mean()) if used else float("nan")
        out[f"P@{K}"] = 100.0 * float(p[K][ok].mean()) if used else float("nan")
    out["queries"] = used
    out["queries_skipped"] = len(ok) - used
    return out


def query_ap(query: np.ndarray, gallery: np.ndarray, query_labels: Sequence[Any], gallery_labels: Sequence[Any],
             query_ids: Sequence[Any] | None = None, gallery_ids: Sequence[Any] | None = None, k: int = 10,
             protocol: str = "toolkit") -> np.ndarray:
    """Per-query AP@k (x100) of the queries `retrieval_scores` counts (its mAP@k is their mean), in
    query order; the input of `paired_bootstrap`."""
    ap, _, ok = _per_query(query, gallery, query_labels, gallery_labels, query_ids, gallery_ids, (k,), 512, protocol)
    return 100.0 * ap[int(k)][ok]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float | int]:
    """Mean of a - b over paired per-query scores (two embeddings of the same queries) and its
    percentile bootstrap interval: queries are resampled with replacement, the gallery stays fixed.
    Returns {"diff", "lo", "hi", "n"}; an interval that holds 0 means the split cannot tell a from b."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same length, got {a.size} and {b.size}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if a.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(int(n_boot))
    for s in range(0, len(means), 256):  # chunks keep the index matrix small for large splits
        idx = rng.integers(0, d.size, size=(min(256, len(means) - s), d.size))
        means[s: s + len(idx)] = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size)}


def instance_recall(
    query: np.ndarray,
    gallery: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    valid: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = 1024,
) -> dict[str, float | int]:
    """Instance-level matching Recall@K (x100): query row i's match is gallery row i.

    `valid` is one boolean mask (N,) or a pair (query_valid, gallery_valid); only rows valid on
    both sides are used, as queries and as gallery candidates. Scores are dot products; ties with
    the true match count against it. Returns {"R@K"...,"n": rows used}; NaN scores with no rows.
    """
    q = _as_2d("query", query)
    g = _as_2d("gallery", gallery)
    if q.shape != g.shape:
        raise ValueError(f"query {q.shape} and gallery {g.shape} must have the same shape")
    n = len(q)
    mask = np.ones(n, dtype=bool)
    if valid is not None:
        if isinstance(valid, tuple):
            for v in valid:
                mask &= np.asarray(v, dtype=bool).reshape(n)
        else:
            mask &= np.asarray(valid, dtype=bool).reshape(n)
    q, g = q[mask], g[mask]
    m = len(q)
    ks = tuple(int(k) for k in ks)
    ranks = np.empty(m, dtype=np.int64)
    step = max(1, int(chunk))
    for start in range(0, m, step):
        stop = min(start + step, m)
        s = (q[start:stop] @ g.T).astype(np.float64)
        rows = np.arange(stop - start)
        own = s[rows, np.arange(start, stop)]
        ge = s >= own[:, None]
        ge[rows, np.arange(start, stop)] = False
        ranks[start:stop] = ge.sum(1)  # 0 = matched first
    out: dict[str, float | int] = {}
    for K in ks:
        out[f"R@{K}"] = 100.0 * float((ranks < K).mean()) if m else float("nan")
    out["n"] = m
    return out


PROBE_GRID: tuple[tuple[bool, float], ...] = tuple((std, c) for std in (True, False) for c in (1.0, 10.0, 100.0))


def _splitter(y: np.ndarray, folds: int, seed: int) -> StratifiedKFold | KFold:
    """Stratified folds when the largest class can fill every fold, else shuffled plain folds."""
    n_splits = min(int(folds), len(y))
    if n_splits < 2:
        raise ValueError("linear_probe needs folds >= 2")
    _, kc = np.unique(y, return_counts=True)
    if kc.max() >= n_splits:
        return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return KFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _probe_fit_score(X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, setting: tuple[bool, float],
                     seed: int) -> float:
    std, c = setting
    if len(np.unique(y[tr])) < 2:  # cannot fit one class; predict it
        return float((y[te] == y[tr][0]).mean())
    head = LogisticRegression(max_iter=1000, C=c, random_state=seed)
    clf = make_pipeline(StandardScaler(), head) if std else head
    Xin = X if std else l2n(X)
    clf.fit(Xin[tr], y[tr])
    return float((clf.predict(Xin[te]) == y[te]).mean())


def linear_probe(X: np.ndarray, y: Sequence[Any], folds: int = 5, seed: int = 0,
                 grid: Sequence[tuple[bool, float]] = PROBE_GRID, inner_folds: int = 3) -> dict[str, float | int]:
    """Linear probe with nested cross-validation: (standardized or L2-normalized) features ->
    LogisticRegression(C).

    Outer k-fold CV scores the probe; inside each outer training fold, an inner `inner_folds` CV
    picks the (standardize, C) setting of `grid`, which is then refit on the whole outer training
    fold and scored on its test fold, so no test fold ever chooses the setting it is scored with.
    The grid exists because, measured on shop3k, the frozen baseline scores 29% with
    standardization and 74% without, and SCALE the other way round. "settings" lists the chosen
    setting per outer fold.

    Classes with fewer than 2 members are dropped (reported as "dropped" samples). Stratified
    folds when the largest class has at least `folds` members (sklearn's warning about small
    classes is silenced), otherwise shuffled KFold; folds are capped at the number of samples.
    Returns accuracy mean/std over the outer folds (x100), "chance" (majority-class rate x100),
    "folds", "n", "classes", "dropped", "settings".
    """
    X = _as_2d("X", X)
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    keep = counts[codes] >= 2
    dropped = int((~keep).sum())
    Xk, yk = X[keep], codes[keep]
    classes, kc = np.unique(yk, return_counts=True)
    if len(classes) < 2:
        raise ValueError("linear_probe needs at least 2 classes with 2 or more samples each")
    outer = list(_splitter(yk, folds, seed).split(Xk, yk))
    accs: list[float] = []
    chosen: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning)
        for tr, te in outer:
            setting = grid[0]
            if len(grid) > 1 and len(tr) >= 2 * max(2, inner_folds):
                inner = list(_splitter(yk[tr], inner_folds, seed + 1).split(Xk[tr], yk[tr]))
                scores = [np.mean([_probe_fit_score(Xk[tr], yk[tr], itr, ite, g, seed) for itr, ite in inner])
                          for g in grid]
                setting = grid[int(np.argmax(scores))]  # first best on ties: grid order is the preference
            accs.append(_probe_fit_score(Xk, yk, tr, te, setting, seed))
            chosen.append(f"{'standardized' if setting[0] else 'l2-normalized'}, C={setting[1]:g}")
    a = np.asarray(accs)
    return {
        "acc": 100.0 * float(a.mean()),
        "acc_std": 100.0 * float(a.std()),
        "chance": 100.0 * float(kc.max() / kc.sum()),
        "folds": len(outer),
        "n": int(len(yk)),
        "classes": int(len(classes)),
        "dropped": dropped,
        "settings": chosen,
    }


def clustering(X: np.ndarray, y: Sequence[Any], k: int | None = None, seed: int = 0) -> dict[str, float | int]:
    """k-means (k = number of distinct labels by default, n_init=10) -> NMI and purity (x100).

    Purity = sum over clusters of the size of its most common label, divided by N.
    """
    X = _as_2d("X", X)
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    _, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)
    n_clusters = int(k) if k is not None else int(codes.max() + 1)
    n_clusters = max(1, min(n_clusters, len(X)))
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed)
    pred = km.fit_predict(np.asarray(X, dtype=np.float64))
    nmi = normalized_mutual_info_score(codes, pred)
    table = np.zeros((n_clusters, int(codes.max()) + 1), dtype=np.int64)
    np.add.at(table, (pred, codes), 1)
    purity = table.max(1).sum() / len(codes)
    return {"nmi": 100.0 * float(nmi), "purity": 100.0 * float(purity), "k": n_clusters}


def pca_project(X: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit PCA; returns (mean (D,), components (d, D)) with d = min(dim, N, D).

    Project with `(X - mean) @ components.T`.
    """
    X = _as_2d("X", X)
    d = max(1, min(int(dim), X.shape[0], X.shape[1]))
    pca = PCA(n_components=d, random_state=seed)
    pca.fit(np.asarray(X, dtype=np.float64))
    return pca.mean_.astype(np.float64), pca.components_.astype(np.float64)


def concat_pca(blocks: Sequence[np.ndarray], dim: int = 256, seed: int = 0) -> np.ndarray:
    """Frozen-backbone baseline: L2-normalize each block (zero rows stay zero), concatenate,
    PCA to min(dim, N, total D) dimensions. Returns float32 (N, d), not re-normalized."""
    if len(blocks) == 0:
        raise ValueError("concat_pca needs at least one block")
    mats = [_as_2d(f"blocks[{i}]", b) for i, b in enumerate(blocks)]
    n = len(mats[0])
    if any(len(b) != n for b in mats):
        raise ValueError(f"all blocks must have the same rows, got {[len(b) for b in mats]}")
    Z = np.concatenate([l2n(np.asarray(b, dtype=np.float64)) for b in mats], axis=1)
    mean, comp = pca_project(Z, dim, seed=seed)
    return ((Z - mean) @ comp.T).astype(np.float32)


def collapse_score(X: np.ndarray) -> float:
    """Mean cosine of each row to the rows' mean direction (rows L2-normalized first; zero rows left
    out). 1.0 means every row points the same way: the feature says nothing about the product.
    NaN with no usable row."""
    X = _as_2d("X", X)
    Z = l2n(np.asarray(X, dtype=np.float64))
    Z = Z[np.linalg.norm(Z, axis=1) > 0]
    if not len(Z):
        return float("nan")
    mean = l2n(Z.mean(0, keepdims=True))[0]
    return float((Z @ mean).mean())
