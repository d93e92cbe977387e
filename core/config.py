"""SCALE model configuration (SCALE.md sections 2-6): one dataclass, named presets, json round trip.

Per-modality sizes live in small tables keyed by modality (`layers`, `feature_dims`), so a sixth
modality is one more entry, not one more field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .backbones import DEFAULT_TEXT

MISSING_MODES = ("mask", "zero")
HARMONIZE_MODES = ("loss", "logits", "none")


@dataclass
class ModelConfig:
    hidden: int = 384
    heads: int = 12
    # transformer layers of each modality encoder (text and table as BERT; the others random init)
    layers: dict = field(default_factory=lambda: {"text": 6, "table": 1, "image": 1, "video": 1, "audio": 1})
    jct_layers: int = 1
    jct_heads: int = 0  # 0: same as `heads`
    ffn_mult: int = 4
    dropout: float = 0.1  # hidden dropout (BERT)
    attn_dropout: float = 0.0  # > 0 forces SDPA's slow math path on CPU
    layer_norm_eps: float = 1e-12
    feature_dims: dict = field(default_factory=lambda: {"image": 1280, "video": 1280, "audio": 640})
    box_dim: int = 5
    vocab_size: int = 30522
    max_positions: int = 512  # text / table token positions
    max_items: int = 256  # video frames / audio patches (+1 for the prepended CLS)
    text_backbone: str = DEFAULT_TEXT
    init_text_from_pretrained: bool = True  # copy MiniLM embeddings + first k layers into text (and table)
    share_text_table: bool = False  # authors' code shares them; paper Table 8 prefers separate encoders
    missing: str = "mask"  # "mask" (ours) | "zero" (authors' zero imputation)
    harmonize: str = "loss"  # "loss" (paper) | "logits" (authors' code) | "none" (uniform ablation)
    detach_harmony: bool = True
    temperature: float = 0.07
    learn_temperature: bool = False
    loss_weights: dict = field(default_factory=lambda: {
        "mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 1.0, "contrastive": 1.0})
    topk: int = 5  # predictions shown for MLM / MEM
    # fused embedding = sum of the present modalities' L2-normalized "pooled" (pre-fusion) or "cls"
    # (post-JCT) features. Measured on shop3k val after 1 epoch: category mAP@10 69.5 (pooled) vs 59.0 (cls).
    fusion: str = "pooled"
    # subtract each modality's mean feature (over training products, SCALE.fusion_center) before the sum:
    # a modality whose feature barely varies then adds little instead of one shared direction that pulls
    # together every product having it. Measured on shop3k val: see the checkpoint card.
    center_fusion: bool = True
    # Pooled (pre-fusion) feature of each modality: "mean" = masked mean of the encoder's output tokens,
    # "first" = its first token. MiniLM was trained for mean pooling, and a 1-layer table encoder's first
    # token came out the same for every product before any training (cosine to its mean 1.0000).
    pool: dict = field(default_factory=lambda: {"text": "mean", "table": "mean", "image": "first",
                                                "video": "first", "audio": "first"})
    # First token of video / audio: "mean" = the mean of the item features left after masking (plus a
    # learned vector), as the authors prepend the mean frame / patch; "cls" = a learned constant, which
    # started with cosine 0.996+ to its mean for every product.
    first_item: str = "mean"
    # Image global token: "masked" = mean of the regions left after MRP masking (as the authors); "given" =
    # the cached mean of all 49 regions, which leaks the masked regions to MRP.
    image_global: str = "masked"
    # S on per-modality centred features: cos(l2n(f_i) - c_i, l2n(f_j) - c_j) with c = fusion_center. Raw
    # pooled features share one narrow cone (S in 0.80-0.999 for every product), so S' weighted nothing.
    center_harmony: bool = True
    # Temperature of the softmax that turns S' into positive loss weights (harmonize="loss").
    harmony_temperature: float = 1.0
    # During training fusion_center follows the batches (running mean, then this momentum), so S is
    # centred from the first epoch; the trainer still sets the exact mean after every epoch.
    center_momentum: float = 0.99

    def __post_init__(self) -> None:
        if self.missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {self.missing!r}")
        if self.harmonize not in HARMONIZE_MODES:
            raise ValueError(f"harmonize must be one of {HARMONIZE_MODES}, got {self.harmonize!r}")
        if self.fusion not in ("pooled", "cls"):
            raise ValueError(f"fusion must be 'pooled' or 'cls', got {self.fusion!r}")
        bad_pool = {m: v for m, v in self.pool.items() if v not in ("mean", "first")}
        if bad_pool:
            raise ValueError(f"pool values must be 'mean' or 'first', got {bad_pool}")
        if self.first_item not in ("mean", "cls"):
            raise ValueError(f"first_item must be 'mean' or 'cls', got {self.first_item!r}")
        if self.image_global not in ("masked", "given"):
            raise ValueError(f"image_global must be 'masked' or 'given', got {self.image_global!r}")
        if not self.harmony_temperature > 0:
            raise ValueError(f"harmony_temperature must be > 0, got {self.harmony_temperature}")
        if self.hidden % self.heads or self.hidden % (self.jct_heads or self.heads):
            raise ValueError(f"hidden {self.hidden} must be divisible by the number of heads")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = True) -> "ModelConfig":
        """A config dict. legacy=True (a saved checkpoint's config): fields it predates take the
        behaviour it was trained with (LEGACY); legacy=False: they take today's defaults."""
        known = {f.name for f in fields(cls)}
        legacy = {k: v for k, v in LEGACY.items() if k not in d} if legacy else {}
        return cls(**legacy, **{k: v for k, v in d.items() if k in known})


# What a config saved before a field existed meant, so older checkpoints load unchanged.
LEGACY: dict = {
    "pool": {"text": "first", "table": "first", "image": "first", "video": "first", "audio": "first"},
    "first_item": "cls", "image_global": "given", "center_harmony": False,
}


# `small` (the defaults): hidden 384 / 12 heads so text (and table) start from MiniLM-L6. Text keeps
# all 6 MiniLM layers: on shop3k val, MiniLM's first token gives category mAP@10 52.0 after 2 layers and
# 66.2 after 6, and titles are short, so the 4 extra layers are cheap once batches group by length
# (core.train). Table 1, image / video / audio 1, JCT 1 layer (sized with `python -m core.bench model`).
# `base`: the authors' sizes (hidden 768, 6-layer encoders, 6-layer JCT with 8 heads). Its width
# differs from MiniLM's, so it starts from random weights (no projection of pretrained weights).
PRESETS: dict[str, dict] = {
    # Loss weights of the shipped checkpoint: contrastive x10 lifted shop3k val category mAP@10 after one
    # epoch from 67.9 (x1) and 73.0 (x4) to 76.5; MAM x0.1 because raw log-mel targets give MSEs near 12.
    "small": {"loss_weights": {"mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 0.1, "contrastive": 10.0}},
    "base": {"hidden": 768, "heads": 12, "jct_heads": 8, "jct_layers": 6, "init_text_from_pretrained": False,
             "layers": {"text": 6, "table": 6, "image": 6, "video": 6, "audio": 6}},
}


def get_config(name_or_path: str = "small", **overrides) -> ModelConfig:
    """A preset name (`small`, `base`) or a json file (a config dict, or a checkpoint's config.json)."""
    if name_or_path in PRESETS:
        cfg = ModelConfig(**PRESETS[name_or_path])
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"unknown model config {name_or_path!r}: use one of {sorted(PRESETS)} or a json file")
        d = json.loads(path.read_text())
        cfg = ModelConfig.from_dict(d.get("model", d), legacy="model" in d)  # a checkpoint's config.json
    return replace(cfg, **overrides)  # replace() re-runs the checks
