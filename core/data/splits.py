"""Data splits: the manifest's `train` / `val`, and a `dev` split carved from train.

Recipe choices (loss weights, epochs, pooling, fusion weights, temperatures) are made on `dev`;
`val` is only reported. `dev` is about 10% of the manifest's train products, chosen by a hash of
the product id, so it is the same on every machine, for every seed and whatever the manifest order.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

DEV_PERCENT = 10
SPLITS = ("train", "dev", "val", "all")


def is_dev(product_id: str) -> bool:
    """True for the ~10% of ids whose SHA-1 falls in the dev bucket (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha1(str(product_id).encode("utf-8", "surrogatepass")).digest()[:4], "big")
    return h % 100 < DEV_PERCENT


def split_of(product_id: str, manifest_split: str | None) -> str | None:
    """The split a product belongs to: a manifest `train` product in the dev bucket is `dev`."""
    if manifest_split == "train" and is_dev(product_id):
        return "dev"
    return manifest_split


def in_split(product_id: str, manifest_split: str | None, split: str | None) -> bool:
    """Whether a product belongs to `split` ("all" or None: every product)."""
    return split in (None, "all") or split_of(product_id, manifest_split) == split


def select(products: Iterable, split: str | None) -> list:
    """The products (objects with `.id` and `.split`) of one split, in manifest order."""
    return [p for p in products if in_split(p.id, p.split, split)]
