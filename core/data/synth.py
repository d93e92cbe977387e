"""Procedural example products: real media files (PNG/JPEG, MP4 with an AAC soundtrack, WAV/OGG/MP3,
CSV tables) generated from a seed. The tests use them as fixtures, and the app offers them as
examples when the shop3k catalog is not there. They are synthetic: say so wherever they are shown.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .records import Product, write_manifest

SHAPES = {"circle": "Round Badge", "square": "Square Tile", "triangle": "Pennant Flag"}
COLORS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200)}
TONE_HZ = {"red": 330.0, "green": 440.0, "blue": 550.0}


def draw_shape(shape: str, color: tuple, size: int = 160, angle: float = 0.0, seed: int = 0) -> np.ndarray:
    """RGB uint8 image of one colored shape on a light, slightly noisy background."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (235, 235, 230))
    d = ImageDraw.Draw(im)
    c, r = size / 2, size * 0.3
    if shape == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=color)
    elif shape == "square":
        pts = [(c + r * math.cos(angle + k * math.pi / 2 + math.pi / 4) * 1.2,
                c + r * math.sin(angle + k * math.pi / 2 + math.pi / 4) * 1.2) for k in range(4)]
        d.polygon(pts, fill=color)
    else:
        pts = [(c + r * 1.2 * math.cos(angle + k * 2 * math.pi / 3 - math.pi / 2),
                c + r * 1.2 * math.sin(angle + k * 2 * math.pi / 3 - math.pi / 2)) for k in range(3)]
        d.polygon(pts, fill=color)
    arr = np.asarray(im).astype(np.int16) + rng.integers(-8, 9, size=(size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def tone(freq: float, seconds: float, sr: int = 16_000, seed: int = 0) -> np.ndarray:
    """A pitch glide with a little noise, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = freq * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    wav = 0.4 * np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


def write_image(path: str | Path, arr: np.ndarray) -> Path:
    path = Path(path)
    Image.fromarray(arr).save(path)
    return path


def write_audio(path: str | Path, wav: np.ndarray, sr: int = 16_000) -> Path:
    """WAV/FLAC/OGG via soundfile; MP3 and others via PyAV."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in (".wav", ".flac", ".ogg"):
        import soundfile as sf

        sf.write(str(path), wav, sr, format={".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[ext],
                 subtype="VORBIS" if ext == ".ogg" else None)
        return path
    import av

    with av.open(str(path), "w") as out:
        codec = {".mp3": "mp3", ".m4a": "aac"}.get(ext, "aac")
        stream = out.add_stream(codec, rate=sr if codec != "mp3" else 16000, layout="mono")
        _encode_audio(out, stream, wav, sr)
    return path


def _encode_audio(container, stream, wav: np.ndarray, sr: int) -> None:
    import av

    pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
    frame.sample_rate = sr
    resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
    for f in resampler.resample(frame):
        for packet in stream.encode(f):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 12, audio: np.ndarray | None = None,
                sr: int = 16_000) -> Path:
    """MP4 (H.264, with an AAC soundtrack when `audio` is given) via PyAV."""
    import av

    path = Path(path)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264" if path.suffix.lower() in (".mp4", ".mov") else "vp8", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a_stream = out.add_stream("aac", rate=sr, layout="mono") if audio is not None else None
        for f in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if a_stream is not None:
            _encode_audio(out, a_stream, audio, sr)
    return path


def spin_frames(shape: str, color: tuple, seconds: float, fps: int = 12, size: int = 128, seed: int = 0) -> list[np.ndarray]:
    n = max(1, int(seconds * fps))
    return [draw_shape(shape, color, size, angle=2 * math.pi * i / n, seed=seed + i) for i in range(n)]


def make_catalog(folder: str | Path, n: int = 12, seed: int = 0, video_seconds: float = 3.0,
                 audio_seconds: float = 3.0, drop: bool = True) -> Path:
    """Write `n` products (shape x color categories) with all five modalities, some dropped on purpose.

    Returns the path of the manifest.jsonl. Categories are `Synthetic/<shape>`.
    """
    folder = Path(folder)
    for sub in ("images", "videos", "audio", "tables"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    products = []
    shapes, colors = list(SHAPES), list(COLORS)
    for i in range(n):
        shape, color = shapes[i % 3], colors[(i // 3) % 3]
        pid = f"synth-{i:03d}"
        img = write_image(folder / "images" / f"{pid}.png", draw_shape(shape, COLORS[color], seed=seed + i))
        wav = tone(TONE_HZ[color], audio_seconds, seed=seed + i)
        has_video = not drop or i % 4 != 3
        has_audio = not drop or i % 3 != 2
        video = write_video(folder / "videos" / f"{pid}.mp4", spin_frames(shape, COLORS[color], video_seconds, seed=seed + i),
                            audio=wav if has_audio else None) if has_video else None
        audio = write_audio(folder / "audio" / f"{pid}.wav", wav) if has_audio else None
        attrs = {"color": color.title(), "shape": shape, "size": str(rng.choice(["S", "M", "L"])), "material": "Synthetic"}
        products.append(Product(
            id=pid, title=f"{color.title()} {SHAPES[shape]} {i}",
            description=f"A generated {color} {shape} product for demos and tests.",
            category=f"Synthetic/{shape}", attributes=attrs, images=[str(img)],
            video=str(video) if video else None, audio=str(audio) if audio else None,
            source="synthetic", split="val" if i % 4 == 0 else "train"))
    (folder / "README.txt").write_text("Generated by core.data.synth: synthetic products, not real catalog data.\n")
    (folder / "tables" / "example.json").write_text(json.dumps(products[0].attributes))
    return write_manifest(products, folder / "manifest.jsonl")
