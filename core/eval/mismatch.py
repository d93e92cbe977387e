"""Mismatch detection: does S notice a listing whose parts do not belong together?

For each product with text and modality m, a copy gets m from a product of another category (seeded).
S[text, m] of the real products against the swapped copies, ranked, gives a ROC AUC per modality:
1.0 means every swapped listing scores below every real one, 0.5 is chance. This is what a catalog
team needs from S: photos, videos, spec tables or audio that belong to another listing.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from ..modalities import INDEX, MODALITIES

SWAPPABLE = tuple(m for m in MODALITIES if m != "text")


def _has(item: Mapping, m: str) -> bool:
    return any(k.startswith(m + ".") for k in item)


def swap_modality(item: Mapping, donor: Mapping, m: str) -> dict:
    """A copy of `item` whose modality m (every `m.*` feature key) comes from `donor`."""
    out = {k: v for k, v in item.items() if not k.startswith(m + ".")}
    out.update({k: v for k, v in donor.items() if k.startswith(m + ".")})
    return out


def swap_plan(items: Sequence[Mapping], categories: Sequence[str], m: str, seed: int = 0) -> list[tuple[int, int]]:
    """(product, donor) pairs: every product with text and m, and a donor with m from another category."""
    cats = np.asarray([str(c) for c in categories])
    has_m = np.array([_has(it, m) for it in items])
    rng = np.random.default_rng([seed, INDEX[m]])
    plan = []
    for i, it in enumerate(items):
        if not (has_m[i] and _has(it, "text")):
            continue
        donors = np.flatnonzero(has_m & (cats != cats[i]))
        if len(donors):
            plan.append((i, int(rng.choice(donors))))
    return plan


def text_agreement(model, items: Sequence[Mapping], batch_size: int = 64, missing: str | None = None) -> np.ndarray:
    """(N, 5): the text row of S, S[text, m] for every modality m, of each item (NaN where either is absent)."""
    from ..model.inference import forward_items

    out = []
    for s in range(0, len(items), batch_size):
        S = forward_items(model, items[s: s + batch_size], missing).S
        out.append(S[:, INDEX["text"]].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(MODALITIES)), np.float32)


def mismatch_auc(model, items: Sequence[Mapping], categories: Sequence[str], seed: int = 0,
                 modalities: Sequence[str] = SWAPPABLE, batch_size: int = 64, missing: str | None = None) -> dict:
    """Per modality: {"auc", "n", "real_mean", "swapped_mean"} of S[text, m] for real vs swapped copies."""
    res: dict = {}
    real_rows = None  # one forward over the real items serves every modality
    for m in modalities:
        plan = swap_plan(items, categories, m, seed)
        if len(plan) < 2:
            continue
        if real_rows is None:
            real_rows = text_agreement(model, items, batch_size, missing)
        real = real_rows[[i for i, _ in plan], INDEX[m]]
        swapped = text_agreement(model, [swap_modality(items[i], items[j], m) for i, j in plan], batch_size,
                                 missing)[:, INDEX[m]]
        y = np.concatenate([np.ones(len(real)), np.zeros(len(swapped))])
        res[m] = {"auc": round(float(roc_auc_score(y, np.concatenate([real, swapped]))), 4), "n": len(plan),
                  "real_mean": round(float(real.mean()), 4), "swapped_mean": round(float(swapped.mean()), 4)}
    return res
