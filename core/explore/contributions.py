"""Which modality matters for one product: leave-one-out and exact Shapley values, plus JCT attention shares.

The "game" is played over the product's present modalities (n <= 5, so 2^n <= 32 subsets). A
subset is the product with every other modality removed (missing="mask": their tokens are dropped,
not zeroed); all subsets run in one batched forward. Two value functions of a subset S:

- `similarity`: mean cosine between the subset's fused embedding and the product's k nearest catalog
  neighbours, the neighbours fixed once from the full product;
- `ap`: category-retrieval AP@K of the subset's embedding against the catalog (positives = products
  of the same category, the product's own id dropped), with `rank` = 1-based rank of the first hit.

v(empty set) = 0 for both: an empty product has the zero embedding (cosine 0 with everything) and no
ranking. Shapley efficiency therefore reads: sum of values = v(all present) - 0.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..model.catalog import Catalog

from ..model.inference import forward_items
from ..eval.metrics import l2n
from ..modalities import MODALITIES, present_names

VALUE_NAMES = ("similarity", "ap")


def subset_features(features: Mapping, keep: Sequence[str]) -> dict:
    """The product's features with only the modalities in `keep` (plus its id)."""
    keep = set(keep)
    return {k: v for k, v in features.items() if k == "id" or k.split(".")[0] in keep}


# ---------------------------------------------------------------- game theory (pure functions)
def shapley_values(players: Sequence[str], value: Mapping[frozenset, float]) -> dict[str, float]:
    """Exact Shapley values: phi_i = sum_{S without i} |S|!(n-|S|-1)!/n! (v(S + i) - v(S))."""
    n = len(players)
    out = {}
    for p in players:
        others = [q for q in players if q != p]
        phi = 0.0
        for r in range(n):
            w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
            for S in itertools.combinations(others, r):
                s = frozenset(S)
                phi += w * (value[s | {p}] - value[s])
        out[p] = phi
    return out


def leave_one_out(players: Sequence[str], value: Mapping[frozenset, float]) -> dict[str, float]:
    """v(all) - v(all without i)."""
    full = frozenset(players)
    return {p: value[full] - value[full - {p}] for p in players}


def average_precision(scores: np.ndarray, positives: np.ndarray, K: int = 10) -> tuple[float, int]:
    """AP@K (SCALE.md section 8, x1 not x100) and the 1-based rank of the first positive
    (len+1 when there is none). Ties keep gallery order (stable sort), as core.eval.metrics does."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    first = int(np.argmax(hits)) + 1 if hits.any() else len(hits) + 1
    k = min(K, int(positives.sum()), len(scores))
    if k <= 0:
        return 0.0, first
    top = hits[:k]
    if not top.any():
        return 0.0, first
    cum = np.cumsum(top)
    return float((cum / np.arange(1, k + 1))[top].sum() / top.sum()), first


# ---------------------------------------------------------------- one product
@dataclass
class Contributions:
    modalities: list[str]  # the players: present modalities of the product
    subsets: list[frozenset]  # every subset, the empty one first
    values: dict[str, dict[frozenset, float]]  # value name -> subset -> value
    ranks: dict[frozenset, int]  # first-hit rank per subset (category retrieval)
    shapley: dict[str, dict[str, float]]  # value name -> modality -> Shapley value
    loo: dict[str, dict[str, float]]  # value name -> modality -> leave-one-out drop
    neighbour_ids: list[str] = field(default_factory=list)
    neighbour_scores: list[float] = field(default_factory=list)
    category: str | None = None

    def table(self) -> pd.DataFrame:
        """One row per modality: Shapley and LOO of each value function."""
        rows = []
        for m in self.modalities:
            row = {"modality": m}
            for v in self.shapley:
                row[f"shapley_{v}"] = self.shapley[v][m]
                row[f"loo_{v}"] = self.loo[v][m]
            rows.append(row)
        return pd.DataFrame(rows)

    def subset_table(self) -> pd.DataFrame:
        rows = []
        for s in self.subsets:
            row = {"subset": "+".join(m for m in MODALITIES if m in s) or "(none)", "size": len(s)}
            for v in self.values:
                row[v] = self.values[v][s]
            row["first_hit_rank"] = self.ranks.get(s)
            rows.append(row)
        return pd.DataFrame(rows)


def subset_embeddings(model: torch.nn.Module, features: Mapping, players: Sequence[str],
                      missing: str = "mask") -> tuple[list[frozenset], np.ndarray]:
    """All non-empty subsets of `players` in one forward. Returns (subsets, fused (n_subsets, H))."""
    subsets = [frozenset(c) for r in range(1, len(players) + 1) for c in itertools.combinations(players, r)]
    items = [subset_features(features, s) for s in subsets]
    out = forward_items(model, items, missing)
    return subsets, out.fused.float().cpu().numpy()


def modality_contributions(model: torch.nn.Module, features: Mapping, catalog: Catalog, k: int = 10,
                           category: str | None = None, product_id: str | None = None, K: int = 10,
                           missing: str = "mask", exclude: np.ndarray | None = None) -> Contributions:
    """LOO and exact Shapley of each present modality for neighbour similarity and (when `category`
    is known) category-retrieval AP@K against the catalog's fused embeddings. `exclude` (N,) bool drops
    catalog rows besides `product_id` (an upload's duplicate in the catalog)."""
    players = present_names(features)
    if not players:
        raise ValueError("the product has no modality, so there is nothing to attribute")
    subsets, emb = subset_embeddings(model, features, players, missing)
    G = l2n(catalog.fused)
    E = l2n(emb)
    own = catalog.ids == product_id if product_id is not None else np.zeros(len(catalog), dtype=bool)
    exclude = own if exclude is None else (own | np.asarray(exclude, dtype=bool))
    full = frozenset(players)
    sims_full = np.where(exclude, -np.inf, G @ E[subsets.index(full)])
    kk = int(min(k, np.isfinite(sims_full).sum()))
    nbrs = np.argsort(-sims_full, kind="stable")[:kk]

    empty = frozenset()
    values: dict[str, dict[frozenset, float]] = {"similarity": {empty: 0.0}}
    ranks: dict[frozenset, int] = {}
    keep = ~exclude
    positives = (catalog.categories[keep] == category) if category else None
    if positives is not None and positives.any():
        values["ap"] = {empty: 0.0}
        ranks[empty] = int(keep.sum()) + 1
    for s, e in zip(subsets, E):
        scores = G @ e  # (N,)
        values["similarity"][s] = float(scores[nbrs].mean()) if kk else 0.0
        if "ap" in values:
            values["ap"][s], ranks[s] = average_precision(scores[keep], positives, K)
    return Contributions(
        modalities=players, subsets=[empty] + subsets, values=values, ranks=ranks,
        shapley={v: shapley_values(players, values[v]) for v in values},
        loo={v: leave_one_out(players, values[v]) for v in values},
        neighbour_ids=catalog.ids[nbrs].tolist(), neighbour_scores=sims_full[nbrs].astype(float).tolist(),
        category=category)


# ---------------------------------------------------------------- JCT attention
def attention_shares(attention: Sequence[torch.Tensor], token_type: torch.Tensor, token_mask: torch.Tensor,
                     b: int = 0) -> np.ndarray:
    """5x5 cross-modal attention shares of sample b: row i = query modality, column j = key modality,
    entry = attention mass the valid query tokens of i put on the tokens of j, averaged over tokens,
    heads and layers, rows normalized to 1. Rows of modalities with no valid token are NaN."""
    A = torch.stack([a[b].float() for a in attention]).mean(dim=(0, 1))  # (T, T)
    valid = token_mask[b].bool()
    tt = token_type.to(A.device)
    M = len(MODALITIES)
    onehot = torch.nn.functional.one_hot(tt, M).float()  # (T, M)
    to_mod = A @ onehot  # (T, M): mass each query token puts on each modality
    out = np.full((M, M), np.nan)
    for i in range(M):
        q = (tt == i) & valid
        if q.any():
            row = to_mod[q].mean(0)
            out[i] = (row / row.sum().clamp(min=1e-12)).cpu().numpy()
    return out


# ---------------------------------------------------------------- whole catalog
def catalog_contributions(model: torch.nn.Module, cache_or_items: "Mapping[str, Mapping] | Sequence[Mapping]",
                          categories: "Mapping[str, str] | Sequence[str]", catalog: Catalog,
                          per_category: int = 5, k: int = 10, value: str = "similarity", seed: int = 0,
                          max_categories: int | None = None,
                          progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Mean Shapley value per modality per category (rows: categories; columns: modalities, then `n`).

    `cache_or_items`: id -> features (a FeatureCache works) or a list of features dicts with "id".
    `categories`: id -> category, or a list aligned with the items. At most `per_category` products
    per category are sampled (seeded), so the cost is bounded. Modalities a product lacks count as
    no contribution for that product: they are averaged over the products that have them (NaN if none).
    """
    if isinstance(cache_or_items, Mapping) or hasattr(cache_or_items, "keys"):
        ids = [str(i) for i in cache_or_items.keys()]  # type: ignore[union-attr]
        get = lambda pid: cache_or_items[pid]  # noqa: E731
    else:
        items = list(cache_or_items)
        ids = [str(it.get("id", i)) for i, it in enumerate(items)]
        lookup = dict(zip(ids, items))
        get = lookup.__getitem__
    cat_of = dict(categories) if isinstance(categories, Mapping) else dict(zip(ids, categories))
    by_cat: dict[str, list[str]] = {}
    for pid in ids:
        c = cat_of.get(pid)
        if c:
            by_cat.setdefault(str(c), []).append(pid)
    rng = np.random.default_rng(seed)
    cats = sorted(by_cat, key=lambda c: (-len(by_cat[c]), c))[: max_categories or None]
    picks = [(c, pid) for c in cats
             for pid in rng.choice(by_cat[c], size=min(per_category, len(by_cat[c])), replace=False).tolist()]
    sums = {c: {m: [] for m in MODALITIES} for c in cats}
    for n, (c, pid) in enumerate(picks):
        feats = dict(get(pid))
        feats["id"] = pid
        if present_names(feats):
            res = modality_contributions(model, feats, catalog, k=k, category=c, product_id=pid)
            vals = res.shapley.get(value, res.shapley["similarity"])
            for m, v in vals.items():
                sums[c][m].append(v)
        if progress is not None:
            progress(n + 1, len(picks))
    rows = [{"category": c, **{m: (float(np.mean(v)) if v else np.nan) for m, v in sums[c].items()},
             "n": len([p for cc, p in picks if cc == c])} for c in cats]
    return pd.DataFrame(rows).set_index("category") if rows else pd.DataFrame(columns=[*MODALITIES, "n"])
