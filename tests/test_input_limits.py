"""Bounded work, clear errors, no silent wrong results for media, tables and text (issue #10).

Each test reproduces one observed failure: an 8K video kept at full size, tables without caps
(quadratic `key: value` parsing, no row/cell/nesting limits, raw csv/Recursion/Type errors), a
10M-character description tokenized whole, a lone surrogate crashing the tokenizer, a washed-out
16-bit PNG, a broken audio file dropped silently, an audio-only MP4 called an unreadable video.
"""
import json

import numpy as np
import pytest
from PIL import Image

from core.data import media
from core.data.backbones import MAX_TEXT_CHARS, clean_text, load_tokenizer, tokenize_table, tokenize_text
from core.errors import MediaError
from core.data.records import Product
from core.data.synth import spin_frames, tone, write_audio, write_video


# ---------------------------------------------------------------- video: 8K frames are never kept
@pytest.fixture(scope="module")
def video_8k(tmp_path_factory):
    """3 frames of 7680x4320 at 2 fps, written by OpenCV (MPEG-4 part 2; flat colors compress to ~0.5 MB)."""
    import cv2

    path = tmp_path_factory.mktemp("v8k") / "clip-8k.mp4"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 2, (7680, 4320))
    assert out.isOpened(), "OpenCV cannot write 8K MPEG-4 here"
    frame = np.full((4320, 7680, 3), 200, np.uint8)
    for i in range(3):
        f = frame.copy()
        cv2.circle(f, (1500 + 2000 * i, 2160), 900, (0, 0, 255), -1)  # BGR red
        out.write(f)
    out.release()
    return path


def test_8k_video_frames_are_downscaled_at_decode(video_8k):
    clip = media.load_video(video_8k)
    n, h, w, c = clip.frames.shape
    assert n == 2 and c == 3
    assert min(h, w) == media.FRAME_SHORT_SIDE and max(h, w) <= media.FRAME_LONG_SIDE
    assert abs(w / h - 7680 / 4320) < 0.01  # aspect kept
    assert clip.frames.nbytes <= media.MAX_FRAMES * media.FRAME_SHORT_SIDE * media.FRAME_LONG_SIDE * 3
    # the content survives the reduced-size read: the red disc is red, the background grey
    center = clip.frames[0, h // 2, round(w * 1500 / 7680)]
    assert center[0] > 200 and center[1] < 40 and center[2] < 40
    assert np.all(np.abs(clip.frames[0, 5, -5].astype(int) - 200) < 12)


def test_decoded_product_keeps_small_frames_and_images(video_8k, tmp_path, featurizer):
    big = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(big, quality=90)
    d = featurizer.decode(Product(id="big", title="Big", images=[str(big)], video=str(video_8k)))
    assert not d.errors
    assert min(d.video.frames.shape[1:3]) <= max(media.FRAME_SHORT_SIDE, featurizer.cfg.image_size)
    assert d.video.frames.nbytes < 10 * 2**20
    h, w = d.images[0].shape[:2]
    assert min(h, w) == media.IMAGE_SHORT_SIDE and (h, w) == (512, 683)
    assert np.abs(d.images[0].astype(int) - (10, 120, 200)).max() <= 3


@pytest.mark.parametrize("gap", [90, 0])  # grab-walk and seek
def test_direct_scale_path_samples_the_same_frames(tmp_path, monkeypatch, gap):
    """The PyAV path (frames above 4K) picks the same frames as the OpenCV path, scaled the same way."""
    p = write_video(tmp_path / "v.mp4", spin_frames("triangle", (30, 90, 220), 6.0, fps=12, size=128), fps=12)
    monkeypatch.setattr(media, "MAX_GRAB_GAP", gap)
    ref = media.load_video(p, short_side=64, long_side=64)
    monkeypatch.setattr(media, "DIRECT_SCALE_PIXELS", 0)
    got = media.load_video(p, short_side=64, long_side=64)
    assert got.frames.shape == ref.frames.shape == (6, 64, 64, 3)
    np.testing.assert_array_equal(got.times, ref.times)
    diff = np.abs(got.frames.astype(int) - ref.frames.astype(int))
    assert diff.mean() < 4, diff.mean()  # same frames (a neighbouring frame of the spin differs far more)


def test_video_pixel_cap(video_8k, monkeypatch):
    monkeypatch.setattr(media, "MAX_VIDEO_PIXELS", 4096 * 2160)
    with pytest.raises(MediaError, match=r"7680x4320 px, over the 8,847,360 pixel cap") as e:
        media.load_video(video_8k)
    assert "clip-8k.mp4" in str(e.value) and "Fix:" in str(e.value)


def test_audio_only_mp4_says_it_has_no_video_stream(tmp_path):
    p = write_audio(tmp_path / "voice.mp4", tone(440, 1.0))
    with pytest.raises(MediaError) as e:
        media.load_video(p)
    msg = str(e.value)
    assert "voice.mp4" in msg and "no video stream" in msg and "audio" in msg.split("Fix:")[1]
    assert media.load_audio(p).size > 10_000  # and it is usable as the audio


# ---------------------------------------------------------------- tables
def test_key_value_lines_repeated_key_collects_values():
    table = media.parse_table("\n".join(f"size: {i}" for i in range(media.MAX_TABLE_ROWS - 1)) + "\ncolor: red")
    assert table["color"] == "red" and table["size"] == [str(i) for i in range(media.MAX_TABLE_ROWS - 1)]


@pytest.mark.parametrize("text", [
    "\n".join(f"size: {i}" for i in range(80_000)),  # the quadratic case: one key, 80k values
    "\n".join(f"k{i}: v" for i in range(5_000)),
    json.dumps([["size", str(i)] for i in range(2_000)]),  # the JSON-list branch had no row cap
    json.dumps([{"key": "size", "value": str(i)} for i in range(2_000)]),
    json.dumps({"size": [str(i) for i in range(2_000)]}),
])
def test_table_row_cap(text):
    with pytest.raises(MediaError, match=r"upload\.txt: table has [\d,]+ rows .*over the 1,000-row limit.*Fix:"):
        media.parse_table(text, "upload.txt")


@pytest.mark.parametrize("text", [
    "color," + "x" * 5_000,
    "color: " + "x" * 5_000,
    json.dumps({"color": "x" * 5_000}),
    json.dumps({"c" * 5_000: "red"}),
])
def test_table_cell_cap(text):
    with pytest.raises(MediaError, match=r"over the 4,096-character limit.*Fix: shorten"):
        media.parse_table(text, "attrs.csv")


def test_csv_field_over_128k_is_a_clear_error(tmp_path):
    p = tmp_path / "big-cell.csv"
    p.write_text('color,red\nnotes,"' + "x" * 200_000 + '"\n')
    with pytest.raises(MediaError) as e:
        media.load_table(p)
    msg = str(e.value)
    assert "big-cell.csv" in msg and "line 2" in msg and "4,096" in msg and "Fix:" in msg


def test_table_byte_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "MAX_TABLE_BYTES", 1_000)
    p = tmp_path / "huge.csv"
    p.write_text("k,v\n" * 300)
    with pytest.raises(MediaError, match=r"huge\.csv: table file is 1,200 bytes, over the 1,000-byte limit"):
        media.load_table(p)
    with pytest.raises(MediaError, match=r"over the 1,000-character limit"):
        media.parse_table("k,v\n" * 300, "pasted")


@pytest.mark.parametrize("text", [
    "[" * 5_000 + "]" * 5_000,  # was RecursionError
    '{"a": ' * 5_000 + "1" + "}" * 5_000,
    '{"a": {"b": {"c": {"d": "e"}}}}',
    '[{"key": "k", "value": [["x"]]}]',
])
def test_json_nesting_cap(text):
    with pytest.raises(MediaError, match=r"t\.json: table nests lists/objects more than 3 levels deep.*Fix:"):
        media.parse_table(text, "t.json")


def test_json_nesting_brackets_inside_strings_do_not_count():
    assert media.parse_table(json.dumps({"pattern": "[[[[{{{{", "size": ["S", "M"]})) == {"pattern": "[[[[{{{{", "size": ["S", "M"]}


def test_deeply_nested_dict_is_a_clear_error():
    d: dict = {"leaf": "x"}
    for _ in range(5_000):
        d = {"a": d}
    with pytest.raises(MediaError, match="more than 3 levels deep"):
        media.parse_table({"color": "red", "deep": d}, "p1 attributes")


@pytest.mark.parametrize("text,item", [("[1, 2, 3]", "item 1 is 1"), ('[["a", "b"], "c"]', 'item 2 is "c"'),
                                       ('[{"value": 3}]', 'item 1 is {"value": 3}')])
def test_json_list_of_non_rows_is_a_clear_error(text, item):
    with pytest.raises(MediaError) as e:
        media.parse_table(text, "rows.json")
    msg = str(e.value)
    assert msg.startswith("rows.json: JSON table ") and item in msg and '[{"key": "color", "value": "red"}' in msg


def test_json_list_rows_still_parse():
    rows = [{"key": "color", "value": "red"}, {"key": "size", "value": ["S", "M"]}, ["gender", "Men"]]
    assert media.parse_table(json.dumps(rows)) == {"color": "red", "size": ["S", "M"], "gender": "Men"}


# ---------------------------------------------------------------- text
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_long_description_is_cut_before_tokenizing(tok, featurizer):
    desc = "soft cotton shirt " * 600_000  # 10.8M characters
    ids = tokenize_text(tok, "Shirt", desc, 64)
    np.testing.assert_array_equal(ids, tokenize_text(tok, "Shirt", desc[:1_000], 64))
    assert len(ids) == 64
    d = featurizer.decode(Product(id="long", title="Shirt", description=desc))
    assert len(d.text) == MAX_TEXT_CHARS and d.text.startswith("Shirt soft cotton")
    assert "long:" in d.notes["text"] and "20,000" in d.notes["text"] and not d.errors


def test_lone_surrogate_is_cleaned(tok):
    assert clean_text("caf\udce9") == "café"
    assert clean_text("a\ud800b") == "a\ufffdb"
    np.testing.assert_array_equal(tokenize_text(tok, "caf\udce9", "x\udfff"), tokenize_text(tok, "café", "x"))
    ids, spans = tokenize_table(tok, {"mat\udce9rial": "cotton\ud800"})
    want_ids, want_spans = tokenize_table(tok, {"matérial": "cotton"})
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(spans, want_spans)


# ---------------------------------------------------------------- images
def test_16bit_grayscale_png_scaled_to_8bit(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(np.uint16)
    p = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    arr = media.load_image(p)
    assert arr.shape == (32, 64, 3) and arr.dtype == np.uint8
    want = np.rint(ramp / 257.0)
    assert np.abs(arr[..., 0].astype(float) - want).max() <= 1
    assert abs(arr.mean() - 127.5) < 2  # was 253.9: everything above 255 clipped to white


def test_32bit_int_and_float_images(tmp_path):
    p = tmp_path / "i32.tif"
    Image.fromarray(np.tile(np.arange(0, 4096, 64, dtype=np.int32), (8, 1)), mode="I").save(p)
    a = media.load_image(p)
    assert a[0, 0, 0] == 0 and a[0, -1, 0] == round(4032 / 257)
    p = tmp_path / "f.tif"
    Image.fromarray(np.tile(np.linspace(0, 1, 16, dtype=np.float32), (8, 1)), mode="F").save(p)
    a = media.load_image(p)
    assert a[0, 0, 0] == 0 and a[0, -1, 0] == 255


# ---------------------------------------------------------------- audio fallback
def test_broken_audio_error_is_kept_when_the_soundtrack_is_used(tmp_path, featurizer):
    video = write_video(tmp_path / "v.mp4", spin_frames("circle", (200, 40, 40), 2.0, size=64), audio=tone(440, 2.0))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really audio" * 20)
    d = featurizer.decode(Product(id="p", title="x", video=str(video), audio=str(bad)))
    assert d.audio is not None and d.audio_source == "video"
    msg = d.errors["audio"]
    assert "broken.wav" in msg and "v.mp4" in msg and "soundtrack" in msg and "instead" in msg
    assert "soundtrack" in d.notes["audio"]


def test_feature_cli_records_the_audio_error_beside_the_soundtrack(tmp_path):
    """`core.data.features build` keeps the broken audio file's error in the index (it was dropped)."""
    from core.data.features import build_cache

    video = write_video(tmp_path / "v.mp4", spin_frames("square", (40, 160, 60), 1.0, size=64), audio=tone(330, 1.0))
    bad = tmp_path / "broken.ogg"
    bad.write_bytes(b"OggS but truncated")
    p = Product(id="p-audio", title="x", video=str(video), audio=str(bad))
    build_cache(tmp_path / "m.jsonl", tmp_path / "cache", device="cpu", progress=False, products=[p])
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert "p-audio" in index["products"] and index["products"]["p-audio"]["pattern"]
    msg = index["failures"]["p-audio"]["modalities"]["audio"]
    assert "broken.ogg" in msg and "soundtrack" in msg
