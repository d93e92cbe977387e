""""Use my catalog": turn a manifest found under the roots into the catalog the app's pages search.

    res = build_my_catalog(manifest, checkpoint_dir, model, progress=lambda done, total, phase: ...)
    Catalog.load(res.catalog_path)             # what every page then reads
    AnnIndex.load(res.ann)                     # large catalogs only (above `exact_below` products)

Everything is written to one server-side folder per (manifest, checkpoint), under the work root (env
SCALE_WORK, else cache/my-catalogs beside the repo), never beside the manifest, whose folder may be another
user's data root:

    features/     the feature cache (core.data.features): resumable, failed products retried
    catalog.npz   every embedded product (core.model.catalog.Catalog)
    store/ ann/   memory-mapped fused embeddings and their FAISS index, for catalogs of `exact_below`+ products
    done.json     written last: counts, skipped products, and the fingerprint (manifest and model file sizes
                  and times) that says whether the catalog is still current

An interrupted build keeps every finished feature chunk; the next call builds only the rest. Products that
cannot be used (a bad manifest line, no readable modality) are skipped and listed, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.features import FeatureCache, build_cache, load_index
from ..data.records import scan_manifest
from ..errors import ScaleError
from ..model.catalog import Catalog, embed_products
from ..modalities import MODALITIES
from .ann import EXACT_BELOW, AnnIndex
from .catalog_store import store_from_catalog

REPO = Path(__file__).resolve().parents[2]
WORK_ENV = "SCALE_WORK"
Progress = Callable[[int, int, str], None]  # (done, total, phase) with phase "features" | "embed" | "index"
_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(folder: Path) -> threading.Lock:
    """One build per folder at a time in this process (two app sessions importing the same manifest wait
    for each other; the second then finds the catalog finished)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(folder.resolve(), threading.Lock())


def work_root() -> Path:
    """Where built catalogs go: env SCALE_WORK, else cache/my-catalogs beside the repo."""
    return Path(os.environ.get(WORK_ENV) or REPO / "cache" / "my-catalogs")


def catalog_folder(manifest: str | Path, checkpoint_dir: str | Path, root: str | Path | None = None) -> Path:
    """The folder of one (manifest, checkpoint) pair: its name is the manifest's stem and a hash of both
    resolved paths, so two users' manifests never share a folder and a path never leaks into the name."""
    m, c = Path(manifest).resolve(), Path(checkpoint_dir).resolve()
    digest = hashlib.sha256(f"{m}\0{c}".encode()).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in m.stem)[:40] or "manifest"
    return Path(root or work_root()) / f"{stem}-{digest}"


def fingerprint(manifest: str | Path, checkpoint_dir: str | Path) -> dict:
    """Sizes and modification times of the manifest and the model weights: a change to either means the
    catalog must be embedded again (the features of unchanged products are still reused)."""
    def stat(p: Path) -> list:
        try:
            st = p.stat()
            return [st.st_size, st.st_mtime_ns]
        except OSError:
            return [None, None]

    return {"manifest": stat(Path(manifest)), "model": stat(Path(checkpoint_dir) / "model.safetensors")}


@dataclass
class MyCatalog:
    """What a build produced (also stored as done.json)."""

    folder: Path
    products: int  # embedded
    skipped: list[dict] = field(default_factory=list)  # {"id", "where", "reason"}: left out, with why
    partial: list[dict] = field(default_factory=list)  # {"id", "reason"}: embedded without a broken modality
    features_reused: int = 0  # products whose features were already on disk
    features_built: int = 0  # products featurized by this call (failed ones retried included)
    index: str = "exact"  # "exact", or the ANN kind stored in ann/
    fingerprint: dict = field(default_factory=dict)

    @property
    def catalog_path(self) -> Path:
        return self.folder / "catalog.npz"

    @property
    def features(self) -> Path:
        return self.folder / "features"

    @property
    def ann(self) -> Path | None:
        return self.folder / "ann" if self.index != "exact" else None

    def to_json(self) -> dict:
        d = asdict(self)
        d["folder"] = self.folder.name  # no server path in the file
        return d


def load_done(folder: str | Path) -> MyCatalog | None:
    """The finished build in `folder`, or None (never built, interrupted, or unreadable)."""
    folder = Path(folder)
    try:
        d = json.loads((folder / "done.json").read_text())
        d["folder"] = folder
        out = MyCatalog(**d)
    except (OSError, ValueError, TypeError):
        return None
    return out if out.catalog_path.is_file() else None


def current(manifest: str | Path, checkpoint_dir: str | Path, root: str | Path | None = None) -> MyCatalog | None:
    """The finished build of this manifest with this checkpoint if neither changed since, else None."""
    done = load_done(catalog_folder(manifest, checkpoint_dir, root))
    return done if done is not None and done.fingerprint == fingerprint(manifest, checkpoint_dir) else None


def build_my_catalog(manifest: str | Path, checkpoint_dir: str | Path, model, *, root: str | Path | None = None,
                     progress: Progress | None = None, device: str = "cpu", backbones=None,
                     exact_below: int = EXACT_BELOW, chunk: int = 32, batch_size: int = 64,
                     force: bool = False) -> MyCatalog:
    """Features (resumed), embeddings, and for `exact_below`+ products a memory-mapped store and an ANN index
    of `manifest`'s products under `checkpoint_dir`'s `model` (the loaded model, used read-only).
    `progress(done, total, phase)` is called as work finishes; an exception it raises stops the build, and the
    next call resumes. A current build (same manifest and model files) is returned as is unless `force`."""
    manifest, checkpoint_dir = Path(manifest), Path(checkpoint_dir)
    folder = catalog_folder(manifest, checkpoint_dir, root)
    with _lock(folder):
        return _build(manifest, checkpoint_dir, model, folder, progress, device, backbones, exact_below, chunk,
                      batch_size, force)


def _build(manifest: Path, checkpoint_dir: Path, model, folder: Path, progress: Progress | None, device: str,
           backbones, exact_below: int, chunk: int, batch_size: int, force: bool) -> MyCatalog:
    from .explorer import backbone_config

    fp = fingerprint(manifest, checkpoint_dir)
    done = load_done(folder)
    if done is not None and done.fingerprint == fp and not force:
        if progress is not None:
            progress(done.products, done.products, "done")
        return done
    report = scan_manifest(manifest)  # RecordError (file and fix) only when the whole file is unusable
    skipped = [{"id": q.product_id or "", "where": _local(q.where, manifest), "reason": _local(q.message, manifest)}
               for q in report.problems]
    products = report.products
    if not products:
        raise ScaleError(f"{manifest}: no usable product ({len(skipped)} bad lines). Fix: import the shop export "
                         "again with python -m core.data.records import, or pick another manifest.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").unlink(missing_ok=True)  # from here on the folder holds an unfinished build
    cache_dir = folder / "features"
    known = set()
    if (cache_dir / "index.json").is_file():
        idx = load_index(cache_dir)
        known = {pid for pid in idx["products"] if pid not in idx.get("failures", {})}
    reused = sum(p.id in known for p in products)
    total = len(products)

    def on_chunk(d: int, t: int) -> None:
        if progress is not None:
            progress(reused + d, total, "features")

    if progress is not None:
        progress(reused, total, "features")
    build_cache(manifest, cache_dir, device=device, chunk=chunk, cfg=backbones or backbone_config(checkpoint_dir),
                progress=False, products=products, on_chunk=on_chunk)
    fc = FeatureCache(cache_dir)
    failures = load_index(cache_dir).get("failures", {})
    items, partial = [], []
    for p in products:
        f = failures.get(p.id, {})
        if p.id not in fc:
            skipped.append({"id": p.id, "where": "", "reason": _local(_why(f) or "no usable modality", manifest)})
            continue
        if f:
            partial.append({"id": p.id, "reason": _local(_why(f), manifest)})
        items.append(p)
    if not items:
        raise ScaleError(f"{manifest}: none of its {total} products has a readable modality. Fix: check the media "
                         "paths in the manifest (they resolve against its folder).")
    cat = _embed(model, fc, items, batch_size, progress)
    cat.attach_manifest(products)
    cat.meta.update(checkpoint=checkpoint_dir.name, manifest=manifest.name)
    cat.save(folder / "catalog.npz")
    kind = "exact"
    for sub in ("store", "ann"):
        shutil.rmtree(folder / sub, ignore_errors=True)  # a smaller re-import must not leave an old index
    if len(cat) >= exact_below:
        if progress is not None:
            progress(0, 1, "index")
        store = store_from_catalog(cat, folder / "store")
        index = AnnIndex.build(store.X, store.ids, kind="ivf")
        index.save(folder / "ann")
        kind = index.kind
        if progress is not None:
            progress(1, 1, "index")
    out = MyCatalog(folder, len(cat), skipped, partial, reused, total - reused, kind, fp)
    tmp = folder / "done.json.tmp"
    tmp.write_text(json.dumps(out.to_json(), indent=1))
    tmp.replace(folder / "done.json")
    return out


def _embed(model, fc: FeatureCache, items: Sequence, batch_size: int, progress: Progress | None) -> Catalog:
    """Embed cached products batch by batch (only one batch of features in memory)."""
    parts = []
    for s in range(0, len(items), batch_size):
        batch = []
        for p in items[s: s + batch_size]:
            f = dict(fc[p.id])
            f.update(id=p.id, category=p.category or "", source=p.source or "", split=p.split or "")
            batch.append(f)
        parts.append(embed_products(model, batch, batch_size=batch_size))
        if progress is not None:
            progress(min(s + batch_size, len(items)), len(items), "embed")
    return concat(parts)


def concat(parts: Sequence[Catalog]) -> Catalog:
    """One Catalog from several of the same model (rows in order)."""
    first = parts[0]
    cat = lambda name: np.concatenate([getattr(c, name) for c in parts])  # noqa: E731
    return Catalog(ids=cat("ids"), categories=cat("categories"), sources=cat("sources"), splits=cat("splits"),
                   present=cat("present"), fused=cat("fused"),
                   pooled={m: np.concatenate([c.pooled[m] for c in parts]) for m in MODALITIES},
                   cls={m: np.concatenate([c.cls[m] for c in parts]) for m in MODALITIES},
                   meta=dict(first.meta), center=first.center, weights=first.weights)


def _why(failure: dict) -> str:
    """A feature-cache failure record as one line."""
    bits = [str(failure["rejected"])] if failure.get("rejected") else []
    bits += [str(v) for v in (failure.get("modalities") or {}).values()]
    return " ".join(bits)


def _local(text: str, manifest: Path) -> str:
    """Messages name files relative to the manifest's folder, not by the server's absolute path."""
    base = str(manifest.resolve().parent)
    return text.replace(base + os.sep, "").replace(base, ".")
