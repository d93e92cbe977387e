"""Pretext-task heads and losses (SCALE.md section 3), computed on the JCT outputs of each modality.

- MLM (text) / MEM (table): transform (Linear, GELU, LayerNorm) then a decoder whose weight is the
  modality's word embedding (passed in at call time, so the tie is never a second tensor), plus a bias.
  The vocab projection runs only at the masked positions.
- MRP / MFP / MAM (image / video / audio): transform then Linear(hidden -> feature dim); MSE to the
  original features at the masked items.
Losses count only masked positions of present products (the collate never masks absent ones).
`weight` (B,) scales each sample's loss (harmonize="loss"); `scale` (B,) multiplies the sample's
prediction scores (harmonize="logits", the authors' code; for the regressions: the predicted features).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.masking import IGNORE


class _Transform(nn.Sequential):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))


class TokenHead(nn.Module):
    def __init__(self, hidden: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = _Transform(hidden, eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, word_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), word_weight, self.bias)  # (N, V)


class FeatureHead(nn.Module):
    def __init__(self, hidden: int, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = _Transform(hidden, eps)
        self.out = nn.Linear(hidden, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.transform(h))  # (..., D)


def token_task(head: TokenHead, h: torch.Tensor, labels: torch.Tensor, word_weight: torch.Tensor,
               weight: torch.Tensor | None = None, scale: torch.Tensor | None = None, topk: int = 5):
    """h (B, L, H) states of the modality's tokens; labels (B, L), IGNORE = no loss. Returns (loss, predictions);
    topk=0 skips the predictions (training)."""
    b, l = (labels != IGNORE).nonzero(as_tuple=True)  # masked positions, (N,) each
    logits = head(h[b, l], word_weight)  # (N, V): only the masked rows reach the vocab projection
    if scale is not None:
        logits = logits * scale[b, None]
    target = labels[b, l]
    per = F.cross_entropy(logits, target, reduction="none")  # (N,)
    if weight is not None:
        per = per * weight[b]
    loss = per.sum() / max(per.numel(), 1)  # exactly 0 when nothing is masked
    if topk <= 0:
        return loss, {}
    with torch.no_grad():
        probs, ids = logits.softmax(-1).topk(min(topk, logits.shape[-1]), dim=-1)
    return loss, {"index": torch.stack([b, l], dim=1), "topk_ids": ids, "topk_probs": probs, "labels": target}


def feature_task(head: FeatureHead, h: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                 weight: torch.Tensor | None = None, scale: torch.Tensor | None = None, full: bool = True):
    """h (B, L, H); target (B, L, D) original features; masked (B, L). Returns (loss, predictions).

    full=False (training): the head runs on the masked items only and predictions are omitted.
    """
    if not full:
        b, l = masked.nonzero(as_tuple=True)
        recon = head(h[b, l])  # (N, D)
        if scale is not None:
            recon = recon * scale[b, None]
        err = (recon - target[b, l]).pow(2).mean(-1)  # (N,)
        if weight is not None:
            err = err * weight[b]
        return err.sum() / max(err.numel(), 1), {}
    recon = head(h)  # (B, L, D)
    if scale is not None:
        recon = recon * scale[:, None, None]
    err = (recon - target).pow(2).mean(-1)  # (B, L) per-item MSE
    w = masked.to(err.dtype)
    if weight is not None:
        w = w * weight[:, None]
    loss = (err * w).sum() / masked.sum().clamp(min=1)  # exactly 0 when nothing is masked
    return loss, {"recon": recon.detach(), "error": err.detach(), "masked": masked}
