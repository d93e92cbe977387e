"""Self-harmonization (SCALE.md section 5): the per-sample score matrix S and its weights S'.

S[b]_ij = cos(f_i, f_j) over the 5 pooled (pre-fusion) features, each L2-normalized and, by default
(cfg.center_harmony), minus its modality's mean over training products (the model's fusion_center):
raw pooled features of all modalities share one narrow cone, which put S in 0.80-0.999 for every
product. S'[b] = S[b] * softmax(S[b], -1),
rows L2-normalized (authors' code). The softmax and the normalization run over the present
modalities only; absent rows and columns are NaN in the returned matrices (for display) and zero
in the loss weights.

Weights by `harmonize` mode:
- "loss"   (paper): total = sum_{i<j} S'_ij L_CL(i, j) + sum_i S'_ii L_M(i), per sample;
- "logits" (authors' code): pair logits times S'_ij, prediction scores times S'_ii;
- "none"   (ablation): every weight exactly 1.
In "loss" mode the weights are S' renormalized to be positive with mean 1 (a softmax over each
sample's present pairs, times their count; the same over its diagonal). Measured on shop3k: with
freshly initialized encoders the pooled features are near-orthogonal, so the raw S'_ij are about 0
and half of them negative; the raw formula then turns the contrastive terms off, or rewards pushing
pairs apart. The renormalized weights keep the paper's ordering (more agreement, more weight) and
equal the uniform weights exactly when S' is constant.
`detach` (default True): S' enters as a constant. Left attached, the cheapest way for the model to
lower a weighted loss is to shrink its weights (make modalities dissimilar), which works against the
contrastive objective; with detach, gradients reach the features only through the losses themselves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _pairs(present: torch.Tensor) -> torch.Tensor:
    return present[:, :, None] & present[:, None, :]  # (B, M, M)


def score_matrix(pooled: torch.Tensor, present: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """pooled (B, M, D), present (B, M) bool -> S (B, M, M) cosine; NaN where a modality is absent.
    center (M, D): S_ij = cos(l2n(f_i) - c_i, l2n(f_j) - c_j), the agreement beyond what every
    product's modality i and j share."""
    z = F.normalize(pooled, dim=-1)
    if center is not None:
        z = F.normalize(z - center.to(z.dtype), dim=-1)
    S = z @ z.transpose(1, 2)  # (B, M, M)
    return S.masked_fill(~_pairs(present), float("nan"))


def harmonized(S: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """S (B, M, M) -> S' = S * softmax(S, -1) over present modalities, rows L2-normalized; NaN where absent."""
    pairs = _pairs(present)
    S0 = S.masked_fill(~pairs, 0.0)
    soft = S0.masked_fill(~present[:, None, :], float("-inf")).softmax(-1).masked_fill(~pairs, 0.0)
    Sp = F.normalize(S0 * soft, dim=-1)
    return Sp.masked_fill(~pairs, float("nan"))


def positive_weights(Sp: torch.Tensor, present: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """S' (B, M, M) -> loss weights: per sample, n * softmax(S'/temperature) over the n present pairs
    i < j (upper triangle, mirrored) and m * the same over the m present diagonal entries; zeros where absent."""
    B, M, _ = Sp.shape
    pairs = _pairs(present)
    upper = torch.triu(torch.ones(M, M, dtype=torch.bool, device=Sp.device), diagonal=1)
    diag = torch.eye(M, dtype=torch.bool, device=Sp.device)
    W = torch.zeros_like(Sp)
    for sel in (pairs & upper, pairs & diag):
        logits = (torch.nan_to_num(Sp, nan=0.0) / temperature).masked_fill(~sel, float("-inf")).flatten(1)  # (B, M*M)
        n = sel.flatten(1).sum(1, keepdim=True)  # (B, 1)
        w = torch.nan_to_num(logits.softmax(-1), nan=0.0) * n  # rows with no entry stay 0
        W = W + w.view(B, M, M)
    return W + torch.triu(W, diagonal=1).transpose(1, 2)


def harmony(pooled: torch.Tensor, present: torch.Tensor, mode: str = "loss", detach: bool = True,
            center: torch.Tensor | None = None, temperature: float = 1.0):
    """Returns S, S' (NaN where absent, detached, for display) and the weights (B, M, M) used by the
    losses (zeros where absent; all ones for mode "none"; pairs read [b, i, j] with i < j, tasks [b, i, i]).
    center (M, D): S on centred features (score_matrix); temperature: of the "loss" weights' softmax."""
    S = score_matrix(pooled, present, center)
    Sp = harmonized(S, present)
    if mode == "none":
        W = torch.ones_like(S)
    elif mode == "loss":
        W = positive_weights(Sp, present, temperature)
        W = W.detach() if detach else W
    else:
        W = torch.nan_to_num(Sp, nan=0.0)
        W = W.detach() if detach else W
    return S.detach(), Sp.detach(), W
