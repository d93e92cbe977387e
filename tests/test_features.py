"""Backbone features and the feature cache, on generated media and on the first shop3k products."""
import json

import numpy as np
import pytest

from core.data.dataset import Collator, FeatureDataset
from core.data.features import FeatureCache, build_cache
from core.data.records import Product, read_manifest


def test_featurize_all_modalities(synth_catalog, featurizer):
    p = read_manifest(synth_catalog)[0]  # synth-000 has all five
    feats, dec = featurizer(p)
    assert not dec.errors
    assert feats["image.tokens"].shape == (50, 1280) and feats["image.boxes"].shape == (50, 5)
    np.testing.assert_allclose(feats["image.tokens"][0], feats["image.tokens"][1:].astype(np.float32).mean(0), rtol=2e-2, atol=2e-2)
    assert feats["video.frames"].shape == (2, 1280)
    assert feats["audio.patches"].shape[1] == 640 and feats["audio.patches"].shape[0] <= 100
    ids = feats["text.ids"]
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) <= 64
    spans = feats["table.spans"]
    assert spans.shape == (4, 4)
    tok = featurizer.tokenizer
    ks, ke, vs, ve = spans[0]
    assert tok.decode(feats["table.ids"][ks:ke]) == "color" and tok.decode(feats["table.ids"][vs:ve]) == "red"


def test_broken_file_loses_only_that_modality(tmp_path, synth_catalog, featurizer):
    good = read_manifest(synth_catalog)[0]
    bad_img = tmp_path / "fake.png"
    bad_img.write_text("not a png")
    bad_vid = tmp_path / "zero.mp4"
    bad_vid.write_bytes(b"")
    p = Product(id="broken", title=good.title, attributes=good.attributes, images=[str(bad_img)],
                video=str(bad_vid), audio=good.audio)
    feats, dec = featurizer(p)
    assert set(dec.errors) == {"image", "video"}
    assert "fake.png" in dec.errors["image"] and "zero.mp4" in dec.errors["video"]
    assert {"text.ids", "table.ids", "audio.patches"} <= set(feats) and "image.tokens" not in feats


def test_cache_build_resume_and_summary(tmp_path, synth_catalog):
    out = tmp_path / "cache"
    products = read_manifest(synth_catalog)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a nope")
    products.append(Product(id="only-bad-image", images=[str(bad)]))
    s1 = build_cache(synth_catalog, out, limit=None, device="cpu", chunk=2, progress=False, products=products[:3])
    assert s1["products"] == 3
    s2 = build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, products=products)
    assert s2["processed_now"] == len(products) - 3  # the first three were skipped
    assert s2["products"] == len(products) - 1
    assert "rejected" in s2["failures"]["only-bad-image"] and "bad.jpg" in json.dumps(s2["failures"])
    assert sum(s2["patterns"].values()) == s2["products"]
    cache = FeatureCache(out)
    assert cache.present("synth-000") == [True] * 5
    assert cache.present("synth-003")[3] is False  # generated without video
    item = FeatureDataset(cache)[0]
    assert item["image.tokens"].dtype == np.float16


def test_cache_survives_a_killed_run(tmp_path, synth_catalog):
    """A chunk in flight is lost, finished shards are kept, and a rerun completes the rest."""
    out = tmp_path / "cache"
    products = read_manifest(synth_catalog)
    build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, products=products[:4])
    (out / "shards" / "shard-00001.safetensors.tmp123").write_bytes(b"half a shard")  # a kill mid-write
    s = build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, products=products)
    assert s["products"] == len(products) and s["processed_now"] == len(products) - 4
    cache = FeatureCache(out)
    assert all(len(cache[pid]) for pid in cache.keys())


def test_a_full_disk_stops_the_build_with_the_fix_and_keeps_what_is_written(tmp_path, synth_catalog, monkeypatch):
    """ENOSPC on the second shard: a CacheError naming the folder, the free space and the fix; no half file;
    the first chunk stays cached and the same command then finishes the rest."""
    import errno

    from core.data import features as F
    from core.errors import CacheError

    out = tmp_path / "cache"
    products = read_manifest(synth_catalog)
    real, calls = F._atomic_write_bytes, {"shards": 0}

    def full_disk(path, data):
        if path.parent.name == "shards":
            calls["shards"] += 1
            if calls["shards"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(F, "_atomic_write_bytes", full_disk)
    with pytest.raises(CacheError, match=r"No space left on device \(.* [GM]B free there\).*2 products.*Fix: free disk"):
        build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, products=products)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.safetensors"]  # no reservation left
    assert len(FeatureCache(out).keys()) == 2
    monkeypatch.setattr(F, "_atomic_write_bytes", real)
    s = build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, products=products)
    assert s["products"] == len(products) and s["processed_now"] == len(products) - 2


def test_atomic_write_leaves_no_half_file(tmp_path, monkeypatch):
    import errno
    import os

    from core.data import features as F

    def fail_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(OSError):
        F._atomic_write_bytes(tmp_path / "index.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_shop3k_first_products(tmp_path, shop3k_manifest):
    products = read_manifest(shop3k_manifest)[:4]
    s = build_cache(shop3k_manifest, tmp_path / "c", device="cpu", progress=False, products=products)
    assert s["products"] == 4
    cache = FeatureCache(tmp_path / "c")
    batch = Collator(seed=0)([FeatureDataset(cache)[i] for i in range(4)])
    assert batch["image"]["feats"].shape[-1] == 1280 and batch["text"]["present"].all()


def test_default_cache_dir_is_the_manifest_folder_beside_the_repo(tmp_path):
    """One convention (README commands, trainer, evaluator, release, app): cache/<manifest folder name>."""
    from core.data.cache import REPO, default_cache_dir

    m = tmp_path / "shopx" / "products.jsonl"
    assert default_cache_dir(m) == REPO / "cache" / "shopx"
    assert (REPO / "core" / "data" / "cache.py").is_file()
