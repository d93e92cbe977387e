"""Catalog check: how a product's modality agreement S compares with the rest of the catalog.

S[i, j] alone is hard to read (is 0.31 low?). Here every pair is put against the catalog's own
distribution of that pair: its percentile (share of catalog products whose pair agrees less) and z-score.
The catalog's S comes from its stored pooled features and the model's fusion center in numpy, the same
formula as core.model.score_matrix.score_matrix (no model forward), so a 2,682-product catalog takes milliseconds.

    cs = catalog_scores(cat)                      # per-pair S, percentiles, z of every catalog product
    df = rank_catalog(cat, cs)                    # products ranked by their weakest pair (most suspect first)
    P = matrix_percentiles(S, cs)                 # (5, 5) percentiles of one product's S (an upload)
    takeaway(S, cs)                               # "its image agrees with its title less than 96% of ..."
    swap_benchmark(model, items, categories, ...) # does a swapped image/table/video/audio land in the top 5%?

Ranking: a product's weakness is the lowest robust z-score of its pairs, z = (S - pair median) / (1.4826 *
pair MAD), over all the pairs it has (scope "all"; "text" looks at its title's pairs only, when it has any).
Chosen with `python -m core.bench swap` on shop3k val (v3 model, 5% of products with a swapped modality,
precision in the top 5%, mean over table/image/video/audio and 5 seeds): lowest robust z over all pairs 0.49,
over text pairs 0.35; lowest mean/std z 0.34; lowest percentile 0.24-0.25 (0.23-0.24 with a Sidak correction
for the number of pairs). Percentiles saturate in the tail (the lowest of 286 is 0.2 however far off it is), and
the median/MAD keep the few swapped listings from widening their own yardstick.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..model.catalog import Catalog
from ..errors import ScaleError
from ..eval.metrics import l2n
from ..modalities import INDEX, MODALITIES

# the 10 pairs i < j, text pairs first (the order of the page's lists and the CSV's columns)
PAIRS: tuple[tuple[str, str], ...] = tuple((a, b) for ai, a in enumerate(MODALITIES) for b in MODALITIES[ai + 1:])
PAIR_NAMES: tuple[str, ...] = tuple(f"{a}-{b}" for a, b in PAIRS)
SCOPES = ("all", "text")
# how a pair's modalities are named in a sentence
NOUN = {"text": "title", "table": "spec table", "image": "image", "video": "video", "audio": "audio"}
CSV_COLUMNS = ["rank", "id", "title", "category", "pattern", "weakest_pair", "S", "percentile", "z", "pairs",
               "thumbnail"] + [f"pct:{p}" for p in PAIR_NAMES]


@dataclass
class CatalogScores:
    """Per-pair S of every catalog product and where each falls in its pair's distribution."""
    S: np.ndarray            # (N, 10) S of each pair, NaN where the product lacks either modality
    percentile: np.ndarray   # (N, 10) 0..100: share of catalog products with that pair whose S is lower (ties half)
    z: np.ndarray            # (N, 10) robust z: (S - pair median) / (1.4826 * pair MAD)
    sorted: list[np.ndarray]  # per pair, the catalog's finite S values sorted (for percentiles of new products)
    mean: np.ndarray         # (10,)
    median: np.ndarray       # (10,)
    scale: np.ndarray        # (10,) 1.4826 * MAD (the std for normal data); the std where the MAD is 0

    @property
    def counts(self) -> np.ndarray:
        return np.array([len(v) for v in self.sorted])


def s_centred(cfg) -> bool:
    """Whether the model's S uses centred features (core.model.scale: center_harmony, center_fusion, pooled fusion).
    `cfg`: a ModelConfig or the "model" dict of a checkpoint's config.json (missing keys take the defaults)."""
    from ..model.config import ModelConfig

    d = ModelConfig()
    get = (lambda k: cfg.get(k, getattr(d, k))) if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k, getattr(d, k)))
    return bool(get("center_harmony") and get("center_fusion") and get("fusion") == "pooled")


def centred_features(cat: Catalog, centred: bool = True) -> dict[str, np.ndarray]:
    """Per modality (N, H): l2n(l2n(pooled) - center), as the model's S sees them (zeros where absent);
    plain l2n(pooled) when not `centred` or the catalog stores no center."""
    out = {}
    for i, m in enumerate(MODALITIES):
        z = l2n(cat.pooled[m].astype(np.float32))
        if centred and cat.center is not None:
            z = l2n(z - cat.center[i][None, :].astype(np.float32))
        out[m] = (z * cat.present[:, i, None]).astype(np.float32)
    return out


def pair_scores(cat: Catalog, centred: bool = True) -> np.ndarray:
    """(N, 10) S[i, j] of every catalog product for PAIRS, NaN where a modality is absent. `centred`: as the
    model's S (s_centred(model.cfg)); the catalog's stored center is the model's fusion_center."""
    z = centred_features(cat, centred)
    S = np.full((len(cat), len(PAIRS)), np.nan, dtype=np.float32)
    for k, (a, b) in enumerate(PAIRS):
        both = cat.present[:, INDEX[a]] & cat.present[:, INDEX[b]]
        S[both, k] = np.einsum("nh,nh->n", z[a][both], z[b][both])
    return S


def _percentile(sorted_vals: np.ndarray, v: np.ndarray) -> np.ndarray:
    """0..100 share of `sorted_vals` below v (ties count half); NaN for NaN v or an empty distribution."""
    v = np.asarray(v, dtype=np.float64)
    if not len(sorted_vals):
        return np.full(v.shape, np.nan)
    lo = np.searchsorted(sorted_vals, v, "left")
    hi = np.searchsorted(sorted_vals, v, "right")
    return np.where(np.isfinite(v), 100.0 * (lo + 0.5 * (hi - lo)) / len(sorted_vals), np.nan)


def catalog_scores(cat: Catalog, centred: bool = True) -> CatalogScores:
    """S of every product and pair, its percentile within the catalog and its z-score."""
    if len(cat) == 0:
        raise ScaleError("the catalog has no products. Fix: pick a catalog .npz written by core.model.catalog.")
    S = pair_scores(cat, centred)
    srt = [np.sort(S[np.isfinite(S[:, k]), k]).astype(np.float64) for k in range(len(PAIRS))]
    mean = np.array([v.mean() if len(v) else np.nan for v in srt])
    med = np.array([np.median(v) if len(v) else np.nan for v in srt])
    mad = np.array([1.4826 * np.median(np.abs(v - m)) if len(v) > 1 else np.nan for v, m in zip(srt, med)])
    std = np.array([v.std() if len(v) > 1 else np.nan for v in srt])
    scale = np.where(mad > 0, mad, np.where(std > 0, std, np.nan))
    pct = np.stack([_percentile(srt[k], S[:, k]) for k in range(len(PAIRS))], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (S - med) / scale
    return CatalogScores(S, pct, z, srt, mean, med, scale)


def matrix_percentiles(S: np.ndarray, cs: CatalogScores) -> np.ndarray:
    """(5, 5) percentile of each pair of one product's S among the catalog's; NaN on the diagonal and
    where the product lacks a modality (or the catalog has no product with that pair)."""
    S = np.asarray(S, dtype=np.float64)
    P = np.full((len(MODALITIES), len(MODALITIES)), np.nan)
    for k, (a, b) in enumerate(PAIRS):
        i, j = INDEX[a], INDEX[b]
        P[i, j] = P[j, i] = _percentile(cs.sorted[k], S[i, j])
    return P


def takeaway(S: np.ndarray, cs: CatalogScores) -> str | None:
    """One sentence on the product's least typical pair (lowest percentile; on ties the lowest z, then text
    pairs first), None when it has no pair."""
    P = matrix_percentiles(S, cs)
    found = [(P[INDEX[a], INDEX[b]], (S[INDEX[a], INDEX[b]] - cs.median[k]) / cs.scale[k], k)
             for k, (a, b) in enumerate(PAIRS) if np.isfinite(P[INDEX[a], INDEX[b]])]
    if not found:
        return None
    p, _, k = min(found)
    a, b = PAIRS[k]
    n = int(cs.counts[k])
    s = float(S[INDEX[a], INDEX[b]])
    if p == 0:
        how = f"less than any of the {n} catalog products with both does"
    elif p < 50:
        how = f"less than {100 - p:.0f}% of the {n} catalog products with both do"
    else:
        how = f"more than {p:.0f}% of the {n} catalog products with both do (its weakest pair is still typical)"
    return f"Its {NOUN[b]} agrees with its {NOUN[a]} {how}: S = {s:.2f}, percentile {p:.0f}."


def _scope_mask(present: np.ndarray, scope: str) -> np.ndarray:
    """(N, 10) which pairs count toward each product's weakness."""
    if scope not in SCOPES:
        raise ScaleError(f"ranking scope {scope!r} is not one of {SCOPES}. Fix: use 'text' or 'all'.")
    has = np.stack([present[:, INDEX[a]] & present[:, INDEX[b]] for a, b in PAIRS], axis=1)
    if scope == "all":
        return has
    text = np.array([a == "text" for a, _ in PAIRS])
    use_text = (has & text).any(1)
    return np.where(use_text[:, None], has & text, has)


def weakness(cs: CatalogScores, present: np.ndarray, scope: str = "all", pair: str | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(lowest robust z, its pair's index) per product; NaN / -1 for a product with no pair in scope.
    `pair`: rank by that one pair only (e.g. "text-image")."""
    if pair is not None:
        if pair not in PAIR_NAMES:
            raise ScaleError(f"pair {pair!r} is not one of {PAIR_NAMES}. Fix: name two modalities as 'text-image'.")
        k = PAIR_NAMES.index(pair)
        z = cs.z[:, k]
        return z, np.where(np.isfinite(z), k, -1)
    use = _scope_mask(present, scope) & np.isfinite(cs.z)
    z = np.where(use, cs.z, np.inf)
    idx = np.argmin(z, axis=1)  # first minimum: text pairs come first in PAIRS
    ok = use.any(1)
    return np.where(ok, z[np.arange(len(z)), idx], np.nan), np.where(ok, idx, -1)


def rank_catalog(cat: Catalog, cs: CatalogScores | None = None, scope: str = "all", pair: str | None = None,
                 categories: Sequence[str] | None = None) -> pd.DataFrame:
    """Catalog products, most suspect first: columns CSV_COLUMNS. `pair` ranks by one pair (products without
    it are left out); `categories` keeps only those categories (percentiles stay against the whole catalog)."""
    cs = cs if cs is not None else catalog_scores(cat)
    w, idx = weakness(cs, cat.present, scope, pair)
    rows = np.arange(len(cat))
    k = np.maximum(idx, 0)
    df = pd.DataFrame({
        "id": cat.ids.astype(str), "title": cat.titles.astype(str), "category": cat.categories.astype(str),
        "pattern": cat.pattern(),
        "weakest_pair": np.where(idx >= 0, np.array(PAIR_NAMES)[k], ""),
        "S": np.where(idx >= 0, cs.S[rows, k], np.nan), "percentile": np.where(idx >= 0, cs.percentile[rows, k], np.nan),
        "z": w,
        "pairs": (pair is None) * _scope_mask(cat.present, scope).sum(1) + (pair is not None) * (idx >= 0),
        "thumbnail": cat.thumbnails.astype(str)})
    for j, name in enumerate(PAIR_NAMES):
        df[f"pct:{name}"] = cs.percentile[:, j]
    keep = np.isfinite(w)
    if categories:
        keep &= df["category"].isin([str(c) for c in categories]).to_numpy()
    # stable sort: ties keep catalog order, so the ranking is reproducible
    df = df[keep].sort_values(["z", "S"], kind="mergesort").reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df[CSV_COLUMNS]


# ---------------------------------------------------------------- does the ranking find swapped modalities?
def replace_rows(cat: Catalog, rows: Sequence[int], sub: Catalog) -> Catalog:
    """A copy of `cat` whose products `rows` take `sub`'s embeddings and presence (same order)."""
    rows = np.asarray(rows, dtype=int)
    present, fused = cat.present.copy(), cat.fused.copy()
    present[rows], fused[rows] = sub.present, sub.fused
    pooled = {m: cat.pooled[m].copy() for m in MODALITIES}
    for m in MODALITIES:
        pooled[m][rows] = sub.pooled[m]
    return replace(cat, present=present, fused=fused, pooled=pooled)


def swap_benchmark(model, items: Sequence[Mapping], categories: Sequence[str], fraction: float = 0.05,
                   seeds: Sequence[int] = (0, 1, 2), modalities: Sequence[str] | None = None,
                   scopes: Sequence[str] = SCOPES, batch_size: int = 64, progress=None) -> dict:
    """Swap modality m of `fraction` of the products (those with text and m) for another category's
    (core.eval.mismatch), embed, rank with rank_catalog and count the swapped products in the top `fraction`.

    Products are embedded independently in eval mode, so the catalog is embedded once and only the swapped
    copies are embedded again. Returns per modality and scope: precision and recall at the cut (mean over
    seeds), the chance level, the swapped products' mean rank and their per-seed hits."""
    from ..model.catalog import embed_products
    from ..eval.mismatch import SWAPPABLE, swap_modality, swap_plan

    if not 0 < fraction < 1:
        raise ScaleError(f"fraction must lie in (0, 1), got {fraction}. Fix: pass e.g. --fraction 0.05.")
    modalities = tuple(modalities or SWAPPABLE)
    n = len(items)
    cut = max(1, int(round(fraction * n)))
    base = embed_products(model, items, batch_size=batch_size)
    base.categories = np.asarray([str(c) for c in categories], dtype=str)
    out: dict = {"products": n, "cut": cut, "fraction": fraction, "seeds": list(seeds), "modalities": {}}
    for m in modalities:
        runs = {sc: [] for sc in scopes}
        for seed in seeds:
            plan = swap_plan(items, categories, m, seed)
            if not plan:
                break
            rng = np.random.default_rng([seed, 7, INDEX[m]])
            pick = sorted(rng.choice(len(plan), size=min(cut, len(plan)), replace=False).tolist())
            chosen = [plan[i] for i in pick]
            swapped = embed_products(model, [swap_modality(items[i], items[j], m) for i, j in chosen],
                                     batch_size=batch_size)
            cat = replace_rows(base, [i for i, _ in chosen], swapped)
            cs = catalog_scores(cat, s_centred(model.cfg))
            ids = {str(cat.ids[i]) for i, _ in chosen}
            for sc in scopes:
                ranked = rank_catalog(cat, cs, scope=sc)
                top = set(ranked["id"].head(cut))
                pos = ranked.index[ranked["id"].isin(ids)].to_numpy() + 1
                hits = len(top & ids)
                runs[sc].append({"hits": hits, "swapped": len(ids), "precision": hits / cut, "recall": hits / len(ids),
                                 "mean_rank": float(pos.mean()) if len(pos) else float("nan")})
            if progress is not None:
                progress(m, seed)
        if not runs[scopes[0]]:
            out["modalities"][m] = {"skipped": "no product has text and this modality with a donor of another category"}
            continue
        res = {}
        for sc, rs in runs.items():
            res[sc] = {"precision": round(float(np.mean([r["precision"] for r in rs])), 3),
                       "recall": round(float(np.mean([r["recall"] for r in rs])), 3),
                       "mean_rank": round(float(np.mean([r["mean_rank"] for r in rs])), 1),
                       "hits_per_seed": [r["hits"] for r in rs], "swapped_per_seed": [r["swapped"] for r in rs]}
        res["chance_precision"] = round(float(np.mean([r["swapped"] for r in runs[scopes[0]]])) / n, 3)
        out["modalities"][m] = res
    return out


def ranking_csv(df: pd.DataFrame) -> bytes:
    """The ranking as UTF-8 CSV with CSV_COLUMNS (what the page's download gives)."""
    return df.reindex(columns=CSV_COLUMNS).to_csv(index=False, float_format="%.6g").encode("utf-8")
