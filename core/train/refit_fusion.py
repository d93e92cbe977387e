"""Refit a checkpoint's fusion weights on dev, without retraining.

    python -m core.train.refit_fusion --checkpoint checkpoints/NAME --manifest M [--cache DIR] [--on dev]

The fused embedding's weights are fitted at the end of training (core.train.fusion). When the fitting rule
changes, this applies it to a trained model: it fits on `--on` (never val), rewrites the weights in place
(the stored dtype and metadata kept), recomputes catalog.npz when the folder has one, and appends the fit to
the folder's training log, so the Training page shows the weights in use.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..data.backbones import set_offline
from ..data.dataset import FeatureDataset
from ..data.records import read_manifest
from ..errors import ScaleError, write_problem
from ..explore.training_log import LOG_NAMES
from ..model.catalog import Catalog
from ..model.checkpoint import WEIGHTS, load_checkpoint, read_checkpoint_config, save_checkpoint
from .release import write_catalog
from .trainer import fit_fusion, select_ids


def _stored_dtype(folder: Path) -> torch.dtype:
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS), "pt") as f:
        stored = f.get_slice("fusion_weights").get_dtype()
    return torch.float16 if stored == "F16" else torch.float32


def refit(checkpoint: str | Path, manifest: str | Path, cache_dir: str | None = None, on: str = "dev") -> dict:
    """Fit the fusion weights of the checkpoint in `checkpoint` on the `on` split and write them back."""
    from ..data.cache import ensure_cache

    if on == "val":
        raise ScaleError("--on val would tune on the reported split. Fix: use dev (the default) or train.")
    folder = Path(checkpoint)
    meta = read_checkpoint_config(folder)
    model = load_checkpoint(folder, "cpu")
    products = read_manifest(manifest)
    cache = ensure_cache(manifest, cache_dir, "cpu", products=products, model_cfg=model.cfg)
    ids = select_ids(cache, products, on)
    if len(ids) < 2:
        raise ScaleError(f"{manifest}: {len(ids)} cached products in split {on!r}, need 2. Fix: check the split name.")
    split = Catalog.load(folder / "catalog.npz").meta.get("split", "val") if (folder / "catalog.npz").is_file() else None
    fit = fit_fusion(model, FeatureDataset(cache, ids), 64)
    save_checkpoint(model, folder, extra={**meta.get("extra", {}), "backbones": meta.get("backbones", {})},
                    dtype=_stored_dtype(folder))
    if split is not None:
        write_catalog(folder, products, cache, split)
    log = next((folder / n for n in LOG_NAMES if (folder / n).is_file()), None)
    if log is not None:
        with log.open("a") as f:
            f.write(json.dumps({"fusion": fit, "refit_on": on}) + "\n")
    return fit


def main(argv: list[str] | None = None) -> int:
    set_offline()
    ap = argparse.ArgumentParser(prog="python -m core.train.refit_fusion", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--on", default="dev")
    a = ap.parse_args(argv)
    try:
        fit = refit(a.checkpoint, a.manifest, a.cache, a.on)
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk: the files it replaces are written atomically, so they are whole
        print(f"error: {write_problem(e.filename or a.checkpoint, e)}. Fix: free disk space, then run it again.", file=sys.stderr)
        return 2
    w = ", ".join(f"{m} {v:g}" for m, v in fit["fusion_weights"].items())
    print(f"{a.checkpoint}: fusion weights fitted on {a.on}: {w} (mAP@10 {fit['mAP@10_equal']} -> {fit['mAP@10_fitted']}, "
          "in-sample)" + "".join(f"; cross-fitted {k} ({v['vs']}) {v['diff']:+.2f}" for k, v in fit.get("cross_fitted", {}).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
