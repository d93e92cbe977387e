"""Joint Co-Transformer (SCALE.md section 2): all modalities' token states, concatenated with one key
padding mask and a learned modality-type embedding (the authors' code has it commented out; we keep
it), go through N fusion layers so that every token can attend to every other modality's tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig
from .encoders import attention_mask, make_blocks
from ..modalities import INDEX


class JointCoTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.type_embed = nn.Embedding(len(INDEX), cfg.hidden)
        self.blocks = make_blocks(cfg, cfg.jct_layers, cfg.jct_heads or cfg.heads)

    def forward(self, states: dict, masks: dict, return_attention: bool = False):
        """states: m -> (B, L_m, H); masks: m -> (B, L_m) bool, in the order given.

        Returns (outs m -> (B, L_m, H), mask (B, T), token_type (T,), attention list | None).
        """
        sizes = [s.shape[1] for s in states.values()]
        types = [torch.full((n,), INDEX[m], dtype=torch.long) for m, n in zip(states, sizes)]
        token_type = torch.cat(types).to(next(iter(states.values())).device)  # (T,)
        x = torch.cat(list(states.values()), dim=1) + self.type_embed(token_type)  # (B, T, H)
        mask = torch.cat(list(masks.values()), dim=1)  # (B, T)
        attn = attention_mask(mask)
        attention = [] if return_attention else None
        for blk in self.blocks:
            x, att = blk(x, attn, need_weights=return_attention)
            if return_attention:
                attention.append(att)  # (B, nh, T, T)
        outs = dict(zip(states, x.split(sizes, dim=1)))  # one split: its backward is a single cat
        return outs, mask, token_type, attention
