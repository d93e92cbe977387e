"""Inference: SCALE forward passes over feature dicts, with no pretext masking and no losses.

    out = forward_items(model, items)          # one batch -> ScaleOutput (S, pooled, cls, fused, present)
    center = fusion_center(model, items)       # (5, H) mean normalized fusion feature per modality
Batches are made by `collator_for(model)` (the model's vocab and feature widths, masking off).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..data.dataset import Collator, batch_to
from ..errors import ScaleError
from ..modalities import MODALITIES


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def collator_for(model: torch.nn.Module, missing: str | None = None) -> Collator:
    """A collate with no pretext masking, matching the model's vocab and feature widths."""
    cfg = model.cfg
    return Collator(missing=missing or cfg.missing, mask_prob=0.0, seed=0, vocab_size=cfg.vocab_size,
                    dims=dict(cfg.feature_dims))


def forward_items(model: torch.nn.Module, items: Sequence[Mapping], missing: str | None = None,
                  return_attention: bool = False):
    """One inference forward over feature dicts (no masking, no losses). Returns ScaleOutput."""
    if missing is not None and missing not in ("mask", "zero"):
        raise ScaleError(f"missing must be 'mask' or 'zero', got {missing!r}")
    batch = batch_to(collator_for(model, missing)([dict(it) for it in items]), model_device(model))
    if model.training:  # callers hand over eval models; the served one is shared and must stay unmutated
        raise ScaleError("forward_items needs a model in eval mode. Fix: call model.eval() once after loading.")
    with torch.inference_mode():
        return model(batch, return_attention=return_attention, compute_losses=False, missing=missing)


def fusion_center(model: torch.nn.Module, items: Sequence[Mapping], batch_size: int = 64) -> torch.Tensor:
    """(5, H): per modality, the mean L2-normalized fusion feature (pooled or cls, cfg.fusion) over the
    items that have it (zeros for a modality none has). The trainer stores it in model.fusion_center."""
    H = model.cfg.hidden
    total, count = torch.zeros(len(MODALITIES), H, dtype=torch.float64), torch.zeros(len(MODALITIES), dtype=torch.float64)
    was = model.training  # the trainer's own model, in its own process: eval for these passes only
    model.eval()
    try:
        outs = [forward_items(model, items[s: s + batch_size]) for s in range(0, len(items), batch_size)]
    finally:
        model.train(was)
    for out in outs:
        source = out.pooled if model.cfg.fusion == "pooled" else out.cls
        p = out.present.cpu()
        for i, m in enumerate(MODALITIES):
            x = torch.nn.functional.normalize(source[m].float().cpu(), dim=-1)[p[:, i]]
            total[i] += x.double().sum(0)
            count[i] += x.shape[0]
    return (total / count.clamp(min=1)[:, None]).float()
