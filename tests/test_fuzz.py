"""Property-based fuzzing of every input a user controls: table text/bytes, media file bytes, text.

The property: an input either works or raises the project's own error (a `ScaleError` subclass);
any other exception (csv.Error, RecursionError, TypeError, struct.error, cv2.error ...) fails the test.
"""
from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.data import media
from core.data.backbones import load_tokenizer, tokenize_table, tokenize_text
from core.errors import ScaleError
from core.data.synth import draw_shape, spin_frames, tone, write_audio, write_video

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# any code point, lone surrogates included (hypothesis draws them only when asked for category Cs)
ANY_CHAR = st.characters() | st.characters(categories=["Cs"])
cell = st.text(ANY_CHAR, max_size=12)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | cell,
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(cell, inner, max_size=4),
                          max_leaves=12)


def _csv_text(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _check_table(data) -> None:
    try:
        table = media.parse_table(data, "fuzz.table")
    except ScaleError:
        return
    assert table and all(isinstance(k, str) and k for k in table)
    for v in table.values():
        assert (isinstance(v, str) and v) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))


@FUZZ
@given(st.one_of(
    st.text(ANY_CHAR, max_size=200),
    st.binary(max_size=200),
    st.lists(st.lists(cell, max_size=4), max_size=8).map(_csv_text),
    st.lists(st.tuples(cell, cell), max_size=8).map(lambda kv: "\n".join(f"{k}: {v}" for k, v in kv)),
    json_value.map(lambda v: json.dumps(v, ensure_ascii=False)),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(cell, json_value, max_size=6),
))
@example("[1, 2, 3]")
@example("[" * 3000 + "]" * 3000)
@example('a,"' + "x" * 140_000 + '"')
@example(b"\xff\xfe key,value")
@example({"k": [[["deep"]]]})
def test_table_inputs_work_or_raise_scale_error(data):
    _check_table(data)


# ---------------------------------------------------------------- media files
@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, bytes]:
    """One small valid file of each kind: the fuzzer truncates and corrupts these (and tries random bytes)."""
    d = tmp_path_factory.mktemp("samples")
    Image.fromarray(draw_shape("circle", (200, 40, 40), size=32)).save(d / "s.png")
    Image.fromarray(draw_shape("square", (40, 40, 200), size=32)).save(d / "s.jpg", quality=80)
    write_video(d / "s.mp4", spin_frames("triangle", (30, 90, 220), 1.0, fps=6, size=32), fps=6, audio=tone(440, 1.0))
    write_audio(d / "s.wav", tone(330, 0.3))
    write_audio(d / "s.ogg", tone(550, 0.3))
    return {ext: (d / f"s{ext}").read_bytes() for ext in (".png", ".jpg", ".mp4", ".wav", ".ogg")}


LOADERS = {".png": [media.load_image], ".jpg": [media.load_image], ".mp4": [media.load_video, media.load_audio],
           ".wav": [media.load_audio], ".ogg": [media.load_audio]}


@st.composite
def damaged(draw, good: bytes) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "corrupted", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "header":  # a valid start followed by garbage
        cut = draw(st.integers(4, min(len(good), 256)))
        return good[:cut] + draw(st.binary(min_size=1, max_size=400))
    out = bytearray(good)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@pytest.mark.parametrize("ext", list(LOADERS))
def test_media_bytes_work_or_raise_scale_error(samples, ext):
    good = samples[ext]
    for load in LOADERS[ext]:  # the intact sample works
        load_ok = load(_write(good, ext))
        assert load_ok is not None

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(damaged(good))
    def run(data: bytes) -> None:
        path = _write(data, ext)
        for load in LOADERS[ext]:
            try:
                out = load(path)
            except ScaleError as e:
                assert path.name in str(e)  # the message names the file
                continue
            frames = out.frames if isinstance(out, media.VideoClip) else out
            assert isinstance(frames, np.ndarray) and frames.size > 0

    run()


_TMP = tempfile.TemporaryDirectory(prefix="scale-fuzz-")


def _write(data: bytes, ext: str) -> Path:
    path = Path(_TMP.name) / f"fuzz{ext}"
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- text
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_text_inputs_tokenize_or_raise_scale_error(tok):
    @FUZZ
    @given(st.text(ANY_CHAR, max_size=300), st.text(ANY_CHAR, max_size=300),
           st.dictionaries(st.text(ANY_CHAR, max_size=20), st.text(ANY_CHAR, max_size=20) | st.lists(cell, max_size=3), max_size=5))
    @example("caf\udce9", "\ud800", {"mat\udce9rial": "cotton\udfff"})
    def run(title: str, description: str, attrs: dict) -> None:
        try:
            ids = tokenize_text(tok, title, description, 64)
        except ScaleError:
            ids = None
        if ids is not None:
            assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) <= 64
        try:
            table = media.parse_table(attrs, "fuzz attributes")
        except ScaleError:
            return
        ids, spans = tokenize_table(tok, table, 64)
        assert len(ids) <= 64 and spans.shape[1] == 4 and (spans <= len(ids)).all()

    run()
