"""SCALE: Self-harmonized Contrastive Learning for e-commerce multi-modal pretraining.

References: Dong et al., "M5Product: Self-harmonized Contrastive Learning for E-commercial
Multi-modal Pretraining" (CVPR 2022, arXiv 2109.04275) and the authors' SCALE code; our choices
are written down in docs/SCALE.md. Data flow of one forward:

    batch[m] -> encoders[m] (embed, blocks)  -> pooled[m] (pre-fusion, used by S and contrastive)
             -> jct (all tokens, one mask)   -> cls[m] (first token after fusion) -> fused
             -> heads (MLM, MEM, MRP, MFP, MAM on the JCT states) + contrastive (10 pairs),
                each weighted per sample by S' (score_matrix.py)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MISSING_MODES, ModelConfig
from .contrastive import contrastive_loss
from .encoders import ReaderEncoder, build_encoders, load_bert_into, pretrained_text_state
from .score_matrix import harmony
from .heads import FeatureHead, TokenHead, feature_task, token_task
from .jct import JointCoTransformer
from ..data.masking import IGNORE
from ..modalities import FEATURE_MODALITIES, MODALITIES, PRETEXT, TOKEN_MODALITIES


@dataclass
class ScaleOutput:
    pooled: dict  # m -> (B, H) pooler output before fusion (zeros where absent under missing="mask")
    cls: dict  # m -> (B, H) the modality's first token after the JCT (zeros likewise)
    fused: torch.Tensor  # (B, H) sum over present modalities of L2-normalized pooled[m] (or cls[m], cfg.fusion),
    # each minus its modality's fusion_center when cfg.center_fusion
    present: torch.Tensor  # (B, 5) bool, modality order of MODALITIES
    S: torch.Tensor  # (B, 5, 5) cosine of pooled features, NaN where a modality is absent (missing="mask")
    S_prime: torch.Tensor  # (B, 5, 5) harmonized weights, NaN likewise
    weights: torch.Tensor | None = None  # (B, 5, 5) the loss weights from S' (detached; 0 where absent)
    losses: dict = field(default_factory=dict)  # mlm mem mrp mfp mam contrastive cl_<mi>_<mj> total
    # only when forward(predict=True) (default in eval mode):
    # mlm/mem: index (N, 2) (b, l) masked positions, topk_ids / topk_probs (N, k), labels (N,)
    # mrp/mfp/mam: recon (B, L, D), error (B, L) per-item MSE, masked (B, L)
    predictions: dict = field(default_factory=dict)
    attention: list | None = None  # per JCT layer (B, heads, T, T), when asked for
    token_type: torch.Tensor | None = None  # (T,) modality index of each JCT token
    token_mask: torch.Tensor | None = None  # (B, T) JCT key mask


class SCALE(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool = True) -> None:
        """`pretrained`: load the text backbone's weights when cfg.init_text_from_pretrained
        (load_checkpoint passes False: the checkpoint overwrites them anyway)."""
        super().__init__()
        self.cfg = cfg
        self.encoders = build_encoders(cfg)
        self.jct = JointCoTransformer(cfg)
        self.heads = nn.ModuleDict({PRETEXT[m]: TokenHead(cfg.hidden, cfg.vocab_size, cfg.layer_norm_eps)
                                    for m in TOKEN_MODALITIES})
        for m in FEATURE_MODALITIES:
            self.heads[PRETEXT[m]] = FeatureHead(cfg.hidden, cfg.feature_dims[m], cfg.layer_norm_eps)
        log_scale = torch.tensor(math.log(1.0 / cfg.temperature))
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale, persistent=False)
        # per-modality mean of the L2-normalized fusion features over training products (set by the
        # trainer with core.model.inference.fusion_center, followed as a running mean while training); zeros =
        # plain sum, as checkpoints saved without it
        self.register_buffer("fusion_center", torch.zeros(len(MODALITIES), cfg.hidden))
        self.register_buffer("center_count", torch.zeros(()))  # batches folded into the running centre
        # per-modality weight of the fused sum, fitted on dev after training (core.train.fusion); ones = plain sum
        self.register_buffer("fusion_weights", torch.ones(len(MODALITIES)))
        self.apply(self._init_weights)
        if pretrained and cfg.init_text_from_pretrained:
            sd, conf = pretrained_text_state(cfg.text_backbone)
            for m in TOKEN_MODALITIES:  # with share_text_table the second copy is a no-op on the same tensors
                if not self._reads_text(m):  # a reader's own blocks sit on top of the text layers: BERT init
                    load_bert_into(self.encoders[m], sd, conf, cfg.text_backbone)

    def _reads_text(self, m: str) -> bool:
        """Modality m reads through the text encoder without training it (build_encoders decides which)."""
        return isinstance(self.encoders[m], ReaderEncoder)

    @staticmethod
    def _init_weights(mod: nn.Module) -> None:  # BERT's initialization
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=0.02)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
        elif hasattr(mod, "cls") and isinstance(mod.cls, nn.Parameter):
            nn.init.normal_(mod.cls, std=0.02)

    # ---------------------------------------------------------------- forward
    def forward(self, batch: dict, return_attention: bool = False, compute_losses: bool = True,
                predict: bool | None = None, missing: str | None = None) -> ScaleOutput:
        """predict: also fill `predictions` (MLM/MEM top-k, MRP/MFP/MAM full reconstructions); default: in
        eval mode only, since training runs the feature heads on the masked items alone.
        missing: "mask" | "zero" for this call (None: cfg.missing). An argument, never a change to the
        model, since one model serves many sessions at once; build the batch with the same mode."""
        cfg = self.cfg
        missing = cfg.missing if missing is None else missing
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
        predict = not self.training if predict is None else predict
        present = torch.stack([batch[m]["present"] for m in MODALITIES], dim=1)  # (B, 5)
        clean_view = self.training and compute_losses and cfg.contrastive_view == "clean"
        states, masks, pooled, given = {}, {}, {}, {}
        for i, m in enumerate(MODALITIES):
            p = present[:, i, None]
            # missing="mask": absent tokens are never attended; "zero": absent zero tokens are attended
            given[m] = mask = batch[m]["mask"] & p if missing == "mask" else batch[m]["mask"] | ~p
            states[m], masks[m] = self.encoders[m](batch[m], mask)  # (B, L_m, H), (B, L_m)
            if not clean_view:
                pooled[m] = self.encoders[m].pool(states[m], masks[m])  # (B, H)
        if clean_view:  # the pooled features come from a second, unmasked pass
            pooled = self._clean_pooled(batch, given)
        outs, token_mask, token_type, attention = self.jct(states, masks, return_attention)
        cls = {m: outs[m][:, 0] for m in MODALITIES}
        # Fused product embedding: the authors retrieve with the sum of modality features; we sum the
        # L2-normalized features of the present modalities so no modality dominates by norm. Which
        # features is cfg.fusion: "pooled" (pre-fusion, the contrastively aligned space; default) or "cls".
        source = pooled if cfg.fusion == "pooled" else cls
        if self.training and cfg.center_fusion:
            self._follow_center(source, present)
        center = self.fusion_center.to(present.device) if cfg.center_fusion else None
        w = self.fusion_weights.to(present.device)
        fused = sum(w[i] * (F.normalize(source[m], dim=-1) - (0.0 if center is None else center[i])) * present[:, i, None]
                    for i, m in enumerate(MODALITIES))

        in_S = present if missing == "mask" else torch.ones_like(present)  # "zero": S over all 5
        # S on centred features needs the centre of the pooled features (the fusion centre when fusion is pooled)
        s_center = self.fusion_center if cfg.center_harmony and cfg.center_fusion and cfg.fusion == "pooled" else None
        S, S_prime, W = harmony(torch.stack([pooled[m] for m in MODALITIES], dim=1), in_S,
                                cfg.harmonize, cfg.detach_harmony, center=s_center,
                                temperature=cfg.harmony_temperature)
        result = ScaleOutput(pooled=pooled, cls=cls, fused=fused, present=present, S=S, S_prime=S_prime, weights=W.detach(),
                             attention=attention, token_type=token_type if return_attention else None,
                             token_mask=token_mask if return_attention else None)
        if compute_losses:
            self._losses(batch, outs, pooled, in_S, W, result, predict, missing)
        if missing == "mask":  # outputs of absent modalities are undefined: show zeros
            result.pooled = {m: torch.where(present[:, i, None], x, 0.0) for i, (m, x) in enumerate(pooled.items())}
            result.cls = {m: torch.where(present[:, i, None], x, 0.0) for i, (m, x) in enumerate(cls.items())}
        return result

    def _clean_pooled(self, batch: dict, given: dict) -> dict:
        """Pooled features of a second encoder pass over the unmasked inputs (contrastive_view="clean"): masked
        words get their labels back, masked items their target features. The pretext tasks keep the masked pass."""
        pooled = {}
        for m in MODALITIES:
            inp = batch[m]
            if m in TOKEN_MODALITIES:
                inp = {**inp, "ids": torch.where(inp["labels"] != IGNORE, inp["labels"], inp["ids"])}
            else:  # the collate always keeps the unmasked features as "target"
                inp = {**inp, "feats": inp["target"], "masked": torch.zeros_like(inp["masked"])}
            states, mask = self.encoders[m](inp, given[m])  # given: the input mask of the masked pass
            pooled[m] = self.encoders[m].pool(states, mask)
        return pooled

    @torch.no_grad()
    def _follow_center(self, source: dict, present: torch.Tensor) -> None:
        """Training only: fold this batch's mean L2-normalized feature per modality into fusion_center
        (a plain running mean for the first batches, then an exponential one)."""
        n = float(self.center_count)
        keep = min(n / (n + 1.0), self.cfg.center_momentum)
        for i, m in enumerate(MODALITIES):
            rows = present[:, i]
            if bool(rows.any()):
                mean = F.normalize(source[m].detach().float(), dim=-1)[rows].mean(0)
                self.fusion_center[i].mul_(keep).add_(mean.to(self.fusion_center.dtype), alpha=1.0 - keep)
        self.center_count += 1

    def _losses(self, batch, outs, pooled, in_S, W, result: ScaleOutput, predict: bool, missing: str) -> None:
        cfg = self.cfg
        mode = cfg.harmonize
        weight = W if mode == "loss" else None
        scale = W if mode == "logits" else None
        losses, preds = {}, {}
        for i, m in enumerate(MODALITIES):
            task = PRETEXT[m]
            enc = self.encoders[m]
            h = outs[m][:, enc.offset:]  # (B, L_m, H): the modality's own items
            w = None if weight is None else weight[:, i, i]
            s = None if scale is None else scale[:, i, i]
            if m in TOKEN_MODALITIES:
                words = enc.embed.word.weight.detach() if self._reads_text(m) else enc.embed.word.weight
                losses[task], pred = token_task(self.heads[task], h, batch[m]["labels"], words,
                                                w, s, cfg.topk if predict else 0)
            else:
                losses[task], pred = feature_task(self.heads[task], h, batch[m]["target"], batch[m]["masked"], w, s, predict)
            if pred:
                preds[task] = pred
        temperature = 1.0 / self.logit_scale.exp().clamp(max=100.0)
        one_way = frozenset(("text", m) for m in cfg.text_anchor)
        losses["contrastive"], per_pair = contrastive_loss(pooled, in_S, missing == "mask", temperature, weight, scale,
                                                           one_way, cfg.soft_targets, "text", cfg.soft_target_temperature)
        losses.update(per_pair)
        losses["total"] = sum(cfg.loss_weights.get(k, 1.0) * losses[k] for k in (*PRETEXT.values(), "contrastive"))
        result.losses, result.predictions = losses, preds

    @torch.no_grad()
    def embed(self, batch: dict, missing: str | None = None) -> ScaleOutput:
        """pooled / cls / fused / S without losses (use a collate with mask_prob=0)."""
        return self.forward(batch, compute_losses=False, missing=missing)

    # ---------------------------------------------------------------- optimizer
    def pretrained_names(self) -> set[str]:
        """Parameters that start from the text backbone (they get lr x pretrained_lr_mult)."""
        if not self.cfg.init_text_from_pretrained:
            return set()
        prefixes = tuple(f"encoders.{m}.{s}." for m in TOKEN_MODALITIES if not self._reads_text(m) for s in ("embed", "blocks"))
        return {n for n, _ in self.named_parameters() if n.startswith(prefixes)}

    def param_groups(self, lr: float, weight_decay: float, pretrained_lr_mult: float = 0.1,
                     split_text: bool = False) -> list[dict]:
        """AdamW groups: no decay on biases, LayerNorm, embeddings, CLS tokens and the temperature;
        pretrained text weights at lr * pretrained_lr_mult. split_text: the text encoder's parameters get
        groups of their own (named "..._text"), so a scheduler can give them their own schedule."""
        no_decay = {id(p) for mod in self.modules() if isinstance(mod, (nn.Embedding, nn.LayerNorm))
                    for p in mod.parameters(recurse=False)}
        pretrained = self.pretrained_names()
        groups: dict[tuple[bool, bool, bool], dict] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            decay = p.ndim >= 2 and id(p) not in no_decay and not name.endswith(".cls")
            pre = name in pretrained
            text = split_text and name.startswith("encoders.text.")
            g = groups.setdefault((decay, pre, text), {
                "name": f"{'decay' if decay else 'no_decay'}{'_pretrained' if pre else ''}{'_text' if text else ''}",
                "params": [], "lr": lr * (pretrained_lr_mult if pre else 1.0),
                "weight_decay": weight_decay if decay else 0.0})
            g["params"].append(p)
        return list(groups.values())

    def configure_optimizers(self, lr: float, weight_decay: float, pretrained_lr_mult: float = 0.1,
                             betas: tuple[float, float] = (0.9, 0.999), split_text: bool = False) -> torch.optim.AdamW:
        """AdamW over `param_groups` (each group keeps its own lr, so LambdaLR schedules scale both)."""
        return torch.optim.AdamW(self.param_groups(lr, weight_decay, pretrained_lr_mult, split_text), lr=lr, betas=betas)
