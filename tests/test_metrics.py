"""Tests for core.eval.metrics: hand-computed retrieval numbers, sanity cases for the rest."""
from __future__ import annotations

import numpy as np
import pytest

from core.eval.metrics import (
    clustering,
    concat_pca,
    instance_recall,
    l2n,
    linear_probe,
    paired_bootstrap,
    pca_project,
    query_ap,
    retrieval_scores,
)

# Toy gallery on a line: with query [1.0] the score of each item is its value, so the ranking
# is g0 > g1 > g2 > g3 > g4.
G = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]])
G_LABELS = ["A", "B", "A", "A", "B"]
Q = np.array([[1.0]])


def _reference(q, g, ql, gl, qi=None, gi=None, ks=(1, 5, 10), protocol="toolkit"):
    """Per-query loop, straight from the toolkit formula (test oracle for the vectorized code).
    "toolkit": the query is in its own pos_set and every query counts; "skip": the older variant."""
    ap = {k: [] for k in ks}
    pk = {k: [] for k in ks}
    for a in range(len(q)):
        idx = [j for j in range(len(g)) if qi is None or gi[j] != qi[a]]
        s = np.array([q[a] @ g[j] for j in idx])
        order = [idx[t] for t in np.argsort(-s, kind="stable")]
        rel = [gl[j] == ql[a] for j in order]
        npos = sum(rel) + (protocol == "toolkit")
        if npos == 0:
            continue
        for K in ks:
            k = min(K, npos, len(order))
            hits, acc = 0, 0.0
            for i in range(k):
                if rel[i]:
                    hits += 1
                    acc += hits / (i + 1)
            ap[K].append(acc / hits if hits else 0.0)
            pk[K].append(hits / k)
    return {**{f"mAP@{k}": 100 * np.mean(ap[k]) for k in ks}, **{f"P@{k}": 100 * np.mean(pk[k]) for k in ks}}


def test_retrieval_hand_computed_fewer_positives_than_k():
    # Ranked relevance: A B A A B -> 1 0 1 1 0; 3 positives.
    r = retrieval_scores(Q, G, ["A"], G_LABELS, ks=(1, 2, 5, 10), protocol="skip")
    # K=1: k=1, top [1] -> P=1, AP=1.
    assert r["P@1"] == pytest.approx(100.0)
    assert r["mAP@1"] == pytest.approx(100.0)
    # K=2: k=2, top [1,0] -> P=1/2, AP=(1/1)(1/1)=1.
    assert r["P@2"] == pytest.approx(50.0)
    assert r["mAP@2"] == pytest.approx(100.0)
    # K=5: k=min(5, 3 positives, 5)=3, top [1,0,1] -> P=2/3, AP=(1/2)(1/1 + 2/3)=5/6.
    assert r["P@5"] == pytest.approx(100 * 2 / 3)
    assert r["mAP@5"] == pytest.approx(100 * 5 / 6)
    # K=10: same k=3.
    assert r["P@10"] == pytest.approx(100 * 2 / 3)
    assert r["mAP@10"] == pytest.approx(100 * 5 / 6)
    assert r["queries"] == 1 and r["queries_skipped"] == 0


def test_retrieval_drops_query_own_id():
    # g0 is the query itself; dropped -> ranking g1 g2 g3 g4 = B A A B -> 0 1 1 0, 2 positives.
    ids = ["x", "a", "b", "c", "d"]
    r = retrieval_scores(Q, G, ["A"], G_LABELS, query_ids=["x"], gallery_ids=ids, ks=(1, 5), protocol="skip")
    # K=1: k=1, top [0] -> P=0, AP=0.
    assert r["P@1"] == pytest.approx(0.0)
    assert r["mAP@1"] == pytest.approx(0.0)
    # K=5: k=min(5, 2, 4)=2, top [0,1] -> P=1/2, AP=(1/1)(1/2)=1/2.
    assert r["P@5"] == pytest.approx(50.0)
    assert r["mAP@5"] == pytest.approx(50.0)
    # Without ids the query's own copy would count (P@1 = 100).
    assert retrieval_scores(Q, G, ["A"], G_LABELS, ks=(1,), protocol="skip")["P@1"] == pytest.approx(100.0)


def test_retrieval_fewer_ranked_than_k_and_mean_over_queries():
    # Gallery of 2 items, both label A. Query [1.0] ranks g0 (1.0), g1 (0.5).
    g = np.array([[1.0], [0.5]])
    # K=5: k = min(5, 2 positives, 2 ranked) = 2, top [1,1] -> P=1, AP=(1/2)(1/1 + 2/2)=1.
    r = retrieval_scores(np.array([[1.0]]), g, ["A"], ["A", "A"], ks=(5,), protocol="skip")
    assert r["P@5"] == pytest.approx(100.0) and r["mAP@5"] == pytest.approx(100.0)
    # Gallery labels [A, B]. Query 1 [1.0], label A: ranks g0(A), g1(B); 1 positive -> k=1,
    #   top [1] -> P=1, AP=1.
    # Query 2 [-1.0], label A: scores -1.0, -0.5 -> ranks g1(B), g0(A); k=1, top [0] -> P=0, AP=0.
    # Query 3 label C: no positive -> skipped. Means over the 2 used queries: 50, 50.
    q = np.array([[1.0], [-1.0], [1.0]])
    r2 = retrieval_scores(q, g, ["A", "A", "C"], ["A", "B"], ks=(5,), protocol="skip")
    assert r2["queries"] == 2 and r2["queries_skipped"] == 1
    assert r2["P@5"] == pytest.approx(50.0)
    assert r2["mAP@5"] == pytest.approx(50.0)


def test_retrieval_all_queries_skipped_gives_nan():
    r = retrieval_scores(Q, G, ["Z"], G_LABELS, ks=(1,), protocol="skip")
    assert r["queries"] == 0 and np.isnan(r["mAP@1"])


def test_toolkit_counts_the_query_in_its_own_positives():
    # evaluate_unit_v2.py: pos_set holds every item of the label, the query included, and the query's
    # id is not in its ranked list. g0 is the query: ranked g1..g4 = B A A B -> 0 1 1 0.
    # |pos_set| = 2 gallery positives + the query = 3. K=5: k = min(5, 3, 4) = 3, top [0,1,1]:
    # P = 2/3, AP = (1/2)(1/2 + 2/3) = 7/12. The "skip" variant used k = 2: P = 1/2, AP = 1/2.
    ids = ["x", "a", "b", "c", "d"]
    r = retrieval_scores(Q, G, ["A"], G_LABELS, query_ids=["x"], gallery_ids=ids, ks=(1, 5))
    assert r["P@5"] == pytest.approx(100 * 2 / 3)
    assert r["mAP@5"] == pytest.approx(100 * 7 / 12)
    assert r["P@1"] == pytest.approx(0.0) and r["mAP@1"] == pytest.approx(0.0)


def test_toolkit_counts_queries_without_another_positive_as_zero():
    # Query 1 [1.0] label A ranks g0(A), g1(B): |pos_set| = 1 + 1 = 2, K=5 -> k = 2, top [1, 0]:
    #   P = 1/2, AP = 1. Query 2 [-1.0] label A ranks g1(B), g0(A): k = 2, top [0, 1]: P = 1/2, AP = 1/2.
    # Query 3 label C has no other positive: |pos_set| = 1, k = 1, top [0]: P = 0, AP = 0, and it
    # is counted (the old variant skipped it and averaged over 2 queries).
    g = np.array([[1.0], [0.5]])
    q = np.array([[1.0], [-1.0], [1.0]])
    r = retrieval_scores(q, g, ["A", "A", "C"], ["A", "B"], ks=(5,))
    assert r["queries"] == 3 and r["queries_skipped"] == 0
    assert r["P@5"] == pytest.approx(100 * (0.5 + 0.5 + 0) / 3)
    assert r["mAP@5"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    # the older variant skipped query 3 and used k = 1: P@5 (1 + 0) / 2 reads higher
    old = retrieval_scores(q, g, ["A", "A", "C"], ["A", "B"], ks=(5,), protocol="skip")
    assert old["P@5"] == pytest.approx(50.0) and old["P@5"] > r["P@5"]


def test_query_ap_is_each_querys_ap_and_averages_to_the_map():
    # The three queries of the case above: AP@5 = 1, 1/2, 0 (toolkit); "skip" drops query 3 and
    # gives query 2 k = 1 (top [0]: AP 0).
    g = np.array([[1.0], [0.5]])
    q = np.array([[1.0], [-1.0], [1.0]])
    ap = query_ap(q, g, ["A", "A", "C"], ["A", "B"], k=5)
    assert ap.tolist() == pytest.approx([100.0, 50.0, 0.0])
    assert ap.mean() == pytest.approx(retrieval_scores(q, g, ["A", "A", "C"], ["A", "B"], ks=(5,))["mAP@5"])
    assert query_ap(q, g, ["A", "A", "C"], ["A", "B"], k=5, protocol="skip").tolist() == pytest.approx([100.0, 0.0])


def test_paired_bootstrap_interval_of_a_difference():
    # Every query gains exactly 2: the interval is the point 2 whatever the resampling.
    a = np.array([50.0, 60.0, 70.0, 80.0])
    r = paired_bootstrap(a, a - 2.0)
    assert r["diff"] == pytest.approx(2.0) and r["lo"] == pytest.approx(2.0) and r["hi"] == pytest.approx(2.0)
    assert r["n"] == 4
    # One query gains 100, nine lose nothing: mean +10, and a resample without that query gives 0,
    # so the 95% interval reaches 0 (the split cannot tell), while one gain of 10 per query can.
    a, b = np.zeros(10), np.zeros(10)
    a[0] = 100.0
    r = paired_bootstrap(a, b, seed=1)
    assert r["diff"] == pytest.approx(10.0) and r["lo"] == pytest.approx(0.0) and 10.0 < r["hi"] <= 100.0
    assert paired_bootstrap(np.full(10, 10.0), b)["lo"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, b[:3])


def test_toolkit_singleton_category_scores_zero_not_nan():
    r = retrieval_scores(Q, G, ["Z"], G_LABELS, ks=(1,))
    assert r["queries"] == 1 and r["mAP@1"] == 0.0


def test_retrieval_matches_loop_reference_and_is_chunk_invariant():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 6))
    g = rng.normal(size=(50, 6))
    ql = rng.integers(0, 5, 37).tolist()
    gl = rng.integers(0, 5, 50).tolist()
    gi = [f"p{j}" for j in range(50)]
    qi = [f"p{j}" for j in rng.integers(0, 60, 37)]  # some ids present in the gallery, some not
    for protocol in ("toolkit", "skip"):
        ref = _reference(q, g, ql, gl, qi, gi, protocol=protocol)
        for chunk in (1, 7, 1000):
            r = retrieval_scores(q, g, ql, gl, qi, gi, chunk=chunk, protocol=protocol)
            for key, v in ref.items():
                assert r[key] == pytest.approx(v), (protocol, chunk, key)


def test_retrieval_perfect_vs_shuffled():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 20)
    centers = l2n(rng.normal(size=(6, 16)))
    emb = l2n(centers[labels] + 0.05 * rng.normal(size=(len(labels), 16)))
    ids = np.arange(len(labels))
    r = retrieval_scores(emb, emb, labels, labels, ids, ids)
    for K in (1, 5, 10):
        assert r[f"mAP@{K}"] == pytest.approx(100.0)
        assert r[f"P@{K}"] == pytest.approx(100.0)
    shuffled = rng.permutation(labels)
    r2 = retrieval_scores(emb, emb, shuffled, shuffled, ids, ids)
    assert r2["mAP@10"] < 60 and r2["P@10"] < 60


def test_instance_recall_hand_case():
    # Row 0: query [1,0] scores gallery [1,0] -> 1, [0,1] -> 0: own match first (rank 0).
    # Row 1: query [1,0.5] scores [1,0] -> 1.0, own [0,1] -> 0.5: own match second (rank 1).
    q = np.array([[1.0, 0.0], [1.0, 0.5]])
    g = np.array([[1.0, 0.0], [0.0, 1.0]])
    r = instance_recall(q, g, ks=(1, 2))
    assert r["R@1"] == pytest.approx(50.0)
    assert r["R@2"] == pytest.approx(100.0)
    assert r["n"] == 2


def test_instance_recall_identity_vs_permuted_and_valid():
    rng = np.random.default_rng(2)
    x = l2n(rng.normal(size=(200, 32)))
    ident = instance_recall(x, x)
    assert ident["R@1"] == pytest.approx(100.0)
    perm = instance_recall(x, x[rng.permutation(200)])
    assert perm["R@1"] < 10 and perm["R@10"] < 30
    # Ties count against the query: all-zero embeddings cannot look perfect.
    z = np.zeros((10, 4))
    assert instance_recall(z, z)["R@1"] == pytest.approx(0.0)
    # valid: rows invalid on either side are removed (as queries and as candidates).
    y = x.copy()
    y[:50] = rng.normal(size=(50, 32))  # corrupt first 50 gallery rows
    vq = np.ones(200, bool)
    vg = np.ones(200, bool)
    vg[:50] = False
    r = instance_recall(x, y, valid=(vq, vg))
    assert r["n"] == 150 and r["R@1"] == pytest.approx(100.0)
    assert instance_recall(x, y)["R@1"] < 100.0
    single = instance_recall(x, y, valid=vg)
    assert single["n"] == 150


def _blobs(n_per, n_cls, dim, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_cls, dim)) * 10
    y = np.repeat(np.arange(n_cls), n_per)
    X = centers[y] + spread * rng.normal(size=(len(y), dim))
    return X, y


def test_linear_probe_separable_vs_random_labels():
    X, y = _blobs(40, 3, 10, 1.0, 3)
    r = linear_probe(X, y, folds=5, seed=0)
    assert r["acc"] > 95
    assert r["folds"] == 5 and r["n"] == 120 and r["dropped"] == 0
    yr = np.random.default_rng(4).integers(0, 3, len(y))
    rr = linear_probe(X, yr, folds=5, seed=0)
    assert rr["acc"] < 55  # chance is ~33%
    assert rr["acc"] < r["acc"] - 30


def test_linear_probe_drops_singleton_classes_and_small_classes_work():
    X, y = _blobs(30, 2, 5, 1.0, 5)
    X = np.vstack([X, np.ones((4, 5))])
    y = np.concatenate([y, [7, 8, 9, 9]])  # two singletons dropped, class 9 has 2 < folds
    r = linear_probe(X, y, folds=5)
    assert r["dropped"] == 2
    assert r["n"] == 62 and r["classes"] == 3
    assert np.isfinite(r["acc"]) and r["acc"] > 80
    with pytest.raises(ValueError):
        linear_probe(X[:3], [0, 1, 2])


def test_clustering_blobs_vs_random():
    X, y = _blobs(50, 4, 8, 0.5, 6)
    r = clustering(X, y, seed=0)
    assert r["k"] == 4
    assert r["nmi"] > 99 and r["purity"] > 99
    yr = np.random.default_rng(7).integers(0, 4, len(y))
    rr = clustering(X, yr, seed=0)
    assert rr["nmi"] < 10 and rr["purity"] < 50


def test_clustering_purity_hand_case():
    # Two tight groups; labels in group 2 are mixed 2:1 -> purity = (3 + 2) / 6.
    X = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    y = [0, 0, 0, 1, 1, 2]
    r = clustering(X, y, k=2)
    assert r["purity"] == pytest.approx(100 * 5 / 6)


def test_l2n_zero_rows_stay_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    n = l2n(x)
    assert np.allclose(n, [[0.6, 0.8], [0.0, 0.0]])
    assert np.all(np.isfinite(n))
    assert l2n(x.astype(np.float32)).dtype == np.float32


def test_pca_project_and_concat_pca():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(40, 12))
    b = rng.normal(size=(40, 7))
    b[5] = 0.0  # missing modality for row 5
    out = concat_pca([a, b], dim=8)
    assert out.shape == (40, 8) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    # Fewer samples / features than dim caps the output width.
    assert concat_pca([a[:6], b[:6]], dim=256).shape == (6, 6)
    assert concat_pca([a[:, :3]], dim=256).shape == (40, 3)
    # Blocks are normalized per row: rescaling rows changes nothing; the zero row stays zero in
    # its block, so the result equals projecting [l2n(a), l2n(b)] by hand.
    scaled = concat_pca([a * rng.uniform(0.5, 5, size=(40, 1)), b * 3.0], dim=8)
    assert np.allclose(scaled, out, atol=1e-4)
    z = np.concatenate([l2n(a), l2n(b)], axis=1)
    assert np.all(z[5, 12:] == 0)
    mean, comp = pca_project(z, 8)
    assert comp.shape == (8, 19) and mean.shape == (19,)
    assert np.allclose((z - mean) @ comp.T, out, atol=1e-4)
    # Components are orthonormal.
    assert np.allclose(comp @ comp.T, np.eye(8), atol=1e-8)
    with pytest.raises(ValueError):
        concat_pca([a, b[:10]])


def test_linear_probe_is_nested_the_test_fold_never_picks_the_setting(monkeypatch):
    # Record which rows every fit and score sees: under nesting, the rows an outer fold is scored on
    # never take part in choosing that fold's setting.
    import core.eval.metrics as metrics

    calls = []
    real = metrics._probe_fit_score

    def spy(X, y, tr, te, setting, seed):
        calls.append((len(X), frozenset(tr.tolist()), frozenset(te.tolist())))
        return real(X, y, tr, te, setting, seed)

    monkeypatch.setattr(metrics, "_probe_fit_score", spy)
    X, y = _blobs(20, 3, 6, 1.0, 11)
    r = metrics.linear_probe(X, y, folds=4, seed=0, grid=((True, 1.0), (False, 10.0)), inner_folds=3)
    n = len(y)
    outer = [c for c in calls if c[0] == n]
    inner = [c for c in calls if c[0] < n]
    assert len(outer) == 4 and len(inner) == 4 * 3 * 2  # per outer fold: 3 inner folds x 2 settings
    assert len(r["settings"]) == 4
    # every inner fit sees at most the rows of one outer training fold (indices re-based, so check sizes)
    train_sizes = {len(tr) for _, tr, _ in outer}
    assert all(len(tr) + len(te) in train_sizes for _, tr, te in inner)


def test_linear_probe_setting_is_chosen_inside_the_training_folds():
    # One feature separates the classes only after standardization (it is tiny next to a huge
    # useless one): the nested grid must pick "standardized" from the training folds alone.
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 40)
    X = np.column_stack([1000 * rng.normal(size=80), 1e-3 * (y + 0.1 * rng.normal(size=80))])
    r = linear_probe(X, y, folds=4, seed=0, grid=((False, 1.0), (True, 1.0)))
    assert all(s.startswith("standardized") for s in r["settings"])
    assert r["acc"] > 90
