"""Real media in: every supported format decodes, every broken file gives the one clear MediaError."""
import json

import numpy as np
import pytest
from PIL import Image

from core.data import media
from core.errors import MediaError
from core.data.synth import draw_shape, spin_frames, tone, write_audio, write_video


def test_image_formats_and_modes(tmp_path):
    rgb = draw_shape("circle", (200, 40, 40))
    for ext, mode in [(".jpg", "RGB"), (".png", "RGBA"), (".webp", "RGB"), (".png", "L"), (".jpg", "CMYK")]:
        p = tmp_path / f"im_{mode}{ext}"
        Image.fromarray(rgb).convert(mode).save(p)
        arr = media.load_image(p)
        assert arr.dtype == np.uint8 and arr.shape == (160, 160, 3), (ext, mode)


def test_image_exif_rotation(tmp_path):
    im = Image.fromarray(np.zeros((40, 100, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif)
    assert media.load_image(p).shape[:2] == (100, 40)


def test_image_pixel_cap(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(p)
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(MediaError, match="pixel cap|too large"):
        media.load_image(p)


@pytest.mark.parametrize("name,content,match", [
    ("text.jpg", b"this is not an image", "not a readable image"),
    ("empty.png", b"", "empty"),
    ("trunc.jpg", None, "corrupt or truncated|not a readable"),
])
def test_broken_images(tmp_path, name, content, match):
    p = tmp_path / name
    if content is None:
        good = tmp_path / "good.jpg"
        Image.fromarray(draw_shape("square", (0, 0, 255))).save(good)
        content = good.read_bytes()[:300]
    p.write_bytes(content)
    with pytest.raises(MediaError, match=match) as e:
        media.load_image(p)
    assert name in str(e.value)


def test_video_sampling_and_soundtrack(tmp_path):
    p = write_video(tmp_path / "v.mp4", spin_frames("circle", (200, 40, 40), 3.0), fps=12, audio=tone(440, 3.0))
    clip = media.load_video(p)
    assert clip.frames.shape[0] == 3 and clip.frames.shape[-1] == 3  # about 1 fps
    assert abs(clip.duration - 3.0) < 0.2
    wav = media.load_soundtrack(p)
    assert wav.dtype == np.float32 and abs(wav.size / 16000 - 3.0) < 0.2
    assert media.has_soundtrack(p)


def test_video_frame_times_cap():
    t = media.frame_times(2 * 3600.0)  # a 2-hour video
    assert len(t) == media.MAX_FRAMES and t.max() <= media.MAX_VIDEO_SECONDS


def test_long_video_costs_no_more(tmp_path, monkeypatch):
    p = write_video(tmp_path / "long.mp4", spin_frames("square", (0, 200, 0), 30.0, size=64), fps=12)
    monkeypatch.setattr(media, "MAX_VIDEO_SECONDS", 5.0)
    clip = media.load_video(p, max_seconds=5.0)
    assert clip.times.max() <= 5.0 and len(clip.frames) == 5


def test_silent_video_has_no_soundtrack(tmp_path):
    p = write_video(tmp_path / "silent.mp4", spin_frames("circle", (9, 9, 9), 1.0))
    assert not media.has_soundtrack(p)
    with pytest.raises(MediaError, match="no audio track"):
        media.load_soundtrack(p)


@pytest.mark.parametrize("name,content,match", [
    ("zero.mp4", b"", "empty"),
    ("text.mp4", b"hello, I am not a video" * 10, "not a readable video|no readable frames"),
])
def test_broken_videos(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(MediaError, match=match):
        media.load_video(p)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg", ".mp3"])
def test_audio_formats(tmp_path, ext):
    p = write_audio(tmp_path / f"a{ext}", tone(440, 2.0, sr=16000))
    wav = media.load_audio(p)
    assert wav.dtype == np.float32 and abs(wav.size / 16000 - 2.0) < 0.15


def test_audio_resampled_and_capped(tmp_path):
    import soundfile as sf

    p = tmp_path / "long44k.wav"
    sf.write(p, np.stack([tone(300, 20.0, sr=44100)] * 2, 1), 44100)  # stereo 44.1 kHz, 20 s
    wav = media.load_audio(p)
    assert wav.ndim == 1 and wav.size == 12 * 16000


@pytest.mark.parametrize("name,content", [("zero.wav", b""), ("text.wav", b"RIFF but not really audio" * 20),
                                          ("text.mp3", b"\x00\x01garbage" * 50)])
def test_broken_audio(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(MediaError) as e:
        media.load_audio(p)
    assert name in str(e.value)


def test_tables_all_formats(tmp_path):
    want = {"color": "Navy Blue", "gender": "Men"}
    assert media.parse_table(want) == want
    assert media.parse_table(json.dumps(want)) == want
    assert media.parse_table("key,value\ncolor,Navy Blue\ngender,Men\n") == want
    assert media.parse_table("color: Navy Blue\ngender: Men") == want
    p = tmp_path / "t.csv"
    p.write_text("color,Navy Blue\ngender,Men\n")
    assert media.load_table(p) == want


@pytest.mark.parametrize("content,match", [("", "empty"), ("{not json", "invalid"), ("just words", "no key/value"),
                                           ("k,v\n" + "a,b\n" * 10_001, "limit")])
def test_broken_tables(content, match):
    with pytest.raises(MediaError, match=match):
        media.parse_table(content, "upload.csv")


@pytest.mark.parametrize("fps,seconds,gap", [(12, 8.0, 90), (12, 8.0, 0)])
def test_sampled_frames_are_the_frames_at_their_times(tmp_path, monkeypatch, fps, seconds, gap):
    """Walking short gaps with grab() (gap 90) and seeking to every frame (gap 0) return the same
    frames as a full sequential decode at the sampled indices."""
    import cv2

    p = write_video(tmp_path / "v.mp4", spin_frames("triangle", (30, 90, 220), seconds, fps=fps, size=64), fps=fps)
    monkeypatch.setattr(media, "MAX_GRAB_GAP", gap)
    clip = media.load_video(p)
    cap = cv2.VideoCapture(str(p))
    every = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        every.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    idx = np.rint(clip.times * fps).astype(int)
    assert len(idx) == 8 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(clip.frames, np.stack([every[i] for i in idx]))
