"""The app's facade over core: load a checkpoint once, turn uploads into products, analyse them.

    ex = Explorer.load("checkpoints/scale-shop3k-small", device="auto")
    product, decoded, errors = ex.product_from_inputs(title, description, table, images, video, audio, True)
    feats = ex.features(decoded)                        # backbone features (core.data.dataset layout)
    a = ex.analyze(feats, missing="mask")               # S, S', pooled/cls/fused, attention shares
    r = ex.masked_prediction(feats, text_positions=[3], prob=0.15, seed=0, drop_modality=None)
    q = ex.embed(feats, keep=["text", "image"])         # fused embedding of a subset of modalities

Training logs: core.explore.training_log; app timings: core.explore.app_bench.
Nothing here imports Streamlit at module level; the pages only draw what these return.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.backbones import BackboneConfig, resolve_device, set_offline
from ..model.catalog import Catalog
from ..model.inference import collator_for, forward_items, model_device
from .contributions import attention_shares, subset_features
from ..data.dataset import FEATURE_KEYS, ID_KEYS, batch_to
from ..model.checkpoint import load_checkpoint, read_checkpoint_config
from ..errors import CheckpointError, MediaError, RecordError, ScaleError
from ..data.featurize import Decoded, Featurizer
from ..data.media import parse_table
from ..modalities import FEATURE_MODALITIES, MODALITIES, TOKEN_MODALITIES
from ..data.records import Product

Upload = tuple[str, bytes]


@dataclass
class Analysis:
    """One product under one missing mode. Matrices are 5x5 in MODALITIES order, NaN where absent."""

    missing: str
    present: np.ndarray  # (5,) bool
    S: np.ndarray  # (5, 5) cosine of pooled features
    S_prime: np.ndarray  # (5, 5) harmonized weights
    pooled: dict[str, np.ndarray]  # m -> (H,)
    cls: dict[str, np.ndarray]
    fused: np.ndarray  # (H,)
    attention: np.ndarray  # (5, 5) JCT attention shares, rows = query modality


@dataclass
class TokenPrediction:
    modality: str
    position: int
    truth: str
    top: list[tuple[str, float]]  # (token, probability), best first

    @property
    def correct(self) -> bool:
        return bool(self.top) and self.top[0][0] == self.truth


@dataclass
class MaskedResult:
    tokens: list[TokenPrediction] = field(default_factory=list)
    # m -> per-item MSE of the reconstruction (L_m,), and which items were masked (L_m,) bool
    item_error: dict[str, np.ndarray] = field(default_factory=dict)
    item_masked: dict[str, np.ndarray] = field(default_factory=dict)
    drop_modality: str | None = None

    def rows(self) -> list[dict]:
        """Flat records of everything (for tables and downloads)."""
        out = [{"modality": t.modality, "position": t.position, "truth": t.truth,
                "prediction": t.top[0][0] if t.top else "", "probability": t.top[0][1] if t.top else np.nan,
                "top5": ", ".join(f"{w} ({p:.2f})" for w, p in t.top), "correct": t.correct} for t in self.tokens]
        for m, err in self.item_error.items():
            for i in np.flatnonzero(self.item_masked[m]):
                out.append({"modality": m, "position": int(i), "reconstruction_mse": float(err[i])})
        return out


def _safe_name(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "upload").name)[-80:]
    return base or "upload"


def safe_product_id(product_id: str) -> str:
    """A product id usable as one folder name: letters, digits, `.`, `_`, `-` only, no leading dot, at most
    80 characters. "../../x", "/etc/x" and NUL bytes all become plain names inside the upload folder."""
    pid = re.sub(r"[^A-Za-z0-9._-]+", "_", str(product_id)).lstrip(".")[:80]
    return pid or f"upload-{uuid.uuid4().hex[:8]}"


class UploadSpace:
    """A temporary folder for uploads, removed with everything in it when this object is garbage-collected
    (the app keeps one per browser session in its session state, so it goes when the session ends),
    when `cleanup()` is called, or when the process exits (weakref.finalize runs at exit)."""

    def __init__(self, prefix: str = "scale-uploads-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The SCALE model of a checkpoint folder, in eval mode (its parsed config.json is `model.checkpoint_info`)."""
    path = Path(checkpoint_dir)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json, so this is not a checkpoint folder. Fix: train one "
                              "(python -m core.train ...) or point SCALE_CHECKPOINT at an existing one.")
    return load_checkpoint(path, device).eval()


def backbone_config(checkpoint_dir: str | Path) -> BackboneConfig:
    """Backbones named in the checkpoint's config.json (key "backbones"; the audio one also from the model's
    audio_backbone), else the defaults: a checkpoint saved before audio backbones existed reads logmel."""
    d = read_checkpoint_config(checkpoint_dir)
    b = dict(d["backbones"]) if isinstance(d.get("backbones"), dict) else {}
    model = d.get("model")
    if "audio" not in b and isinstance(model, dict) and "audio_backbone" in model:  # the audio the model reads
        b["audio"] = model["audio_backbone"]
    return BackboneConfig.from_dict(b)


class Explorer:
    """Model + featurizer of one checkpoint. Heavy: build once per checkpoint and device."""

    def __init__(self, model: torch.nn.Module, featurizer: Featurizer, checkpoint_dir: str | Path | None = None,
                 upload_root: str | Path | None = None) -> None:
        self.model = model.eval()
        self.featurizer = featurizer
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        # Without an upload_root, uploads go to a folder owned by this Explorer (removed with it or at exit).
        self._uploads = None if upload_root else UploadSpace()
        self.upload_root = Path(upload_root) if upload_root else self._uploads.path
        self.tokenizer = featurizer.tokenizer

    @classmethod
    def load(cls, checkpoint_dir: str | Path, device: str = "auto") -> "Explorer":
        set_offline()
        dev = resolve_device(device)
        model = load_model(checkpoint_dir, dev)
        return cls(model, Featurizer(backbone_config(checkpoint_dir), device=str(dev)), checkpoint_dir)

    def warm_up(self) -> float:
        """Run one small generated product (image, 2 s video with sound, table) through decode, features
        and analyze, so the first real upload does not pay for lazy imports (OpenCV, PyAV) and first-call
        kernel set-up. Returns the seconds it took."""
        import time

        from ..data.synth import COLORS, draw_shape, spin_frames, tone, write_image, write_video

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="scale-warmup-") as tmp:
            img = write_image(Path(tmp) / "w.png", draw_shape("circle", COLORS["red"], 224))
            vid = write_video(Path(tmp) / "w.mp4", spin_frames("circle", COLORS["red"], 2.0, fps=6, size=128),
                              fps=6, audio=tone(330.0, 2.0))
            product = Product(id="warm-up", title="warm up", description="", attributes={"color": "red"},
                              images=[str(img)], video=str(vid), audio=None, source="generated")
            decoded = self.decode(product, use_video_soundtrack=True)
            self.analyze(self.features(decoded))
        return time.perf_counter() - t0

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    # ---------------------------------------------------------------- products
    def product_from_inputs(self, title: str = "", description: str = "", table: "dict | str | bytes | None" = None,
                            images: Sequence[Upload] = (), video: Upload | None = None, audio: Upload | None = None,
                            use_video_soundtrack: bool = True, product_id: str | None = None,
                            table_name: str = "table", upload_root: str | Path | None = None,
                            ) -> tuple[Product, Decoded, dict[str, str]]:
        """Write the uploads to a fresh folder under `upload_root` (default: this Explorer's), build a
        Product and decode it. `product_id` is reduced to a plain folder name (safe_product_id).

        Returns (product, decoded, errors): errors maps a modality to a message that names the file and
        the fix; that modality is left out and the others still work.
        """
        root = Path(upload_root or self.upload_root).resolve()
        pid = safe_product_id(product_id) if product_id else f"upload-{uuid.uuid4().hex[:8]}"
        folder = root / pid
        if folder.resolve().parent != root:  # safe_product_id allows no separator; this guards the guard
            raise RecordError(f"product id {product_id!r}: not a plain name. Fix: use letters, digits, '.', '_' or '-'.")
        folder.mkdir(parents=True, exist_ok=True)
        errors: dict[str, str] = {}
        renames: dict[str, str] = {}  # saved path -> the user's file name, for the messages

        def save(up: Upload, sub: str, modality: str) -> str | None:
            """The upload on disk; a file the server cannot store (a full disk) is left out with a message,
            and the product's other parts still work."""
            name, data = up
            path = folder / f"{sub}-{_safe_name(name)}"
            try:
                path.write_bytes(bytes(data))
            except OSError as e:
                path.unlink(missing_ok=True)
                errors.setdefault(modality, f"{name}: the server could not store this file ({e.strerror or 'write failed'}). "
                                            "Fix: try again later; if it keeps failing, the server's disk is full and "
                                            "its administrator must free space.")
                return None
            renames[str(path)] = name
            return str(path)

        attrs: dict = {}
        if table is not None and not (isinstance(table, (str, bytes, dict)) and len(table) == 0):
            try:
                attrs = parse_table(table, table_name)
            except MediaError as e:
                errors["table"] = str(e)
        image_paths = [p for i, im in enumerate(images) if (p := save(im, f"image{i}", "image"))]
        product = Product(id=pid, title=title.strip(), description=description.strip(), attributes=attrs,
                          images=image_paths, video=save(video, "video", "video") if video else None,
                          audio=save(audio, "audio", "audio") if audio else None, source="upload")
        decoded = self.decode(product, use_video_soundtrack)
        # The decoder names saved files ("image0-x.png"); name the user's files instead.
        for m, msg in decoded.errors.items():
            for p, n in renames.items():
                msg = msg.replace(p, n)
            errors[m] = msg
        decoded.errors = dict(errors)
        if use_video_soundtrack and video and decoded.video is not None and decoded.audio is None and "audio" not in errors:
            errors["audio"] = f"{video[0]}: has no audio track, so there is no soundtrack to use. Fix: upload the audio separately."
            decoded.errors["audio"] = errors["audio"]
        return product, decoded, errors

    def decode(self, product: Product, use_video_soundtrack: bool = True) -> Decoded:
        fz = self.featurizer
        if fz.audio_from_video != use_video_soundtrack:  # shallow copy shares the backbones
            fz = copy.copy(fz)
            fz.audio_from_video = use_video_soundtrack
        return fz.decode(product)

    def features(self, decoded: Decoded) -> dict[str, np.ndarray]:
        """Backbone features of a decoded product, with its id."""
        feats = self.featurizer.encode(decoded)
        feats["id"] = decoded.product.id
        return feats

    # ---------------------------------------------------------------- model outputs
    def analyze(self, item: "Decoded | Mapping", missing: str = "mask") -> Analysis:
        """S, S', embeddings and JCT attention shares of one product (features dict or Decoded)."""
        feats = self.features(item) if isinstance(item, Decoded) else item
        out = forward_items(self.model, [feats], missing, return_attention=True)
        return Analysis(
            missing=missing, present=out.present[0].cpu().numpy(),
            S=out.S[0].float().cpu().numpy(), S_prime=out.S_prime[0].float().cpu().numpy(),
            pooled={m: out.pooled[m][0].float().cpu().numpy() for m in MODALITIES},
            cls={m: out.cls[m][0].float().cpu().numpy() for m in MODALITIES},
            fused=out.fused[0].float().cpu().numpy(),
            attention=attention_shares(out.attention, out.token_type, out.token_mask, 0))

    def embed(self, feats: Mapping, keep: Sequence[str] | None = None, missing: str = "mask") -> np.ndarray:
        """Fused embedding (H,) of the product restricted to the modalities in `keep` (None: all)."""
        sub = subset_features(feats, keep) if keep is not None else feats
        return forward_items(self.model, [sub], missing).fused[0].float().cpu().numpy()

    # ---------------------------------------------------------------- masked prediction
    def maskable(self, feats: Mapping) -> dict[str, list]:
        """What can be masked: text token positions (no specials) with their tokens, table entities
        as (index, key text, value text), and item counts of the feature modalities."""
        tok = self.tokenizer
        special = set(tok.all_special_ids)
        out: dict[str, list] = {}
        if "text.ids" in feats:
            ids = np.asarray(feats["text.ids"]).tolist()
            out["text"] = [(i, t) for i, (t, x) in enumerate(zip(tok.convert_ids_to_tokens(ids), ids)) if x not in special]
        if "table.ids" in feats:
            ids = np.asarray(feats["table.ids"]).tolist()
            out["table"] = [(e, tok.decode(ids[ks:ke]), tok.decode(ids[vs:ve]))
                            for e, (ks, ke, vs, ve) in enumerate(np.asarray(feats["table.spans"]).reshape(-1, 4).tolist())]
        for m in FEATURE_MODALITIES:
            if FEATURE_KEYS[m] in feats:
                out[m] = list(range(len(feats[FEATURE_KEYS[m]])))
        return out

    def masked_prediction(self, feats: Mapping, text_positions: Sequence[int] | None = None,
                          table_entities: "Sequence[int | tuple[int, str]] | None" = None, prob: float = 0.15,
                          seed: int = 0, drop_modality: str | None = None,
                          item_positions: Mapping[str, Sequence[int]] | None = None) -> MaskedResult:
        """Mask exactly the chosen positions and read the model's predictions.

        - text_positions: token positions to replace by [MASK] (None: draw `prob` of the non-special tokens);
        - table_entities: entity indices (their value is masked) or (index, "key"|"value") (None: draw
          `prob` of the entities, key or value 50/50, as MEM does);
        - image regions / video frames / audio patches: `item_positions[m]` or `prob` of them, zeroed
          (the image's global token 0 is never masked);
        - drop_modality: "predict this modality from the others": every input of that modality is
          masked ([MASK] ids / zero features) and every item is scored against its original.
        """
        model, cfg = self.model, self.model.cfg
        rng = np.random.default_rng(seed)
        feats = dict(feats)
        batch = collator_for(model)([feats])  # mask_prob=0: nothing masked yet
        special = set(self.tokenizer.all_special_ids)
        mask_id = self.tokenizer.mask_token_id if self.tokenizer.mask_token_id is not None else 103

        def mask_ids(m: str, positions: Sequence[int]) -> None:
            ids, labels = batch[m]["ids"], batch[m]["labels"]
            for p in positions:
                labels[0, p] = ids[0, p]
                ids[0, p] = mask_id

        if "text.ids" in feats:
            ids = np.asarray(feats["text.ids"])
            cand = [i for i, x in enumerate(ids.tolist()) if x not in special]
            if drop_modality == "text":
                pos = cand
            elif text_positions is not None:
                pos = [int(p) for p in text_positions if int(p) in cand]
            else:
                pos = [p for p in cand if rng.random() < prob]
            mask_ids("text", pos)
        if "table.ids" in feats:
            spans = np.asarray(feats["table.spans"]).reshape(-1, 4)
            if drop_modality == "table":
                ids = np.asarray(feats["table.ids"]).tolist()
                mask_ids("table", [i for i, x in enumerate(ids) if x not in special])
            else:
                if table_entities is None:
                    chosen = [(e, "key" if rng.random() < 0.5 else "value") for e in range(len(spans)) if rng.random() < prob]
                else:
                    chosen = [(e, "value") if isinstance(e, (int, np.integer)) else (int(e[0]), e[1]) for e in table_entities]
                for e, part in chosen:
                    if 0 <= e < len(spans):
                        ks, ke, vs, ve = spans[e]
                        mask_ids("table", range(ks, ke) if part == "key" else range(vs, ve))
        for m in FEATURE_MODALITIES:
            if FEATURE_KEYS[m] not in feats:
                continue
            n = len(feats[FEATURE_KEYS[m]])
            if drop_modality == m:
                sel = np.ones(n, dtype=bool)
            elif item_positions and m in item_positions:
                sel = np.zeros(n, dtype=bool)
                sel[[int(i) for i in item_positions[m] if 0 <= int(i) < n]] = True
            else:
                sel = rng.random(n) < prob
            if m == "image" and drop_modality != m:
                sel[0] = False  # the global token is the image's summary, never a masked region
            masked = torch.zeros_like(batch[m]["masked"])
            masked[0, :n] = torch.from_numpy(sel)
            batch[m]["masked"] = masked
            batch[m]["feats"] = batch[m]["target"].masked_fill(masked[..., None], 0.0)

        batch = batch_to(batch, model_device(model))
        with torch.inference_mode():
            model.eval()
            out = model(batch, compute_losses=True)
        res = MaskedResult(drop_modality=drop_modality)
        tok = self.tokenizer
        for m in TOKEN_MODALITIES:
            if ID_KEYS[m] not in feats:
                continue
            p = out.predictions.get({"text": "mlm", "table": "mem"}[m], {})
            if not p or p["index"].numel() == 0:
                continue
            for (b, l), ids, probs, lab in zip(p["index"].tolist(), p["topk_ids"].tolist(), p["topk_probs"].tolist(),
                                               p["labels"].tolist()):
                res.tokens.append(TokenPrediction(m, int(l), tok.convert_ids_to_tokens([lab])[0],
                                                  list(zip(tok.convert_ids_to_tokens(ids), map(float, probs)))))
        for m in FEATURE_MODALITIES:
            if FEATURE_KEYS[m] not in feats:
                continue
            p = out.predictions[{"image": "mrp", "video": "mfp", "audio": "mam"}[m]]
            n = len(feats[FEATURE_KEYS[m]])
            res.item_error[m] = p["error"][0, :n].float().cpu().numpy()
            res.item_masked[m] = p["masked"][0, :n].cpu().numpy().astype(bool)
        return res


# ---------------------------------------------------------------- uploads against the catalog
DUPLICATE_COSINE = 0.999  # fused cosine above this: the same product (re-encoding jitter stays below 1e-4)
LOW_COSINE = 0.35  # best retrieval cosine under this: the matches are weak (text->image search gave 0.22-0.27)


@dataclass
class CatalogMatch:
    """Where a session product stands in the catalog: its duplicate (if any) and its neighbours' category."""

    duplicate_id: str | None  # catalog id of the same product (same id, or fused cosine > DUPLICATE_COSINE)
    duplicate_cosine: float
    category: str | None  # majority category of the k nearest other catalog products
    votes: list[tuple[str, int]]  # (category, count) among those neighbours, most first

    def exclude(self, ids: np.ndarray, product_id: str) -> np.ndarray:
        """(N,) bool: catalog rows that are this product (its own id or its duplicate), left out of
        retrieval, AP and contributions so that it is never its own rank-1 match."""
        out = np.asarray(ids) == product_id
        if self.duplicate_id is not None:
            out |= np.asarray(ids) == self.duplicate_id
        return out


def match_catalog(fused: np.ndarray, catalog: Catalog, product_id: str, k: int = 10) -> CatalogMatch:
    """Duplicate check and category inference (majority of the k nearest non-duplicate products)."""
    from ..eval.metrics import l2n

    ids = np.asarray(catalog.ids).astype(str)
    sims = l2n(np.asarray(catalog.fused, dtype=np.float32)) @ l2n(np.asarray(fused, dtype=np.float32).reshape(1, -1))[0]
    dup, dup_cos = None, float("nan")
    same = np.flatnonzero(ids == product_id)
    if len(same):
        dup, dup_cos = product_id, float(sims[same[0]])
    elif len(sims) and float(sims.max()) > DUPLICATE_COSINE:
        j = int(np.argmax(sims))
        dup, dup_cos = str(ids[j]), float(sims[j])
    others = np.where((ids == product_id) | (ids == dup), -np.inf, sims)
    order = np.argsort(-others, kind="stable")[: int(min(k, np.isfinite(others).sum()))]
    counts: dict[str, int] = {}
    for c in np.asarray(catalog.categories).astype(str)[order]:
        if c:
            counts[c] = counts.get(c, 0) + 1
    votes = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return CatalogMatch(dup, dup_cos, votes[0][0] if votes else None, votes)


# ---------------------------------------------------------------- masked prediction defaults
def content_positions(tokens: Sequence[tuple[int, str]], n: int = 2) -> list[int]:
    """Default text positions to mask: whole words (a piece not continued by "##" pieces) of at least 3
    letters that are not stop words, spread over the text (not the first pieces, not "##" continuations or
    the start of a split word, specials or punctuation)."""
    stop = {"the", "and", "for", "with", "you", "your", "its", "this", "that", "are", "from", "more", "men",
            "women", "our", "has", "have", "was", "not", "but", "all", "can"}
    toks = list(tokens)
    whole = [j + 1 >= len(toks) or not toks[j + 1][1].startswith("##") for j in range(len(toks))]
    good = [i for (i, t), w in zip(toks, whole) if w and t.isalpha() and len(t) >= 3 and t not in stop]
    if len(good) <= n:
        return good
    step = len(good) / n  # spread: one from each part of the text
    return [good[int(step * j + step / 2)] for j in range(n)]


def value_entities(entities: Sequence[tuple[int, str, str]], n: int = 1) -> list[int]:
    """Default table entities to mask: those whose value is a word (not a yes/no flag or one letter)."""
    good = [e for e, _, v in entities if len(v.strip()) >= 3 and v.strip().lower() not in ("yes", "no")]
    return (good or [e for e, _, _ in entities])[:n]


def frequency_baseline(tokenizer, texts: Sequence[str]) -> str:
    """The most frequent content word piece (core.data.masking.content_ids) of `texts`: the answer of a model
    that always guesses the same word, the floor a masked prediction should beat."""
    from collections import Counter

    from ..data.masking import content_ids

    content = content_ids(tokenizer.get_vocab())
    counts = Counter(i for t in texts if t for i in tokenizer(t, add_special_tokens=False)["input_ids"] if i in content)
    return tokenizer.convert_ids_to_tokens([counts.most_common(1)[0][0]])[0] if counts else ""


def reference_errors(ex: "Explorer", items: Sequence[Mapping], prob: float = 0.15) -> dict[str, float]:
    """Median reconstruction MSE of masked items per feature modality over `items` (catalog products'
    features): the reference line of the masked-prediction charts."""
    errs: dict[str, list[float]] = {}
    for i, f in enumerate(items):
        r = ex.masked_prediction(f, prob=prob, seed=i)
        for m, e in r.item_error.items():
            errs.setdefault(m, []).extend(np.asarray(e)[r.item_masked[m]].tolist())
    return {m: float(np.median(v)) for m, v in errs.items() if v}
