"""Inter-modality contrastive loss (SCALE.md section 4): SimCLR-style InfoNCE for each of the 10
modality pairs on the pre-fusion pooled features, averaged over the pairs.

Per pair: both sides L2-normalized and stacked into 2B rows; a row's positive is the same product in
the other modality; its negatives are all other valid rows. Rows outside `valid` (a modality absent)
are neither anchors, positives nor negatives; pass valid=None to use every row (missing="zero", the
authors' behaviour where zero rows act as positives). Under torch.distributed the features are
gathered with gradient (as open_clip's loss.py), so negatives span the global batch.
"""
from __future__ import annotations

from itertools import combinations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all ranks along dim 0 keeping the gradient; identity when not distributed,
    and without autograd (validation runs on rank 0 alone, so it must not wait for the others)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not torch.is_grad_enabled():
        return x
    import torch.distributed.nn as dist_nn

    if x.dtype == torch.bool:
        return torch.cat(dist_nn.all_gather(x.to(torch.uint8)), dim=0).bool()
    return torch.cat(dist_nn.all_gather(x), dim=0)


def info_nce(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None, temperature: "float | torch.Tensor" = 0.07,
             weight: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None) -> torch.Tensor:
    """a, b (B, D) the same products in two modalities. valid (B,) bool; weight (B,) per-sample loss
    weight; logit_scale (B,) multiplies each sample's logit rows (authors' code). Returns a scalar."""
    B = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=-1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    if logit_scale is not None:
        logits = logits * logit_scale.repeat(2)[:, None]
    v = torch.ones(2 * B, dtype=torch.bool, device=a.device) if valid is None else valid.repeat(2)
    drop = torch.eye(2 * B, dtype=torch.bool, device=a.device) | ~v[None, :]  # self and invalid columns
    logits = logits.masked_fill(drop, float("-inf"))[v]  # (n, 2B): valid anchors only
    target = ((torch.arange(2 * B, device=a.device) + B) % (2 * B))[v]
    per = F.cross_entropy(logits, target, reduction="none")  # (n,)
    if weight is not None:
        per = per * weight.repeat(2)[v]
    return per.sum() / max(per.numel(), 1)


def contrastive_loss(pooled: dict, present: torch.Tensor, mask_absent: bool = True, temperature=0.07,
                     weight: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None,
                     one_way: frozenset = frozenset()):
    """pooled: m -> (B, D) in modality order; present (B, M); weight / logit_scale (B, M, M) per-sample
    pair weights (entry [b, i, j], i < j); one_way: (anchor, m) pairs whose anchor side is detached (the
    pair trains m alone). Returns (mean over the pairs, {"cl_<mi>_<mj>": loss})."""
    names = list(pooled)
    feats = {m: gather_with_grad(x) for m, x in pooled.items()}
    present = gather_with_grad(present)
    weight = None if weight is None else gather_with_grad(weight)
    logit_scale = None if logit_scale is None else gather_with_grad(logit_scale)
    per_pair = {}
    for i, j in combinations(range(len(names)), 2):
        valid = present[:, i] & present[:, j] if mask_absent else None
        a, b = feats[names[i]], feats[names[j]]
        if (names[i], names[j]) in one_way:
            a = a.detach()
        elif (names[j], names[i]) in one_way:
            b = b.detach()
        per_pair[f"cl_{names[i]}_{names[j]}"] = info_nce(
            a, b, valid, temperature,
            None if weight is None else weight[:, i, j], None if logit_scale is None else logit_scale[:, i, j])
    return torch.stack(list(per_pair.values())).mean(), per_pair
