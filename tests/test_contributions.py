"""core.explore.contributions: exact Shapley (efficiency, brute force), leave-one-out, attention shares."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core.model.catalog import Catalog

from core.model.inference import forward_items
from core.explore.contributions import (average_precision, catalog_contributions, leave_one_out, modality_contributions,
                                shapley_values, subset_features)
from core.eval.metrics import l2n, retrieval_scores
from core.modalities import MODALITIES


def _brute_force_value(model, feats, subset, cat, nbrs):
    """v(S) by a separate forward of the product restricted to S (no batching, no shared code path)."""
    if not subset:
        return 0.0
    e = forward_items(model, [subset_features(feats, subset)]).fused[0].numpy()
    return float((l2n(cat.fused[nbrs]) @ l2n(e[None])[0]).mean())


def test_shapley_efficiency_and_loo_match_brute_force(setup, model):
    cat = Catalog.load(setup.catalog)
    p = setup.products[0]  # all five modalities
    feats = setup.features[p.id]
    res = modality_contributions(model, feats, cat, k=3, category=p.category, product_id=p.id)
    assert res.modalities == list(MODALITIES)
    full = frozenset(res.modalities)
    for v in res.values:
        assert sum(res.shapley[v].values()) == pytest.approx(res.values[v][full] - res.values[v][frozenset()], abs=1e-6)
    nbrs = [int(np.flatnonzero(cat.ids == i)[0]) for i in res.neighbour_ids]
    assert p.id not in res.neighbour_ids and len(nbrs) == 3
    brute = {frozenset(S): _brute_force_value(model, feats, S, cat, nbrs)
             for r in range(6) for S in itertools.combinations(MODALITIES, r)}
    for S, v in res.values["similarity"].items():
        assert v == pytest.approx(brute[S], abs=1e-4)
    for m in MODALITIES:
        assert res.loo["similarity"][m] == pytest.approx(brute[full] - brute[full - {m}], abs=1e-4)
    # Shapley by its permutation definition (independent of the subset-weight formula)
    n = len(MODALITIES)
    for m in MODALITIES:
        marg = [brute[frozenset(order[:order.index(m) + 1])] - brute[frozenset(order[:order.index(m)])]
                for order in itertools.permutations(MODALITIES)]
        assert res.shapley["similarity"][m] == pytest.approx(sum(marg) / math.factorial(n), abs=1e-4)


def test_ap_matches_core_metrics_and_incomplete_products(setup, model):
    cat = Catalog.load(setup.catalog)
    p = next(p for p in setup.products if not (p.video and p.audio))  # an incomplete product
    feats = setup.features[p.id]
    res = modality_contributions(model, feats, cat, k=2, category=p.category, product_id=p.id)
    assert 2 <= len(res.modalities) < 5 and len(res.subsets) == 2 ** len(res.modalities)
    full = frozenset(res.modalities)
    e = forward_items(model, [feats]).fused[0].numpy()
    ref = retrieval_scores(l2n(e[None]), l2n(cat.fused), [p.category], cat.categories, [p.id], cat.ids, ks=(10,))
    assert 100 * res.values["ap"][full] == pytest.approx(ref["mAP@10"], abs=1e-3)
    assert sum(res.shapley["ap"].values()) == pytest.approx(res.values["ap"][full], abs=1e-9)


def test_game_helpers_on_a_known_game():
    v = {frozenset(S): float(len(S) ** 2) for r in range(4) for S in itertools.combinations("abc", r)}
    phi = shapley_values(list("abc"), v)
    assert all(x == pytest.approx(3.0) for x in phi.values())  # symmetric game: 9 / 3
    assert leave_one_out(list("abc"), v)["a"] == pytest.approx(9 - 4)
    ap, first = average_precision(np.array([0.9, 0.8, 0.1]), np.array([False, True, True]), K=10)
    assert first == 2 and ap == pytest.approx(1 / 2)  # k = min(K, 2 positives): only the hit at rank 2 counts


def test_catalog_contributions_bounded_sampling(setup, model):
    cat = Catalog.load(setup.catalog)
    cats = {p.id: p.category for p in setup.products}
    df = catalog_contributions(model, setup.features, cats, cat, per_category=1, k=2)
    assert set(df.index) == set(cats.values()) and (df["n"] == 1).all()
    assert set(MODALITIES) <= set(df.columns)
