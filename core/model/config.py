"""SCALE model configuration (SCALE.md sections 2-6): one dataclass, named presets, json round trip.

Per-modality sizes live in small tables keyed by modality (`layers`, `feature_dims`), so a sixth
modality is one more entry, not one more field.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..data.backbones import DEFAULT_TEXT
from ..errors import ScaleError
from ..modalities import FEATURE_MODALITIES, MODALITIES, PRETEXT
from ..data.speech import AUDIO_BACKBONES, LOGMEL, WHISPER_DIM, WHISPER_TINY_EN

MISSING_MODES = ("mask", "zero")
HARMONIZE_MODES = ("loss", "logits", "none")
FUSION_MODES = ("pooled", "cls")
MLM_TARGETS = ("all", "content")
CONTRASTIVE_VIEWS = ("masked", "clean")


class ConfigError(ScaleError, ValueError):
    """A model config value has the wrong type or range (a ValueError too, for older callers)."""


def _bad(name: str, want: str, got: object, fix: str = "") -> ConfigError:
    shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
    return ConfigError(f"model config {name!r} must be {want}, got {type(got).__name__} {shown}. "
                       f"Fix: {fix or f'set {name} to {want}'}.")


def _int(lo: int, hi: int | None = None):
    want = f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")

    def check(name: str, v: object) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _bad(name, want, v)
    return check


def _float(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    want = f"a number {'>' if lo_open else '>='} {lo}" + (f" and {'<' if hi_open else '<='} {hi}" if hi is not None else "")

    def check(name: str, v: object) -> None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo)
        ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise _bad(name, want, v)
    return check


def _bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise _bad(name, "true or false", v)


def _text(name: str, v: object) -> None:
    if not isinstance(v, str) or not v.strip():
        raise _bad(name, "a non-empty text", v)


def _choice(*options: str):
    def check(name: str, v: object) -> None:
        if v not in options:
            raise _bad(name, f"one of {list(options)}", v)
    return check


def _subset(options: tuple[str, ...]):
    """A list of distinct names from `options`."""
    def check(name: str, v: object) -> None:
        if not isinstance(v, list) or any(x not in options for x in v) or len(set(v)) != len(v):
            raise _bad(name, f"a list of distinct names from {list(options)}", v, f'write it as ["table", "audio"]')
    return check


def _table(keys: tuple[str, ...], value, required: bool = True):
    """A dict keyed by modality (or task); unknown keys are refused (a typo would be ignored silently)."""
    def check(name: str, v: object) -> None:
        example = json.dumps({k: 1 for k in keys})
        if not isinstance(v, dict):
            raise _bad(name, f"an object keyed by {list(keys)}", v, f"write it as {example}")
        unknown = sorted(set(v) - set(keys))
        absent = sorted(set(keys) - set(v)) if required else []
        if unknown or absent:
            raise ConfigError(f"model config {name!r} has " + ", ".join(
                x for x in (f"unknown keys {unknown}" if unknown else "", f"no {absent}" if absent else "") if x)
                + f". Fix: use {'exactly ' if required else 'only '}the keys {list(keys)}, for example {example}.")
        for k, x in v.items():
            value(f"{name}.{k}", x)
    return check


# type and range of every field; a field added later without an entry here is not checked
_CHECKS = {
    "hidden": _int(1), "heads": _int(1), "layers": _table(MODALITIES, _int(0)), "jct_layers": _int(0),
    "jct_heads": _int(0), "ffn_mult": _int(1), "dropout": _float(0, 1, hi_open=True),
    "attn_dropout": _float(0, 1, hi_open=True), "layer_norm_eps": _float(0, 1, lo_open=True),
    "feature_dims": _table(FEATURE_MODALITIES, _int(1)), "box_dim": _int(1), "vocab_size": _int(2),
    "max_positions": _int(2), "max_items": _int(1), "text_backbone": _text,
    "init_text_from_pretrained": _bool, "share_text_table": _bool, "table_trains_text": _bool,
    "missing": _choice(*MISSING_MODES),
    "harmonize": _choice(*HARMONIZE_MODES), "detach_harmony": _bool, "temperature": _float(0, lo_open=True),
    "learn_temperature": _bool, "loss_weights": _table((*PRETEXT.values(), "contrastive"), _float(0), required=False),
    "topk": _int(1), "fusion": _choice(*FUSION_MODES), "center_fusion": _bool,
    "pool": _table(MODALITIES, _choice("mean", "first"), required=False), "first_item": _choice("mean", "cls"),
    "image_global": _choice("masked", "given"), "center_harmony": _bool,
    "harmony_temperature": _float(0, lo_open=True), "center_momentum": _float(0, 1),
    "audio_backbone": _choice(*AUDIO_BACKBONES), "text_anchor": _subset(tuple(m for m in MODALITIES if m != "text")),
    "mlm_targets": _choice(*MLM_TARGETS), "contrastive_view": _choice(*CONTRASTIVE_VIEWS),
    "soft_targets": _float(0, 1, hi_open=True), "soft_target_temperature": _float(0, lo_open=True),
}


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
    # With share_text_table: False = the table reads through the text encoder's embedding and layers without
    # gradient and trains only its own `layers.table` blocks on top (and its pooler), so the table's pass never
    # moves the text layers (the JCT still mixes the two); True = the shared layers learn from both (authors' code).
    table_trains_text: bool = True
    missing: str = "mask"  # "mask" (ours) | "zero" (authors' zero imputation)
    harmonize: str = "loss"  # "loss" (paper) | "logits" (authors' code) | "none" (uniform ablation)
    detach_harmony: bool = True
    temperature: float = 0.07
    learn_temperature: bool = False
    loss_weights: dict = field(default_factory=lambda: {**dict.fromkeys(PRETEXT.values(), 1.0), "contrastive": 1.0})
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
    # Frozen model behind the audio items (core.data.speech): "logmel" patches (80 x 8 = 640-d) or
    # "whisper-tiny.en" encoder items (384-d, 0.1 s each). The cache must be built with the same one.
    audio_backbone: str = LOGMEL
    # Modalities aligned to text one way: in their contrastive pair with text the text side is detached, so
    # the pair trains that modality's encoder and never pulls the text encoder towards a weaker modality.
    text_anchor: list = field(default_factory=list)
    # Tokens MLM masks in training: "all" non-special tokens (BERT), or "content" words only (at least 2
    # letters or digits, core.data.masking.content_ids), the words the app shows and core.eval scores.
    mlm_targets: str = "all"
    # Inputs behind the pooled features that the contrastive loss, S and the fusion centre see in training:
    # "masked" = the pretext tasks' inputs (words, regions, frames masked; one encoder pass, as the authors),
    # "clean" = a second encoder pass over the unmasked inputs (as ALBEF's image-text contrastive loss), so
    # the pairs align the same features retrieval embeds. Evaluation never masks, so only training differs.
    contrastive_view: str = "masked"
    # False negatives: share of each contrastive row's target spread over the other products in the batch by
    # their detached text similarity (softmax of cosine / soft_target_temperature), so products whose titles
    # are near each other are not pushed apart as pure negatives. 0 = one-hot targets (InfoNCE, as the authors).
    soft_targets: float = 0.0
    soft_target_temperature: float = 0.05

    def __post_init__(self) -> None:
        """Check the type and range of every field (ConfigError naming the field and the fix), before any
        model is built from it: a config.json with `heads: 0` or `layers: [...]` must not reach torch."""
        for f in fields(self):
            if f.name in _CHECKS:
                _CHECKS[f.name](f.name, getattr(self, f.name))
        for name, heads in (("heads", self.heads), ("jct_heads", self.jct_heads or self.heads)):
            if self.hidden % heads:
                raise ConfigError(f"model config 'hidden' {self.hidden} must be divisible by {name!r} {heads}. "
                                  f"Fix: pick a number of heads that divides {self.hidden} (or change hidden).")
        if self.audio_backbone == WHISPER_TINY_EN and self.feature_dims["audio"] != WHISPER_DIM:
            dims = json.dumps(dict(self.feature_dims, audio=WHISPER_DIM))
            raise ConfigError(f"model config audio_backbone {WHISPER_TINY_EN!r} gives {WHISPER_DIM}-d audio items, but "
                              f"feature_dims.audio is {self.feature_dims['audio']}. Fix: --set 'feature_dims={dims}' "
                              "(or use --config small-whisper).")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = True) -> "ModelConfig":
        """A config dict; keys this version does not know are ignored (a newer checkpoint) and every
        known one is checked. legacy=True (a saved checkpoint's config): fields it predates take the
        behaviour it was trained with (LEGACY); legacy=False: they take today's defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object of field -> value, got {type(d).__name__}. "
                              "Fix: write it as {\"hidden\": 384, \"heads\": 12, ...}.")
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
# (core.train.trainer). Table 1, image / video / audio 1, JCT 1 layer (sized with `python -m core.bench model`).
# `base`: the authors' sizes (hidden 768, 6-layer encoders, 6-layer JCT with 8 heads). Its width
# differs from MiniLM's, so it starts from random weights (no projection of pretrained weights).
PRESETS: dict[str, dict] = {
    # Loss weights of the shipped checkpoint: contrastive x10 lifted shop3k val category mAP@10 after one
    # epoch from 67.9 (x1) and 73.0 (x4) to 76.5; MAM x0.1 because raw log-mel targets give MSEs near 12.
    "small": {"loss_weights": {"mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 0.1, "contrastive": 10.0}},
    # `small` reading Whisper tiny.en audio items (a cache built with --audio-backbone whisper-tiny.en), with
    # table and audio aligned to text one way: on shop3k dev (3 seeds) that kept the text encoder's category
    # structure and lifted the fused mAP@10 (see the checkpoint card). MLM masks content words only (the
    # words the app shows and core.eval scores); the shipped checkpoint trains this preset for 5 epochs.
    "small-whisper": {"loss_weights": {"mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 0.1, "contrastive": 10.0},
                      "text_anchor": ["table", "audio"], "mlm_targets": "content", "audio_backbone": WHISPER_TINY_EN,
                      "feature_dims": {"image": 1280, "video": 1280, "audio": WHISPER_DIM}},
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
            raise ConfigError(f"unknown model config {name_or_path!r}: use one of {sorted(PRESETS)} or a json file")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON model config ({e}). Fix: write it as "
                              "{\"hidden\": 384, \"heads\": 12, ...} in UTF-8.") from None
        model = d.get("model", d) if isinstance(d, dict) else d
        cfg = ModelConfig.from_dict(model, legacy=isinstance(d, dict) and "model" in d)  # a checkpoint's config.json
    unknown = sorted(set(overrides) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown}. Fix: use --set with one of "
                          f"{', '.join(f.name for f in fields(ModelConfig))}.")
    return replace(cfg, **overrides)  # replace() re-runs the checks
