"""Decode real media files into arrays, with one clear error type (`MediaError`).

- images: JPEG/PNG/WebP (any PIL format), EXIF rotation, RGBA/grayscale/CMYK/16-bit -> RGB, pixel cap;
- video: MP4/WebM/MOV/AVI via OpenCV, <= 12 frames sampled evenly at about 1 fps, duration cap, each
  frame downscaled right after decoding (an 8K frame is never kept at full size);
- audio: WAV/FLAC/OGG/MP3 or a video's soundtrack (AAC) via PyAV, 16 kHz mono, <= 12 s;
- tables: dict, JSON, two-column CSV (key,value) or `key: value` lines, parsed in linear time under
  size, row, cell and nesting caps (each named in its error).

Decoders of untrusted bytes (PIL, OpenCV, FFmpeg) raise many exception types on broken input; each
loader turns all of them into `MediaError`, so a caller only ever sees the project's own error.

PyAV is used for audio because its wheels bundle FFmpeg, so AAC decodes without system packages.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaError

PathLike = Union[str, os.PathLike]

MAX_IMAGE_PIXELS = 40_000_000  # decompression-bomb cap (a 6,300 x 6,300 photo)
# What `Featurizer.decode` keeps of an image (the backbone's 224 px crop needs less; the rest is for display)
IMAGE_SHORT_SIDE = 512
IMAGE_LONG_SIDE = 2048
MAX_FRAMES = 12
FRAME_INTERVAL_S = 1.0
MAX_VIDEO_SECONDS = 60.0  # only the first minute of a long video is read
MAX_GRAB_GAP = 90  # frames walked with grab() before a seek is cheaper (about 3 s at 30 fps)
SAMPLE_RATE = 16_000
MAX_AUDIO_SECONDS = 12.0
MAX_VIDEO_PIXELS = 40_000_000  # per frame: 8K (7680 x 4320 = 33 MP) passes
DIRECT_SCALE_PIXELS = 9_000_000  # frames above 4K DCI are scaled straight from YUV (see _sample_scaled)
# Decoder threads of that PyAV path: each frame thread holds its own full-size frames. 8K, measured on the
# shared 2 cores: 1 thread +159 MiB, 4.7 s CPU; 2 frame threads +252 MiB, 5.1 s CPU spread over both
# cores. 2 keeps an 8K clip under 300 MB on any machine, however many cores it has.
THREAD_TYPE, THREAD_COUNT = "FRAME", 2
# Kept frames: short side <= 256 (the backbone's 224 px crop needs no more), long side <= 1024, so
# 12 frames of any video hold at most 9 MiB.
FRAME_SHORT_SIDE = 256
FRAME_LONG_SIDE = 1024
MAX_TABLE_ROWS = 1_000  # key/value rows (each item of a list value counts as a row)
MAX_TABLE_BYTES = 4 * 1024 * 1024  # a product's attribute table, as text
MAX_TABLE_CELL_CHARS = 4_096  # one key or value; the model reads at most 64 table tokens in all
MAX_TABLE_DEPTH = 3  # JSON nesting: [ {"key": .., "value": [..]} ] is 3 levels
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
def fit_size(h: int, w: int, short_side: int, long_side: int) -> tuple[int, int]:
    """(h, w) scaled down (never up) so that min(h, w) <= short_side and max(h, w) <= long_side."""
    s = min(1.0, short_side / min(h, w), long_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _to_uint8(im: Image.Image) -> Image.Image:
    """16-bit and float grayscale -> 8-bit L, scaled by the range the mode holds.

    PIL's convert("RGB") clips these modes at 255 instead of scaling, which turned a 16-bit PNG white.
    """
    if im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32) / 257.0  # 65535 -> 255
    elif im.mode == "I":  # 32-bit ints: 16-bit data in practice (PNG/TIFF), else the image's own range
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 255:
            pass
        elif lo >= 0 and hi <= 65535:
            a = a / 257.0
        else:
            a = (a - lo) * (255.0 / max(hi - lo, 1.0))
    elif im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        a = a * 255.0 if lo >= 0 and hi <= 1.0 else (a - lo) * (255.0 / max(hi - lo, 1e-12))
    else:
        return im
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def load_image(path: PathLike, short_side: int | None = None, long_side: int | None = None) -> np.ndarray:
    """RGB uint8 array (H, W, 3), EXIF-rotated.

    With `short_side`/`long_side` the image is downscaled (never upscaled) to fit both; JPEGs are then
    decoded at a reduced size (PIL's draft mode) instead of at full size first.
    """
    p = _check_file(path, "image")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(p) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise MediaError(p, f"image is {im.width}x{im.height} px, over the {MAX_IMAGE_PIXELS:,} pixel cap.", "downscale it.")
            if short_side and im.format == "JPEG":
                im.draft("RGB", (short_side, short_side))  # JPEG DCT scaling: 1/2, 1/4, 1/8, never below the size asked
            im = _to_uint8(ImageOps.exif_transpose(im))
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
            if short_side or long_side:
                h, w = fit_size(im.height, im.width, short_side or 1 << 30, long_side or 1 << 30)
                if (h, w) != (im.height, im.width):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)  # PIL's downscaling filters are antialiased
            arr = np.asarray(im)
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(p, f"image is too large ({e}).", "downscale it.") from None
    except UnidentifiedImageError:
        raise MediaError(p, "not a readable image (the bytes are not JPEG/PNG/WebP).", "check that the file really is an image.") from None
    except MemoryError:
        raise MediaError(p, "image is too large to decode in memory.", "downscale it.") from None
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise OSError, ValueError, struct.error, IndexError ... on broken bytes
        raise MediaError(p, f"image is corrupt or truncated ({type(e).__name__}: {e}).", "re-export the image.") from None
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


def _no_video_stream(p: Path) -> MediaError | None:
    """The clear error for a file FFmpeg opens but that holds no video stream (for example an M4A in .mp4)."""
    import av

    try:
        with av.open(str(p)) as c:
            n_video, n_audio = len(c.streams.video), len(c.streams.audio)
    except Exception:  # noqa: BLE001 - unreadable for FFmpeg too: the caller's own error applies
        return None
    if n_video:
        return None
    if n_audio:
        return MediaError(p, "has no video stream: the file holds only audio.",
                          "upload it as the product's audio instead, or choose a file with video.")
    return MediaError(p, "has no video stream (and no audio stream).", "choose a video file (MP4/WebM/MOV/AVI).")


def _probe_large(p: Path) -> tuple[int, int, float, int] | None:
    """(width, height, fps, frame count) from the container header when frames are above
    DIRECT_SCALE_PIXELS, else None. Probing with OpenCV instead decodes a first full-size frame on
    several threads (8K: +94 MB before any sampling)."""
    import av

    try:
        with av.open(str(p)) as c:
            if not c.streams.video:
                return None
            vs = c.streams.video[0]
            w, h = int(vs.codec_context.width or 0), int(vs.codec_context.height or 0)
            if w * h <= DIRECT_SCALE_PIXELS:
                return None
            fps = float(vs.average_rate or vs.guessed_rate or 0)
            secs = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (c.duration or 0) / av.time_base
            count = int(vs.frames or round(secs * fps))
    except Exception:  # noqa: BLE001 - unreadable header: OpenCV's path gives the error
        return None
    if not 0 < fps <= 1000 or count <= 0:
        return None
    return w, h, fps, count


def _sample_scaled(p: Path, duration: float, fps: float, count: int, max_frames: int, max_seconds: float,
                   short_side: int, long_side: int) -> tuple[list[np.ndarray], list[float]]:
    """The frames `load_video` samples, decoded by PyAV and scaled from YUV straight to small RGB.

    For frames above 4K, OpenCV's read() makes a full-size BGR copy (8K: 95 MiB) and its decoder
    threads (one per core) each hold full-size frames: an 8K clip cost +364 to +457 MB. Here swscale
    converts and downscales in one step, on THREAD_COUNT decoder threads.
    """
    import av

    frames: list[np.ndarray] = []
    times: list[float] = []
    try:
        with av.open(str(p)) as c:
            vs = c.streams.video[0]
            vs.thread_type, vs.thread_count = THREAD_TYPE, THREAD_COUNT
            tb = float(vs.time_base or 0) or 1.0 / fps
            start = vs.start_time or 0
            h, w = fit_size(vs.codec_context.height, vs.codec_context.width, short_side, long_side)
            decoded, at = c.decode(vs), 0.0  # `at`: the time the decoder has reached, seconds
            for t in frame_times(duration, max_frames, FRAME_INTERVAL_S, max_seconds):
                idx = min(int(t * fps), count - 1)
                want = idx / fps
                if want - at > MAX_GRAB_GAP / fps:  # long gap: seek to the keyframe before it, as load_video
                    c.seek(int(want / tb) + start, stream=vs, backward=True)
                    decoded = c.decode(vs)
                for fr in decoded:
                    at = ((fr.pts or 0) - start) * tb
                    if at >= want - 0.5 / fps:
                        frames.append(fr.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA"))
                        times.append(want)
                        break
    except Exception as e:  # noqa: BLE001 - FFmpeg errors on a broken stream
        if not frames:
            raise MediaError(p, f"video is corrupt ({type(e).__name__}: {e}).", "re-encode it (for example H.264 MP4).") from None
    if not frames:
        raise MediaError(p, "video is truncated or corrupt: no frame could be decoded.", "re-encode it.")
    return frames, times


def load_video(path: PathLike, max_frames: int = MAX_FRAMES, max_seconds: float = MAX_VIDEO_SECONDS,
               short_side: int = FRAME_SHORT_SIDE, long_side: int = FRAME_LONG_SIDE) -> VideoClip:
    """Sample <= max_frames RGB frames evenly from the first `max_seconds`.

    Each frame is downscaled to fit `short_side`/`long_side` as soon as it is decoded (before the color
    conversion), so a clip never holds full-size frames: an 8K frame is 95 MiB, the kept one 0.3 MiB.
    Short gaps between sampled frames are walked with grab() (decode, no conversion); long ones seek.
    A seek decodes again from the previous keyframe, so seeking to every frame of a short clip costs
    several times a sequential pass, while a long video would cost a full pass without seeks.
    """
    import cv2

    p = _check_file(path, "video")
    large = _probe_large(p)
    if large:
        width, height, fps, count = large
        if width * height > MAX_VIDEO_PIXELS:
            raise MediaError(p, f"video frames are {width}x{height} px, over the {MAX_VIDEO_PIXELS:,} pixel cap.",
                             "re-encode it at 4K or less.")
        frames, times = _sample_scaled(p, count / fps, fps, count, max_frames, max_seconds, short_side, long_side)
        return VideoClip(np.stack(frames), np.asarray(times, dtype=np.float32), fps, count / fps)
    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise _no_video_stream(p) or MediaError(p, "not a readable video (OpenCV could not open it).", "use MP4/WebM/MOV/AVI.")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if not np.isfinite(fps) or fps <= 0 or fps > 1000 or not np.isfinite(count) or count <= 0:
            raise _no_video_stream(p) or MediaError(p, "video has no readable frames or frame rate.", "re-encode it (for example H.264 MP4).")
        if width * height > MAX_VIDEO_PIXELS:
            raise MediaError(p, f"video frames are {width}x{height} px, over the {MAX_VIDEO_PIXELS:,} pixel cap.",
                             "re-encode it at 4K or less.")
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
            if not ok or bgr is None or bgr.ndim != 3 or min(bgr.shape[:2]) < 1:
                continue
            h, w = fit_size(bgr.shape[0], bgr.shape[1], short_side, long_side)
            if (h, w) != bgr.shape[:2]:
                bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            del bgr  # drop the full-size frame before the next decode
            times.append(idx / fps)
        if not frames:
            raise _no_video_stream(p) or MediaError(p, "video is truncated or corrupt: no frame could be decoded.", "re-encode it.")
        h, w = frames[0].shape[:2]
        frames = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h)) for f in frames]
        return VideoClip(np.stack(frames), np.asarray(times, dtype=np.float32), fps, duration)
    except MediaError:
        raise
    except (cv2.error, OverflowError, ValueError, MemoryError) as e:  # broken headers can fail inside OpenCV
        raise MediaError(p, f"video is corrupt ({type(e).__name__}: {e}).", "re-encode it (for example H.264 MP4).") from None
    finally:
        cap.release()


# ---------------------------------------------------------------- audio
def _decode_audio(p: Path, max_seconds: float, streams: str) -> np.ndarray:
    import av

    try:
        container = av.open(str(p))
    except av.error.InvalidDataError:
        raise MediaError(p, f"not a readable {streams} file (FFmpeg found no valid data).", "use WAV/FLAC/OGG/MP3 or a video with sound.") from None
    except Exception as e:  # noqa: BLE001 - FFmpeg errors, OSError, and odd ValueErrors on broken headers
        raise MediaError(p, f"could not open it for {streams} ({type(e).__name__}: {e}).", "use WAV/FLAC/OGG/MP3 or a video with sound.") from None
    try:
        if not container.streams.audio:
            raise MediaError(p, "has no audio track.", "choose a file with sound, or upload the audio separately.")
        limit = int(max_seconds * SAMPLE_RATE)
        chunks, n = [], 0
        try:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
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
        except Exception as e:  # noqa: BLE001 - a broken stream fails in FFmpeg, the resampler or numpy
            if not chunks:
                raise MediaError(p, f"audio is corrupt ({type(e).__name__}: {e}).", "re-export the audio.") from None
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
# JSON strings, so that brackets inside them do not count as nesting (unrolled: linear time)
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_ROWS_FIX = "a product's attribute table is key/value rows; split the file by product or keep the attributes that matter."


def _rows_error(where: str, n: int) -> MediaError:
    return MediaError(where, f"table has {n:,} rows (or more), over the {MAX_TABLE_ROWS:,}-row limit.", _ROWS_FIX)


def _cell(value: object, where: str, line: int | None = None) -> str:
    """One key or value as stripped text, within the cell limit."""
    text = (value if isinstance(value, str) else "" if value is None else str(value)).strip()
    if len(text) > MAX_TABLE_CELL_CHARS:
        at = f" on line {line:,}" if line else ""
        raise MediaError(where, f"table cell{at} is {len(text):,} characters, over the {MAX_TABLE_CELL_CHARS:,}-character limit "
                                f"(it starts {text[:30]!r}).",
                         "shorten that value or split it into several attributes (the model reads at most 64 table tokens).")
    return text


def _depth_error(where: str) -> MediaError:
    return MediaError(where, f"table nests lists/objects more than {MAX_TABLE_DEPTH} levels deep.",
                      'use a flat object {"color": "red", "size": ["S", "M"]} or [{"key": .., "value": ..}] rows.')


def _check_depth(obj: object, where: str) -> None:
    """Nesting of lists/objects, walked without recursion (a 5,000-deep value must not overflow the stack)."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, (dict, list, tuple)):
            if depth > MAX_TABLE_DEPTH:
                raise _depth_error(where)
            stack.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of JSON text, counted outside strings, in linear time."""
    b = np.frombuffer(_JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    step = (b == ord("[")).astype(np.int32) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def _table_from_rows(rows: "list[tuple[int, list[str]]]", where: str) -> dict[str, str | list[str]]:
    """(line, cells) rows -> {key: value or [values]}: the first cell is the key, the rest the value.

    Repeated keys collect their values in one list, appended in place (copying the list for every
    repeat made 80k `size: X` lines take 12 s).
    """
    if len(rows) > MAX_TABLE_ROWS:
        raise _rows_error(where, len(rows))
    out: dict[str, str | list[str]] = {}
    for line, row in rows:
        cells = [_cell(c, where, line) for c in row]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            continue
        k, v = cells[0], ",".join(c for c in cells[1:] if c)
        prev = out.get(k)
        if prev is None:
            out[k] = v
        elif isinstance(prev, list):
            prev.append(v)
        else:
            out[k] = [prev, v]
    return out


def _table_from_dict(d: dict, where: str) -> dict[str, str | list[str]]:
    _check_depth(d, where)
    n_rows = sum(len(v) if isinstance(v, (list, tuple)) else 1 for v in d.values())
    if n_rows > MAX_TABLE_ROWS:
        raise _rows_error(where, n_rows)
    out: dict[str, str | list[str]] = {}
    for k, v in d.items():
        key = _cell(k, where)
        if not key:
            continue
        if isinstance(v, (list, tuple)):
            vals = [c for c in (_cell(x, where) for x in v) if c]
            if vals:
                out[key] = vals
        else:
            val = _cell(v, where)
            if val:
                out[key] = val
    return out


def _table_from_json_list(obj: list, where: str) -> dict[str, str | list[str]]:
    """[{"key": .., "value": ..}, ...] or [[key, value], ...]; a list value gives one row per item."""
    if len(obj) > MAX_TABLE_ROWS:
        raise _rows_error(where, len(obj))
    rows: list[tuple[int, list[str]]] = []
    for n, r in enumerate(obj, 1):
        if isinstance(r, dict) and "key" in r:
            vals = r.get("value")
            for v in (vals if isinstance(vals, list) else [vals]):
                rows.append((n, [r["key"], v]))
        elif isinstance(r, list) and len(r) >= 2:
            rows.append((n, list(r)))
        else:
            raise MediaError(where, f"JSON table item {n} is {json.dumps(r)[:40]}, not a {{\"key\": .., \"value\": ..}} object "
                                    "or a [key, value] pair.",
                             'write {"color": "red", ...}, [{"key": "color", "value": "red"}, ...] or [["color", "red"], ...].')
    return _table_from_rows(rows, where)


def _table_from_csv(text: str, first_line: str, where: str) -> dict[str, str | list[str]]:
    dialect = "excel-tab" if "\t" in first_line else "excel"
    reader = csv.reader(io.StringIO(text), dialect=dialect)
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
            if len(rows) > MAX_TABLE_ROWS + 1:  # + 1: a header row
                raise _rows_error(where, len(rows))
    except csv.Error as e:
        line = reader.line_num
        if "field larger" in str(e):
            raise MediaError(where, f"table cell on line {line:,} is over {csv.field_size_limit():,} characters "
                                    f"(the limit is {MAX_TABLE_CELL_CHARS:,}).",
                             "shorten that value, or close the quote that opens it.") from None
        raise MediaError(where, f"table is not valid CSV at line {line:,} ({e}).", "fix the quoting of that line.") from None
    if rows and [c.strip().lower() for c in rows[0][1][:2]] in (["key", "value"], ["attribute", "value"], ["property", "value"]):
        rows = rows[1:]
    if rows and len(rows) <= 2 and max(len(r) for _, r in rows) > 2:
        # wide CSV: header row of keys, one row of values
        values = rows[1][1] if len(rows) > 1 else []
        return _table_from_rows([(rows[0][0], [k, v]) for k, v in zip(rows[0][1], values)], where)
    return _table_from_rows(rows, where)


def parse_table(data: "dict | str | bytes", where: str = "table") -> dict[str, str | list[str]]:
    """Attributes from a dict, JSON text, two-column CSV text or `key: value` lines.

    Linear in the input's size, and every cap raises a `MediaError` naming it: MAX_TABLE_BYTES of text,
    MAX_TABLE_ROWS rows, MAX_TABLE_CELL_CHARS per key or value, MAX_TABLE_DEPTH levels of JSON nesting.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > MAX_TABLE_BYTES:
            raise MediaError(where, f"table is {len(data):,} bytes, over the {MAX_TABLE_BYTES:,}-byte limit.", _ROWS_FIX)
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise MediaError(where, "table is not UTF-8 text.", "save it as UTF-8 CSV or JSON.") from None
    if isinstance(data, dict):
        table = _table_from_dict(data, where)
    else:
        text = str(data).strip()
        if not text:
            raise MediaError(where, "table is empty.", "give at least one key/value pair.")
        if len(text) > MAX_TABLE_BYTES:
            raise MediaError(where, f"table is {len(text):,} characters, over the {MAX_TABLE_BYTES:,}-character limit.", _ROWS_FIX)
        if text[0] in "{[":
            if _json_depth(text) > MAX_TABLE_DEPTH:
                raise _depth_error(where)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise MediaError(where, f"table looks like JSON but is invalid ({e.msg}, line {e.lineno}).", "fix the JSON.") from None
            except RecursionError:  # only if the bracket count above was fooled by malformed strings
                raise _depth_error(where) from None
            if isinstance(obj, list):
                table = _table_from_json_list(obj, where)
            elif isinstance(obj, dict):
                table = _table_from_dict(obj, where)
            else:
                raise MediaError(where, "JSON table must be an object of key -> value.", "write {\"color\": \"red\", ...}.")
        else:
            lines = text.splitlines()
            if len(lines) > MAX_TABLE_ROWS + 1:  # + 1: a CSV header row
                raise _rows_error(where, len(lines))
            if all(":" in ln for ln in lines if ln.strip()) and "," not in lines[0].split(":")[0]:
                table = _table_from_rows([(n, ln.split(":", 1)) for n, ln in enumerate(lines, 1) if ln.strip()], where)
            else:
                table = _table_from_csv(text, lines[0], where)
    if not table:
        raise MediaError(where, "table holds no key/value pair.", "use `key,value` CSV rows, `key: value` lines or a JSON object.")
    return table


def load_table(path: PathLike) -> dict[str, str | list[str]]:
    """`parse_table` of a file; its size is checked before it is read."""
    p = _check_file(path, "table")
    size = p.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise MediaError(p, f"table file is {size:,} bytes, over the {MAX_TABLE_BYTES:,}-byte limit.", _ROWS_FIX)
    return parse_table(p.read_bytes(), str(p))
