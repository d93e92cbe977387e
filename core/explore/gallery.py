"""The home page's one-click demo gallery: a few curated catalog products, chosen by a rule, never by hand.

Rule: only products that are in the catalog and not in the training split (the shipped catalog is the val
split); only products with an image (the gallery shows thumbnails); the most complete products first (most
modalities declared); one per broad category (the category's first level) in each round, preferring a
category not shown yet, until `n` are chosen. Ties break on the id, so the gallery is the same on every run.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.modalities import MODALITIES, pattern
from core.data.records import Product


def broad_category(category: str | None) -> str:
    """"Footwear/Shoes/Heels" -> "Footwear"; "" for no category."""
    return (category or "").split("/")[0].strip()


def completeness(p: Product) -> int:
    """How many of the five modalities the record declares."""
    return sum(p.declared().values())


def choose_gallery(products: Sequence[Product], catalog_ids: Iterable[str], n: int = 8) -> list[Product]:
    """Up to `n` products by the rule above. `catalog_ids`: the ids the catalog holds (its splits are
    what it was embedded from); training products are left out even when a catalog holds them."""
    in_catalog = {str(i) for i in catalog_ids}
    cands = [p for p in products if p.id in in_catalog and (p.split or "") != "train" and p.images]
    cands.sort(key=lambda p: (-completeness(p), p.id))
    groups: dict[str, list[Product]] = {}
    for p in cands:
        groups.setdefault(broad_category(p.category), []).append(p)
    chosen: list[Product] = []
    shown: set[str] = set()
    while len(chosen) < n and any(groups.values()):
        for g in sorted(groups):
            if len(chosen) >= n or not groups[g]:
                continue
            # within a broad category, a full category not shown yet beats a more complete duplicate
            pick = next((p for p in groups[g] if (p.category or "") not in shown), groups[g][0])
            groups[g].remove(pick)
            chosen.append(pick)
            shown.add(pick.category or "")
    return chosen


def presence_code(p: Product) -> str:
    """The declared modalities as the app's presence code (T text, B table, I image, V video, A audio)."""
    d = p.declared()
    return pattern([d[m] for m in MODALITIES])
