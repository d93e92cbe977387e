"""Decode real media files into arrays, with one clear error type (`MediaError`).

- images: JPEG/PNG/WebP (any PIL format), EXIF rotation, RGBA/grayscale/CMYK -> RGB, pixel cap;
- video: MP4/WebM/MOV/AVI via OpenCV, <= 12 frames sampled evenly at about 1 fps, duration cap;
- audio: WAV/FLAC/OGG/MP3 or a video's soundtrack (AAC) via PyAV, 16 kHz mono, <= 12 s;
- tables: dict, JSON, two-column CSV (key,value) or `key: value` lines.

PyAV is used for audio because its wheels bundle FFmpeg, so AAC decodes without system packages.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MediaError

PathLike = Union[str, os.PathLike]

MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb cap (a 6,300 x 6,300 photo)
MAX_FRAMES = 12
FRAME_INTERVAL_S = 1.0
MAX_VIDEO_SECONDS = 60.0  # only the first minute of a long video is read
MAX_GRAB_GAP = 90  # frames walked with grab() before a seek is cheaper (about 3 s at 30 fps)
SAMPLE_RATE = 16_000
MAX_AUDIO_SECONDS = 12.0
MAX_TABLE_ROWS = 1_000
MAX_FILE_BYTES = 512 * 1024 * 1024

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}
TABLE_EXTS = {".csv", ".json", ".txt", ".tsv"}


def _check_file(path: PathLike, kind: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(p, f"{kind} file not found.", "check the path (relative paths are taken from the manifest's folder).")
    if not p.is_file():
        raise MediaError(p, f"{kind} path is not a file.", "point to a file, not a folder.")
    size = p.stat().st_size
    if size == 0:
        raise MediaError(p, f"{kind} file is empty (0 bytes).", f"re-export the {kind}.")
    if size > MAX_FILE_BYTES:
        raise MediaError(p, f"{kind} file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES // 2**20} MiB limit.", "use a smaller file.")
    return p


# ---------------------------------------------------------------- images
def load_image(path: PathLike) -> np.ndarray:
    """RGB uint8 array (H, W, 3), EXIF-rotated."""
    p = _check_file(path, "image")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise MediaError(p, f"image is {im.width}x{im.height} px, over the {MAX_IMAGE_PIXELS:,} pixel cap.", "downscale it.")
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            arr = np.asarray(im.convert("RGB"))
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(p, f"image is too large ({e}).", "downscale it.") from None
    except UnidentifiedImageError:
        raise MediaError(p, "not a readable image (the bytes are not JPEG/PNG/WebP).", "check that the file really is an image.") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(p, f"image is corrupt or truncated ({e}).", "re-export the image.") from None
    if arr.ndim != 3 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise MediaError(p, f"image has an unusable shape {arr.shape}.", "use an image of at least 2x2 px.")
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------- video
@dataclass
class VideoClip:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB
    times: np.ndarray  # (F,) seconds
    fps: float
    duration: float  # of the whole file, seconds


def frame_times(duration: float, max_frames: int = MAX_FRAMES, interval: float = FRAME_INTERVAL_S,
                max_seconds: float = MAX_VIDEO_SECONDS) -> np.ndarray:
    """Evenly spaced sample times: about one per `interval`, at most `max_frames`, within the cap."""
    span = min(max(duration, 0.0), max_seconds)
    n = int(np.clip(round(span / interval), 1, max_frames))
    return (np.arange(n) + 0.5) * span / n


def load_video(path: PathLike, max_frames: int = MAX_FRAMES, max_seconds: float = MAX_VIDEO_SECONDS) -> VideoClip:
    """Sample <= max_frames RGB frames evenly from the first `max_seconds`.

    Short gaps between sampled frames are walked with grab() (decode, no conversion); long ones seek.
    A seek decodes again from the previous keyframe, so seeking to every frame of a short clip costs
    several times a sequential pass, while a long video would cost a full pass without seeks.
    """
    import cv2

    p = _check_file(path, "video")
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise MediaError(p, "not a readable video (OpenCV could not open it).", "use MP4/WebM/MOV/AVI.")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        if fps <= 0 or fps > 1000 or count <= 0:
            raise MediaError(p, "video has no readable frames or frame rate.", "re-encode it (for example H.264 MP4).")
        duration = count / fps
        frames, times = [], []
        pos = 0  # index of the frame the next read() returns
        for t in frame_times(duration, max_frames, FRAME_INTERVAL_S, max_seconds):
            idx = min(int(t * fps), int(count) - 1)
            if 0 <= idx - pos <= MAX_GRAB_GAP:
                while pos < idx and cap.grab():
                    pos += 1
            else:
                cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
                pos = idx
            ok, bgr = cap.read()
            pos += 1
            if not ok or bgr is None:
                continue
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            times.append(idx / fps)
        if not frames:
            raise MediaError(p, "video is truncated or corrupt: no frame could be decoded.", "re-encode it.")
        h, w = frames[0].shape[:2]
        frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h)) for f in frames]
        return VideoClip(np.stack(frames), np.asarray(times, dtype=np.float32), fps, duration)
    finally:
        cap.release()


# ---------------------------------------------------------------- audio
def _decode_audio(p: Path, max_seconds: float, streams: str) -> np.ndarray:
    import av

    try:
        container = av.open(str(p))
    except av.error.InvalidDataError:
        raise MediaError(p, f"not a readable {streams} file (FFmpeg found no valid data).", "use WAV/FLAC/OGG/MP3 or a video with sound.") from None
    except (av.error.FFmpegError, OSError) as e:
        raise MediaError(p, f"could not open it for {streams} ({e}).", "use WAV/FLAC/OGG/MP3 or a video with sound.") from None
    try:
        if not container.streams.audio:
            raise MediaError(p, "has no audio track.", "choose a file with sound, or upload the audio separately.")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        limit = int(max_seconds * SAMPLE_RATE)
        chunks, n = [], 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    a = out.to_ndarray().reshape(-1)
                    chunks.append(a)
                    n += a.size
                if n >= limit:
                    break
            if n < limit:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, ValueError) as e:
            if not chunks:
                raise MediaError(p, f"audio is corrupt ({e}).", "re-export the audio.") from None
        if not chunks:
            raise MediaError(p, "audio track holds no samples.", "re-export the audio.")
        wav = np.concatenate(chunks)[:limit].astype(np.float32)
    finally:
        container.close()
    if wav.size < SAMPLE_RATE // 20:
        raise MediaError(p, f"audio is too short ({wav.size / SAMPLE_RATE:.3f} s).", "use a clip of at least 0.05 s.")
    if not np.isfinite(wav).all():
        raise MediaError(p, "audio holds NaN/inf samples.", "re-export the audio.")
    return wav


def load_audio(path: PathLike, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """16 kHz mono float32 waveform, at most `max_seconds`. Works on audio files and on video soundtracks."""
    p = _check_file(path, "audio")
    return _decode_audio(p, max_seconds, "audio")


def load_soundtrack(video_path: PathLike, max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """The soundtrack of a video file (AAC in MP4, Opus/Vorbis in WebM), as `load_audio` returns it."""
    p = _check_file(video_path, "video")
    return _decode_audio(p, max_seconds, "soundtrack")


def has_soundtrack(video_path: PathLike) -> bool:
    import av

    try:
        with av.open(str(video_path)) as c:
            return bool(c.streams.audio)
    except Exception:  # noqa: BLE001 - any unreadable file simply has no soundtrack
        return False


# ---------------------------------------------------------------- tables
def _table_from_rows(rows: list[list[str]], where: str) -> dict[str, str | list[str]]:
    out: dict[str, str | list[str]] = {}
    for row in rows:
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            continue
        k, v = cells[0], ",".join(c for c in cells[1:] if c)
        if k in out:
            prev = out[k]
            out[k] = (prev if isinstance(prev, list) else [prev]) + [v]
        else:
            out[k] = v
    return out


def parse_table(data: "dict | str | bytes", where: str = "table") -> dict[str, str | list[str]]:
    """Attributes from a dict, JSON text, two-column CSV text or `key: value` lines."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise MediaError(where, "table is not UTF-8 text.", "save it as UTF-8 CSV or JSON.") from None
    if isinstance(data, dict):
        table = {str(k).strip(): ([str(x) for x in v if str(x).strip()] if isinstance(v, (list, tuple)) else str(v).strip())
                 for k, v in data.items() if v not in (None, "", [])}
        table = {k: v for k, v in table.items() if k and v not in ("", [])}
    else:
        text = str(data).strip()
        if not text:
            raise MediaError(where, "table is empty.", "give at least one key/value pair.")
        if text[0] in "{[":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise MediaError(where, f"table looks like JSON but is invalid ({e.msg}, line {e.lineno}).", "fix the JSON.") from None
            if isinstance(obj, list):  # [{"key":..,"value":..}] or [[k, v]]
                rows = [[str(r.get("key", "")), str(r.get("value", ""))] if isinstance(r, dict) else [str(x) for x in r] for r in obj]
                table = _table_from_rows(rows, where)
            elif isinstance(obj, dict):
                return parse_table(obj, where)
            else:
                raise MediaError(where, "JSON table must be an object of key -> value.", "write {\"color\": \"red\", ...}.")
        elif all(":" in ln for ln in text.splitlines() if ln.strip()) and "," not in text.splitlines()[0].split(":")[0]:
            table = _table_from_rows([ln.split(":", 1) for ln in text.splitlines() if ln.strip()], where)
        else:
            lines = text.splitlines()
            if len(lines) > MAX_TABLE_ROWS + 1:
                raise MediaError(where, f"table has {len(lines):,} rows, over the {MAX_TABLE_ROWS:,}-row limit.",
                                 "a product's attribute table is key,value rows; split the file by product.")
            dialect = "excel-tab" if "\t" in lines[0] else "excel"
            rows = list(csv.reader(io.StringIO(text), dialect=dialect))
            if rows and [c.strip().lower() for c in rows[0][:2]] in (["key", "value"], ["attribute", "value"], ["property", "value"]):
                rows = rows[1:]
            if rows and max(len(r) for r in rows) > 2 and len(rows) <= 2:
                # wide CSV: header row of keys, one row of values
                table = _table_from_rows([[k, v] for k, v in zip(rows[0], rows[1] if len(rows) > 1 else [])], where)
            else:
                table = _table_from_rows(rows, where)
    if len(table) > MAX_TABLE_ROWS:
        raise MediaError(where, f"table has {len(table):,} entries, over the {MAX_TABLE_ROWS:,} limit.", "keep one product's attributes.")
    if not table:
        raise MediaError(where, "table holds no key/value pair.", "use `key,value` CSV rows, `key: value` lines or a JSON object.")
    return table


def load_table(path: PathLike) -> dict[str, str | list[str]]:
    p = _check_file(path, "table")
    return parse_table(p.read_bytes(), str(p))
