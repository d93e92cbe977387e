"""Catalog embeddings: every catalog product's SCALE outputs, computed once and stored as one .npz.

The forward passes themselves are core.model.inference. Stable API (the trainer/evaluator writes `catalog.npz` with it; the app reads it):

    items = [features dict with "id" (and optionally "category", "source", "split") per product]
    cat = embed_products(model, items, batch_size=64, missing=None)   # -> Catalog
    cat.save("checkpoints/<run>/catalog.npz")
    cat = Catalog.load("checkpoints/<run>/catalog.npz")
    X = cat.embedding("fused" | "<modality>" | "pooled:<modality>" | "sum:<m1>+<m2>")  # (N, H)
    cat.attach_manifest(products)   # titles / thumbnail paths / categories by id

Fields (N products, H hidden, modality order of `core.modalities.MODALITIES`):
    ids, categories, sources, splits, titles, thumbnails  (N,) str ("" when unknown)
    present (N, 5) bool
    fused (N, H) float32                    the model's fused product embedding
    pooled[m], cls[m] (N, H) float32        pre-fusion pooled / post-JCT first token, zeros where absent

Storage: float16 in the .npz (embeddings are compared by cosine; fp16 loses nothing visible), strings
as unicode arrays, loaded with allow_pickle=False.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import ScaleError
from ..eval.metrics import l2n
from ..modalities import MODALITIES
from .inference import forward_items

FORMAT_VERSION = 1


@dataclass
class Catalog:
    ids: np.ndarray
    categories: np.ndarray
    sources: np.ndarray
    splits: np.ndarray
    present: np.ndarray
    fused: np.ndarray
    pooled: dict[str, np.ndarray]
    cls: dict[str, np.ndarray]
    titles: np.ndarray | None = None
    thumbnails: np.ndarray | None = None
    meta: dict = field(default_factory=dict)  # free-form strings (checkpoint name, missing mode)
    center: np.ndarray | None = None  # (5, H) the model's fusion_center when it centres the fused sum
    weights: np.ndarray | None = None  # (5,) the model's fusion_weights (None: all ones)

    def __post_init__(self) -> None:
        n = len(self.ids)
        blank = np.full(n, "", dtype=str)
        self.titles = blank.copy() if self.titles is None else np.asarray(self.titles, dtype=str)
        self.thumbnails = blank.copy() if self.thumbnails is None else np.asarray(self.thumbnails, dtype=str)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def hidden(self) -> int:
        return int(self.fused.shape[1])

    # ---------------------------------------------------------------- features for retrieval / maps
    def embedding(self, kind: str = "fused") -> np.ndarray:
        """(N, H) float32 rows for `kind`:
        - "fused": the fused product embedding;
        - "<modality>": that modality's L2-normalized pooled (pre-fusion) feature, the space the
          contrastive loss aligns across modalities (zeros where absent);
        - "cls:<modality>": its post-fusion first token, L2-normalized;
        - "sum:<m1>+<m2>+...": the authors' retrieval feature, the sum of the L2-normalized pooled
          features of those modalities over the ones each product has (each minus the model's
          fusion center when it has one and times its fusion weight, as the fused embedding).
        """
        if kind == "fused":
            return self.fused
        if kind in self.pooled:
            return l2n(self.pooled[kind])
        if kind.startswith("pooled:") and kind[7:] in self.pooled:
            return l2n(self.pooled[kind[7:]])
        if kind.startswith("cls:") and kind[4:] in self.cls:
            return l2n(self.cls[kind[4:]])
        if kind.startswith("sum:"):
            mods = [m for m in kind[4:].split("+") if m]
            bad = [m for m in mods if m not in self.cls]
            if bad or not mods:
                raise ScaleError(f"embedding kind {kind!r}: unknown modality {bad}. Fix: use names from {MODALITIES}.")
            idx = [MODALITIES.index(m) for m in mods]
            c = self.center if self.center is not None else np.zeros((len(MODALITIES), self.hidden), np.float32)
            w = self.weights if self.weights is not None else np.ones(len(MODALITIES), np.float32)
            return sum(w[i] * (l2n(self.pooled[m]) - c[i]) * self.present[:, i, None]
                       for m, i in zip(mods, idx)).astype(np.float32)
        raise ScaleError(f"unknown embedding kind {kind!r}. Fix: use 'fused', a modality name, "
                         "'cls:<modality>' or 'sum:<m1>+<m2>'.")

    def pattern(self) -> np.ndarray:
        """Missing-modality pattern per product, e.g. 'TBI-A'."""
        from ..modalities import pattern

        return np.array([pattern(row) for row in self.present], dtype=str)

    # ---------------------------------------------------------------- manifest join
    def attach_manifest(self, products: Sequence) -> int:
        """Fill titles, thumbnails (first image path) and missing categories/sources from Products by id.
        Returns how many catalog ids were found among the products."""
        by_id = {p.id: p for p in products}
        # work on Python lists: numpy unicode arrays are fixed-width and would truncate longer titles
        titles, thumbs = self.titles.tolist(), self.thumbnails.tolist()
        cats, srcs = self.categories.tolist(), self.sources.tolist()
        found = 0
        for i, pid in enumerate(self.ids.tolist()):
            p = by_id.get(str(pid))
            if p is None:
                continue
            found += 1
            titles[i] = p.title or ""
            thumbs[i] = p.images[0] if p.images else ""
            if not cats[i] and p.category:
                cats[i] = p.category
            if not srcs[i] and p.source:
                srcs[i] = p.source
        self.titles, self.thumbnails = np.array(titles, dtype=str), np.array(thumbs, dtype=str)
        self.categories, self.sources = np.array(cats, dtype=str), np.array(srcs, dtype=str)
        return found

    # ---------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "version": np.array(FORMAT_VERSION),
            "ids": np.asarray(self.ids, dtype=str), "categories": np.asarray(self.categories, dtype=str),
            "sources": np.asarray(self.sources, dtype=str), "splits": np.asarray(self.splits, dtype=str),
            "titles": np.asarray(self.titles, dtype=str), "thumbnails": np.asarray(self.thumbnails, dtype=str),
            "present": np.asarray(self.present, dtype=bool), "fused": self.fused.astype(np.float16),
            "meta_keys": np.asarray(list(self.meta), dtype=str),
            "meta_values": np.asarray([str(v) for v in self.meta.values()], dtype=str),
        }
        if self.center is not None:
            arrays["center"] = np.asarray(self.center, dtype=np.float32)
        if self.weights is not None:
            arrays["weights"] = np.asarray(self.weights, dtype=np.float32)
        for m in MODALITIES:
            arrays[f"pooled.{m}"] = self.pooled[m].astype(np.float16)
            arrays[f"cls.{m}"] = self.cls[m].astype(np.float16)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)  # atomic: a reader never sees half a catalog
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Catalog":
        path = Path(path)
        if not path.is_file():
            raise ScaleError(f"{path}: catalog file not found. Fix: run the evaluator (it writes catalog.npz) "
                             "or build one with core.model.catalog.embed_products(...).save(path).")
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ScaleError(f"{path}: not a readable catalog .npz ({e}). Fix: rebuild it.") from None
        need = ["ids", "present", "fused"] + [f"{p}.{m}" for p in ("pooled", "cls") for m in MODALITIES]
        missing = [k for k in need if k not in d]
        if missing:
            raise ScaleError(f"{path}: catalog lacks arrays {missing}. Fix: rebuild it with core.model.catalog.")
        n = len(d["ids"])
        blank = np.full(n, "", dtype=str)
        return cls(
            ids=d["ids"].astype(str), categories=d.get("categories", blank).astype(str),
            sources=d.get("sources", blank).astype(str), splits=d.get("splits", blank).astype(str),
            present=d["present"].astype(bool), fused=d["fused"].astype(np.float32),
            pooled={m: d[f"pooled.{m}"].astype(np.float32) for m in MODALITIES},
            cls={m: d[f"cls.{m}"].astype(np.float32) for m in MODALITIES},
            titles=d.get("titles"), thumbnails=d.get("thumbnails"),
            center=d["center"].astype(np.float32) if "center" in d else None,
            weights=d["weights"].astype(np.float32) if "weights" in d else None,
            meta=dict(zip(d.get("meta_keys", np.array([], dtype=str)).tolist(),
                          d.get("meta_values", np.array([], dtype=str)).tolist())),
        )


def embed_products(model: torch.nn.Module, items: Sequence[Mapping], batch_size: int = 64,
                   missing: str | None = None, progress=None) -> Catalog:
    """Embed feature dicts (each with "id"; optional "category"/"source"/"split" strings) into a Catalog.

    `missing`: None = the model's own mode. `progress(done, total)` is called after each batch.
    """
    if not items:
        raise ScaleError("embed_products got no products. Fix: pass at least one features dict.")
    fused, pooled, cls_, present = [], {m: [] for m in MODALITIES}, {m: [] for m in MODALITIES}, []
    for s in range(0, len(items), batch_size):
        out = forward_items(model, items[s: s + batch_size], missing)
        fused.append(out.fused.float().cpu().numpy())
        present.append(out.present.cpu().numpy())
        for m in MODALITIES:
            pooled[m].append(out.pooled[m].float().cpu().numpy())
            cls_[m].append(out.cls[m].float().cpu().numpy())
        if progress is not None:
            progress(min(s + batch_size, len(items)), len(items))

    def col(key: str) -> np.ndarray:
        return np.array([str(it.get(key) or "") for it in items], dtype=str)

    return Catalog(ids=np.array([str(it.get("id", i)) for i, it in enumerate(items)], dtype=str),
                   categories=col("category"), sources=col("source"), splits=col("split"),
                   present=np.concatenate(present).astype(bool), fused=np.concatenate(fused),
                   pooled={m: np.concatenate(v) for m, v in pooled.items()},
                   cls={m: np.concatenate(v) for m, v in cls_.items()},
                   meta={"missing": missing or model.cfg.missing},
                   center=model.fusion_center.float().cpu().numpy() if getattr(model.cfg, "center_fusion", False) else None,
                   weights=model.fusion_weights.float().cpu().numpy())
