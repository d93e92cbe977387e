"""A feature cache made from another one: image and video features copied, text, table and audio redone.

    python -m core.data.features build --manifest M --out NEW --audio-backbone whisper-tiny.en --reuse-from OLD

A new audio backbone should not redo the CNN (18 min for shop3k on 2 cores). A product's image and video
features are copied from OLD when OLD holds the product and none of its image or video files changed
since OLD's shard of it was written (file mtime); its text and table are tokenized again (cheap, and a
manifest edit is followed) and its audio is decoded and encoded with NEW's audio backbone. Any other
product is featurized whole, CNN included. OLD must name the same image and text backbones as NEW.
Layout, atomic writes and resume are those of `core.features.build_cache` (one process); NEW's
index.json also records "reused_from".
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbones import BackboneConfig, load_tokenizer, resolve_device
from ..errors import CacheError
from .features import (FeatureCache, _atomic_write_bytes, _chunks, _reserve_shard,
                       manifest_products, open_index, summarize)
from .featurize import Featurizer
from ..modalities import INDEX, pattern, present_in
from .records import Product
from .speech import audio_frontend

COPIED = ("image", "video")  # modalities whose features (and decode errors) come from OLD
MAX_IMAGES = 8  # as Featurizer.decode: the first image that decodes of these is the one encoded


def _unchanged(product: Product, built_at: float) -> bool:
    """True if none of the product's image / video files is newer than `built_at` (or gone)."""
    for path in [*product.images[:MAX_IMAGES], *([product.video] if product.video else [])]:
        try:
            if os.stat(path).st_mtime > built_at:
                return False
        except OSError:  # gone or unreadable now: featurize whole, which records the error
            return False
    return True


def _light_featurizer(cfg: BackboneConfig, device: str) -> Featurizer:
    """Tokenizer and audio frontend only: decode(visual=False) and encode_many never touch the CNN."""
    fz = Featurizer.__new__(Featurizer)
    fz.cfg, fz.tokenizer, fz.audio, fz.audio_from_video = cfg, load_tokenizer(cfg.text), audio_frontend(cfg, device), True
    return fz


def build_reusing(manifest: str | Path, out: str | Path, source: str | Path, cfg: BackboneConfig,
                  limit: int | None = None, device: str = "auto", chunk: int = 32, progress: bool = True,
                  products: Sequence[Product] | None = None) -> dict:
    """Build (or resume) the cache `out` for `cfg`, copying image / video features from `source`.
    Returns the summary dict of `build_cache` plus reused / featurized_whole / audio_from counts."""
    from safetensors.numpy import save as save_bytes
    from tqdm import tqdm

    out, source = Path(out), Path(source)
    if out.resolve() == source.resolve():
        raise CacheError(f"{out}: --reuse-from names the output folder itself. Fix: write the new cache to another --out.")
    src = FeatureCache(source)
    if replace(src.backbones, audio=cfg.audio) != cfg:
        raise CacheError(f"{source}: its image / text backbones {src.backbones.to_dict()} are not the ones asked for "
                         f"{cfg.to_dict()}, so its features cannot be reused. Fix: build without --reuse-from.")
    all_products, problems = manifest_products(manifest, products, limit)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    index = open_index(index_path, cfg, manifest)
    index.setdefault("failures", {})
    index["manifest_problems"] = problems
    index["reused_from"] = str(source)
    gone = sorted(pid for pid, e in index["products"].items() if not (shards / e["shard"]).is_file())
    for pid in gone:
        del index["products"][pid]
    todo = [p for p in all_products if p.id not in index["products"] or p.id in index["failures"]]
    dev = str(resolve_device(device))
    light = _light_featurizer(cfg, dev) if todo else None
    full: Featurizer | None = None  # the CNN is loaded only if some product cannot reuse
    counts: Counter = Counter()
    started = time.time()
    bar = tqdm(total=len(todo), unit="product", disable=not progress, desc="features (reuse)", dynamic_ncols=True)
    for group in _chunks(todo, chunk):
        reuse, whole = [], []
        for p in group:
            e = src.products.get(p.id)
            ok = e is not None and (src.root / "shards" / e["shard"]).is_file()
            (reuse if ok and _unchanged(p, (src.root / "shards" / e["shard"]).stat().st_mtime) else whole).append(p)
        results: dict[str, tuple[dict, dict, str | None]] = {}  # id -> features, errors, audio source
        if reuse:
            decoded = [light.decode(p, visual=False, video_ok=src.present(p.id)[INDEX["video"]]) for p in reuse]
            for p, d, f in zip(reuse, decoded, light.encode_many(decoded)):
                old = src[p.id]
                f.update({k: v for k, v in old.items() if k.split(".")[0] in COPIED})
                old_errors = src.index["failures"].get(p.id, {}).get("modalities", {})
                errors = {m: msg for m, msg in old_errors.items() if m in COPIED}
                errors.update(d.errors)
                results[p.id] = (f, errors, d.audio_source)
            counts["reused"] += len(reuse)
        if whole:
            full = full or Featurizer(cfg, device)
            decoded = [full.decode(p) for p in whole]
            for p, d, f in zip(whole, decoded, full.encode_many(decoded)):
                results[p.id] = (f, dict(d.errors), d.audio_source)
            counts["featurized_whole"] += len(whole)
        src._shards.clear()  # OLD is read in order: keep only the shards of this chunk in memory
        name = _reserve_shard(shards, {e["shard"] for e in index["products"].values()})
        tensors: dict[str, np.ndarray] = {}
        for p in group:
            f, errors, audio_source = results[p.id]
            index["failures"].pop(p.id, None)
            if errors:
                index["failures"][p.id] = {"modalities": errors}
            if not f:
                index["failures"].setdefault(p.id, {})["rejected"] = f"product {p.id!r} has no usable modality left."
                index["products"].pop(p.id, None)
                continue
            if audio_source and "audio.patches" in f:
                counts[f"audio_from_{audio_source}"] += 1
            for k, v in f.items():
                tensors[f"{p.id}/{k}"] = np.ascontiguousarray(v)
            index["products"][p.id] = {"shard": name, "pattern": pattern(present_in(f)), "split": p.split,
                                       "category": p.category}
        if tensors:
            _atomic_write_bytes(shards / name, save_bytes(tensors))
        else:
            (shards / name).unlink(missing_ok=True)
        _atomic_write_bytes(index_path, json.dumps(index).encode())
        bar.update(len(group))
    bar.close()
    if not todo:
        _atomic_write_bytes(index_path, json.dumps(index).encode())
    s = summarize(index, time.time() - started, len(todo))
    s.update(reused=counts["reused"], featurized_whole=counts["featurized_whole"], rebuilt_missing_shards=len(gone),
             audio_from={"file": counts["audio_from_file"], "video": counts["audio_from_video"]},
             audio_backbone=cfg.audio, reused_from=str(source))
    return s
