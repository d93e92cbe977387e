"""Where a manifest's feature cache lives, and opening it with whatever is missing built first.

One convention for the default folder: `cache/<manifest folder name>` beside the repo (shop3k's manifest ->
cache/shop3k), the folder the README's commands build, the trainer, evaluator and release read, and the app
looks in for catalog-wide contributions. A cache is keyed by product id, so manifests in one folder share it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from .backbones import BackboneConfig
from .features import FeatureCache, build_cache
from .records import read_manifest
from .speech import check_cache_audio

REPO = Path(__file__).resolve().parents[2]


def default_cache_dir(manifest: str | Path) -> Path:
    """cache/<manifest folder name> beside the repo."""
    return REPO / "cache" / Path(manifest).resolve().parent.name


def ensure_cache(manifest: str | Path, cache_dir: str | Path | None, device: str = "auto",
                 rank: int = 0, products: list | None = None, model_cfg=None) -> FeatureCache:
    """Open the feature cache of a manifest, building what is missing (rank 0 builds, others wait).
    With `model_cfg` a cache of another audio backbone is refused first, and missing products are built
    with the model's audio backbone."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(manifest)
    backbones = BackboneConfig(audio=model_cfg.audio_backbone) if model_cfg is not None else BackboneConfig()
    if rank == 0:
        products = products if products is not None else read_manifest(manifest)
        index = cache_dir / "index.json"
        known = set()
        if index.is_file():
            idx = json.loads(index.read_text())
            known = set(idx["products"]) | set(idx["failures"])
            if model_cfg is not None:
                check_cache_audio(cache_dir, BackboneConfig.from_dict(idx.get("backbones", {})), model_cfg)
        if any(p.id not in known for p in products):
            print(f"building features for {sum(p.id not in known for p in products)} products into {cache_dir}", file=sys.stderr)
            build_cache(manifest, cache_dir, device=device, products=products, cfg=backbones)
    if dist.is_initialized():
        dist.barrier()
    return FeatureCache(cache_dir)
