"""Package a finished training run as a shippable checkpoint folder.

    python -m core.train.release --run RUN_DIR --manifest M --out checkpoints/NAME [--cache DIR] [--split val]

Writes config.json + model.safetensors (fp16, backbone names recorded), train_metrics.jsonl (the
run's per-step log, for the app's training page) and catalog.npz: the split's product ids,
categories, sources, present masks and per-modality / fused embeddings. No titles and no media; the
app reads those from the manifest when it is there. metrics.json and card.md come from
`python -m core.eval` and the person who writes the card.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from ..data.backbones import set_offline
from ..model.catalog import embed_products
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..errors import ScaleError, write_problem
from ..data.records import read_manifest
from ..data.splits import in_split


def release(run: str | Path, manifest: str | Path, out: str | Path, cache_dir: str | None = None,
            split: str = "val") -> Path:
    from ..data.cache import ensure_cache

    run, out = Path(run), Path(out)
    final = run / "final"
    if not final.is_dir():
        raise ScaleError(f"{final}: the run has no final model. Fix: let `python -m core.train` finish (or --resume it).")
    model = load_checkpoint(final, "cpu")
    all_products = read_manifest(manifest)
    cache = ensure_cache(manifest, cache_dir, "cpu", products=all_products, model_cfg=model.cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, extra={"backbones": cache.backbones.to_dict(), "run": str(run)}, dtype=torch.float16)
    write_catalog(out, all_products, cache, split)
    shutil.copyfile(run / "metrics.jsonl", out / "train_metrics.jsonl")
    return out


def write_catalog(out: Path, products: list, cache, split: str) -> Path:
    """out/catalog.npz: the embeddings of `split`'s cached products by the checkpoint saved in `out` (the
    weights that ship, fp16 included), with ids, categories, sources and present masks."""
    model = load_checkpoint(out, "cpu").eval()
    chosen = [p for p in products if p.id in cache and in_split(p.id, p.split, split)]
    items = [dict(cache[p.id], id=p.id, category=p.category or "", source=p.source or "", split=p.split or "")
             for p in chosen]
    cat = embed_products(model, items)
    cat.meta = {"checkpoint": out.name, "split": split, "missing": model.cfg.missing}
    cat.save(out / "catalog.npz")
    return out / "catalog.npz"


def main(argv: list[str] | None = None) -> int:
    set_offline()
    ap = argparse.ArgumentParser(prog="python -m core.train.release", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--split", default="val")
    a = ap.parse_args(argv)
    try:
        out = release(a.run, a.manifest, a.out, a.cache, a.split)
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: the files it replaces are written atomically, so they are whole
        print(f"error: {write_problem(e.filename or a.out, e)}. Fix: free disk space, then run it again.", file=sys.stderr)
        return 2
    print(f"released {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
