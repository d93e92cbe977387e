"""Inter-modality contrastive loss (SCALE.md section 4): SimCLR-style InfoNCE for each of the 10
modality pairs on the pre-fusion pooled features, averaged over the pairs.

Per pair: both sides L2-normalized and stacked into 2B rows; a row's positive is the same product in
the other modality; its negatives are all other valid rows. Rows outside `valid` (a modality absent)
are neither anchors, positives nor negatives; pass valid=None to use every row (missing="zero", the
authors' behaviour where zero rows act as positives). Under torch.distributed the features are
gathered with gradient (as open_clip's loss.py), so negatives span the global batch.

Soft targets (false negatives): with soft_targets = a > 0 a row keeps 1 - a of its target on its own
product and spreads a over the other products' rows in the other modality, by the softmax of their detached
teacher similarity (the text features), as ALBEF spreads its targets by a teacher's similarities.
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


def soft_partners(teacher: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """teacher (B, D) features, valid (B,) rows that have them. Returns (B, B): row p is the softmax over
    the other valid products q of cos(teacher_p, teacher_q) / temperature; all zeros for an invalid row or
    one with no valid partner."""
    t = F.normalize(teacher.detach().float(), dim=-1)
    eye = torch.eye(len(t), dtype=torch.bool, device=t.device)
    keep = valid[:, None] & valid[None, :] & ~eye
    sim = (t @ t.T / temperature).masked_fill(~keep, float("-inf"))
    return torch.softmax(sim, dim=-1).nan_to_num(0.0)  # a row with no partner is all -inf -> NaN -> 0


def info_nce(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None, temperature: "float | torch.Tensor" = 0.07,
             weight: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None,
             soft: torch.Tensor | None = None, soft_share: float = 0.0) -> torch.Tensor:
    """a, b (B, D) the same products in two modalities. valid (B,) bool; weight (B,) per-sample loss
    weight; logit_scale (B,) multiplies each sample's logit rows (authors' code); soft (B, B) each product's
    distribution over partner products (`soft_partners`, rows of zeros: none), of which a row's target gets
    soft_share. Returns a scalar."""
    B = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=-1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    if logit_scale is not None:
        logits = logits * logit_scale.repeat(2)[:, None]
    v = torch.ones(2 * B, dtype=torch.bool, device=a.device) if valid is None else valid.repeat(2)
    drop = torch.eye(2 * B, dtype=torch.bool, device=a.device) | ~v[None, :]  # self and invalid columns
    logits = logits.masked_fill(drop, float("-inf"))[v]  # (n, 2B): valid anchors only
    if soft is not None and soft_share > 0:
        soft = soft.to(logits.dtype) * v[None, :B]  # partners must be valid columns too
        soft = soft / soft.sum(-1, keepdim=True).clamp_min(1e-12)
        share = soft_share * (soft.sum(-1, keepdim=True) > 0).to(logits.dtype)  # rows without a partner stay one-hot
        probs = torch.zeros(2 * B, 2 * B, dtype=logits.dtype, device=a.device)
        eye = torch.eye(B, dtype=logits.dtype, device=a.device)
        own = (1 - share) * eye + share * soft  # (B, B): product p -> products q
        probs[:B, B:], probs[B:, :B] = own, own  # a row's targets are the other modality's rows
        logp = torch.log_softmax(logits, dim=-1)
        probs = probs[v]
        per = -torch.where(probs > 0, probs * logp, 0.0).sum(-1)  # dropped columns (-inf) carry no target
    else:
        target = ((torch.arange(2 * B, device=a.device) + B) % (2 * B))[v]
        per = F.cross_entropy(logits, target, reduction="none")  # (n,)
    if weight is not None:
        per = per * weight.repeat(2)[v]
    return per.sum() / max(per.numel(), 1)


def contrastive_loss(pooled: dict, present: torch.Tensor, mask_absent: bool = True, temperature=0.07,
                     weight: torch.Tensor | None = None, logit_scale: torch.Tensor | None = None,
                     one_way: frozenset = frozenset(), soft_share: float = 0.0, teacher: str = "text",
                     teacher_temperature: float = 0.05):
    """pooled: m -> (B, D) in modality order; present (B, M); weight / logit_scale (B, M, M) per-sample
    pair weights (entry [b, i, j], i < j); one_way: (anchor, m) pairs whose anchor side is detached (the
    pair trains m alone); soft_share > 0: soft targets from the detached `teacher` modality's similarities.
    Returns (mean over the pairs, {"cl_<mi>_<mj>": loss})."""
    names = list(pooled)
    feats = {m: gather_with_grad(x) for m, x in pooled.items()}
    present = gather_with_grad(present)
    weight = None if weight is None else gather_with_grad(weight)
    logit_scale = None if logit_scale is None else gather_with_grad(logit_scale)
    soft = None
    if soft_share > 0:
        soft = soft_partners(feats[teacher], present[:, names.index(teacher)], teacher_temperature)
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
            None if weight is None else weight[:, i, j], None if logit_scale is None else logit_scale[:, i, j],
            soft, soft_share)
    return torch.stack(list(per_pair.values())).mean(), per_pair
