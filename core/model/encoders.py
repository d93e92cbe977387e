"""Modality-specific encoders (SCALE.md section 2), ImageBind style: one `ModalityEncoder` per
modality in an `nn.ModuleDict`, each = embedding stage -> transformer blocks -> pooler.

- text / table: word + position + type embeddings (type 0 text, 1 table as the authors' segment id),
  BERT-layout post-LN blocks, so the first k MiniLM-L6 layers load as they are.
- image: Linear(1280) + Linear(5-d box); the first token is the global token: the mean of the regions
  left after MRP masking (cfg.image_global="masked"; "given" keeps the cached mean of all 49, a leak).
- video / audio: Linear(dim) + learned position, with one token prepended (`offset` = 1): the mean of
  the items left after masking plus a learned vector (cfg.first_item="mean", the authors' mean frame /
  patch), or a learned constant CLS ("cls").
Each pooler (Linear + tanh) reads the first token or the masked mean of all tokens (cfg.pool): the
pre-fusion feature used by S and the contrastive loss.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from ..errors import ScaleError


def attention_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """(B, T) key mask -> SDPA boolean mask (B, 1, 1, T), or None when every key is valid.

    A row with no valid key would give NaN in softmax: it gets one dummy key (its outputs are ignored).
    """
    empty = ~mask.any(-1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return None if bool(mask.all()) else mask[:, None, None, :]


class Block(nn.Module):
    """Post-LN transformer layer in BERT's layout (fused QKV, SDPA)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, eps: float, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = False):
        """x (B, T, H); mask from `attention_mask` (B, 1, 1, T), True = may be attended to, or None."""
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        p = self.attn_dropout if self.training else 0.0
        att = None
        if need_weights:  # explicit attention only when the caller wants the maps
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            att = scores.softmax(-1)
            y = F.dropout(att, p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, H)
        x = self.ln1(x + self.drop(self.proj(y)))
        x = self.ln2(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))
        return x, att


def make_blocks(cfg: ModelConfig, n: int, heads: int | None = None) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg.hidden, heads or cfg.heads, cfg.ffn_mult * cfg.hidden, cfg.dropout,
                               cfg.layer_norm_eps, cfg.attn_dropout) for _ in range(n))


class TokenEmbedding(nn.Module):
    """BERT embeddings: word + position + type, LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.segment = nn.Embedding(2, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, inp: dict, mask: torch.Tensor, type_id: int = 0):
        ids = inp["ids"]  # (B, L)
        if ids.shape[1] > self.position.num_embeddings:
            raise ScaleError(f"{ids.shape[1]} tokens exceed max_positions {self.position.num_embeddings}. "
                             "Fix: tokenize with fewer tokens or raise max_positions.")
        x = self.word(ids) + self.position.weight[: ids.shape[1]] + self.segment.weight[type_id]
        return self.drop(self.ln(x)), mask


def kept_mean(feats: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """feats (B, L, D), keep (B, L) bool -> (B, D) mean of the kept rows (zeros where none is kept)."""
    k = keep.to(feats.dtype)[..., None]
    return (feats * k).sum(1) / k.sum(1).clamp(min=1.0)


class FeatureEmbedding(nn.Module):
    """Linear projection of backbone features (+ box), optional prepended first token and learned positions.

    first: "cls" a learned constant; "mean" the mean of the unmasked items plus a learned vector;
    "global" (image) item 0 is replaced by the mean of the unmasked items 1.. (recomputed after masking).
    """

    def __init__(self, cfg: ModelConfig, dim: int, box: bool = False, cls: bool = True, first: str = "cls") -> None:
        super().__init__()
        self.first = first
        self.proj = nn.Linear(dim, cfg.hidden)
        self.box = nn.Linear(cfg.box_dim, cfg.hidden) if box else None
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden)) if cls else None
        self.position = nn.Embedding(cfg.max_items + 1, cfg.hidden) if cls else None
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, inp: dict, mask: torch.Tensor, type_id: int = 0):
        feats = inp["feats"]  # (B, L, D), masked items already zeroed
        keep = mask & ~inp["masked"] if "masked" in inp else mask  # items the model may see
        if self.first == "global":  # the global token must not carry the masked regions
            feats = torch.cat([kept_mean(feats[:, 1:], keep[:, 1:])[:, None], feats[:, 1:]], dim=1)
        x = self.proj(feats)  # (B, L, H)
        if self.box is not None:
            x = x + self.box(inp["boxes"])
        if self.cls is not None:
            head = self.cls.expand(x.shape[0], -1, -1)  # (B, 1, H)
            if self.first == "mean":
                head = head + self.proj(kept_mean(feats, keep))[:, None]
            x = torch.cat([head, x], dim=1)  # (B, 1 + L, H)
            mask = torch.cat([mask[:, :1], mask], dim=1)  # CLS is valid where the first item is
            if x.shape[1] > self.position.num_embeddings:
                raise ScaleError(f"{x.shape[1] - 1} items exceed max_items {self.position.num_embeddings - 1}. "
                                 "Fix: use fewer frames / audio patches or raise max_items.")
            x = x + self.position.weight[: x.shape[1]]
        return self.drop(self.ln(x)), mask


class ModalityEncoder(nn.Module):
    """embed -> blocks -> pooler. `offset`: tokens prepended before the modality's own items."""

    def __init__(self, embed: nn.Module, blocks: nn.ModuleList, hidden: int, type_id: int = 0, offset: int = 0,
                 pool: str = "first") -> None:
        super().__init__()
        self.embed, self.blocks = embed, blocks
        self.pooler = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh())
        self.type_id, self.offset, self.pool_mode = type_id, offset, pool

    def forward(self, inp: dict, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inp: the batch entry of this modality; mask (B, L). Returns states (B, offset + L, H) and their mask."""
        x, mask = self.embed(inp, mask, self.type_id)
        attn = attention_mask(mask)
        for blk in self.blocks:
            x, _ = blk(x, attn)
        return x, mask

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, T, H), mask (B, T) -> (B, H): the pooler on the first token or the masked token mean."""
        x = states[:, 0] if self.pool_mode == "first" else kept_mean(states, mask)
        return self.pooler(x)


class ReaderEncoder(ModalityEncoder):
    """A token encoder that reads through another encoder's embedding and layers without gradient (the
    `reader`, a frozen view of shared weights) and then through `blocks` of its own, which do train."""

    def __init__(self, reader: ModalityEncoder, blocks: nn.ModuleList, hidden: int, type_id: int = 0,
                 pool: str = "first") -> None:
        super().__init__(reader.embed, blocks, hidden, type_id=type_id, pool=pool)
        self.reader_blocks = reader.blocks

    def forward(self, inp: dict, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # the inputs are token ids, so no gradient reaches the shared weights
            x, mask = self.embed(inp, mask, self.type_id)
            attn = attention_mask(mask)
            for blk in self.reader_blocks:
                x, _ = blk(x, attn)
        for blk in self.blocks:
            x, _ = blk(x, attn)
        return x, mask


def build_encoders(cfg: ModelConfig) -> nn.ModuleDict:
    H = cfg.hidden
    pool = lambda m: cfg.pool.get(m, "first")  # noqa: E731
    enc = nn.ModuleDict()
    enc["text"] = ModalityEncoder(TokenEmbedding(cfg), make_blocks(cfg, cfg.layers["text"]), H, type_id=0,
                                  pool=pool("text"))
    if cfg.share_text_table and not cfg.table_trains_text:  # reads through the text layers, trains its own
        enc["table"] = ReaderEncoder(enc["text"], make_blocks(cfg, cfg.layers["table"]), H, type_id=1, pool=pool("table"))
    elif cfg.share_text_table:  # same embedding and layers (authors' code); own pooler
        enc["table"] = ModalityEncoder(enc["text"].embed, enc["text"].blocks, H, type_id=1, pool=pool("table"))
    else:
        enc["table"] = ModalityEncoder(TokenEmbedding(cfg), make_blocks(cfg, cfg.layers["table"]), H, type_id=1,
                                       pool=pool("table"))
    image_first = "global" if cfg.image_global == "masked" else "cls"
    enc["image"] = ModalityEncoder(FeatureEmbedding(cfg, cfg.feature_dims["image"], box=True, cls=False, first=image_first),
                                   make_blocks(cfg, cfg.layers["image"]), H, pool=pool("image"))
    for m in ("video", "audio"):
        enc[m] = ModalityEncoder(FeatureEmbedding(cfg, cfg.feature_dims[m], first=cfg.first_item),
                                 make_blocks(cfg, cfg.layers[m]), H, offset=1, pool=pool(m))
    return enc


# ---------------------------------------------------------------- pretrained text weights
def pretrained_text_state(name: str) -> tuple[dict, dict]:
    """(BERT state dict without a 'bert.' prefix, its config) of the text backbone; offline for the default."""
    from ..data.backbones import text_model_dir

    path = Path(text_model_dir(name))
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        sd, conf = load_file(str(path / "model.safetensors")), json.loads((path / "config.json").read_text())
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(path), local_files_only=path.is_dir())
        sd, conf = model.state_dict(), model.config.to_dict()
    return {k.removeprefix("bert."): v for k, v in sd.items()}, conf


def load_bert_into(enc: ModalityEncoder, sd: dict, conf: dict, name: str) -> list[str]:
    """Copy BERT embeddings and the first len(enc.blocks) layers into `enc`; returns the loaded parameter names."""
    H = enc.embed.word.weight.shape[1]
    if conf.get("hidden_size") != H or conf.get("vocab_size") != enc.embed.word.num_embeddings \
            or (len(enc.blocks) and conf.get("num_attention_heads") != enc.blocks[0].heads):
        raise ScaleError(f"text backbone {name!r} (hidden {conf.get('hidden_size')}, vocab {conf.get('vocab_size')}, "
                         f"heads {conf.get('num_attention_heads')}) does not fit the model (hidden {H}). "
                         "Fix: set init_text_from_pretrained=False or match hidden/heads/vocab_size.")
    if len(enc.blocks) > conf.get("num_hidden_layers", 0):
        raise ScaleError(f"text backbone {name!r} has {conf.get('num_hidden_layers')} layers, "
                         f"the encoder asks for {len(enc.blocks)}. Fix: use fewer text layers.")
    e = "embeddings."
    pos = sd[e + "position_embeddings.weight"][: enc.embed.position.num_embeddings]
    new = {"embed.word.weight": sd[e + "word_embeddings.weight"], "embed.segment.weight": sd[e + "token_type_embeddings.weight"],
           "embed.ln.weight": sd[e + "LayerNorm.weight"], "embed.ln.bias": sd[e + "LayerNorm.bias"]}
    with torch.no_grad():
        enc.embed.position.weight[: pos.shape[0]].copy_(pos)
    names = ["embed.position.weight"]
    for i in range(len(enc.blocks)):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            new[b + "qkv." + t] = torch.cat([sd[p + f"attention.self.{n}.{t}"] for n in ("query", "key", "value")])
            new[b + "proj." + t] = sd[p + "attention.output.dense." + t]
            new[b + "ln1." + t] = sd[p + "attention.output.LayerNorm." + t]
            new[b + "fc1." + t] = sd[p + "intermediate.dense." + t]
            new[b + "fc2." + t] = sd[p + "output.dense." + t]
            new[b + "ln2." + t] = sd[p + "output.LayerNorm." + t]
    params = dict(enc.named_parameters())
    with torch.no_grad():
        for k, v in new.items():
            params[k].copy_(v)
    return names + list(new)
