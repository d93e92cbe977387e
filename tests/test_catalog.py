"""core.model.catalog: embed_products, the .npz round trip, embedding kinds, manifest join."""
from __future__ import annotations

import numpy as np
import pytest

from core.model.catalog import Catalog, embed_products

from core.model.inference import forward_items
from core.errors import ScaleError
from core.eval.metrics import l2n
from core.modalities import MODALITIES


def test_embed_matches_single_forward_and_batching(setup, model):
    items = [dict(f, category=p.category) for p, f in zip(setup.products, setup.features.values())]
    cat = embed_products(model, items, batch_size=4)
    assert len(cat) == len(items) and cat.fused.shape == (len(items), model.cfg.hidden)
    assert list(cat.categories) == [p.category for p in setup.products]
    one = forward_items(model, [items[2]])
    np.testing.assert_allclose(cat.fused[2], one.fused[0].numpy(), atol=1e-4)
    # absent modalities: not present, zero vectors
    for i, it in enumerate(items):
        for j, m in enumerate(MODALITIES):
            has = any(k.startswith(m + ".") for k in it)
            assert cat.present[i, j] == has
            if not has:
                assert not cat.cls[m][i].any() and not cat.pooled[m][i].any()


def test_save_load_roundtrip_and_kinds(setup, model, tmp_path):
    cat = Catalog.load(setup.catalog)
    path = cat.save(tmp_path / "c.npz")
    again = Catalog.load(path)
    assert (again.ids == cat.ids).all() and (again.present == cat.present).all()
    np.testing.assert_allclose(again.fused, cat.fused, atol=1e-3)
    np.testing.assert_allclose(again.center, cat.center) if cat.center is not None else None
    cat.center, cat.weights = None, None  # plain sum
    s = cat.embedding("sum:text+image")
    np.testing.assert_allclose(s, l2n(cat.pooled["text"]) + l2n(cat.pooled["image"]), atol=1e-6)
    cat.center = np.random.default_rng(0).standard_normal((5, cat.hidden)).astype(np.float32)
    P = cat.present
    want = (l2n(cat.pooled["text"]) - cat.center[0]) * P[:, :1] + (l2n(cat.pooled["image"]) - cat.center[2]) * P[:, 2:3]
    np.testing.assert_allclose(cat.embedding("sum:text+image"), want, atol=1e-5)  # centred, absent rows add nothing
    cat.weights = np.array([1.0, 1.0, 0.5, 1.0, 1.0], np.float32)  # fitted fusion weights scale each modality
    want = (l2n(cat.pooled["text"]) - cat.center[0]) * P[:, :1] + 0.5 * (l2n(cat.pooled["image"]) - cat.center[2]) * P[:, 2:3]
    np.testing.assert_allclose(cat.embedding("sum:text+image"), want, atol=1e-5)
    cat.save(tmp_path / "w.npz")
    np.testing.assert_allclose(Catalog.load(tmp_path / "w.npz").weights, cat.weights)
    assert np.allclose(Catalog.load(cat.save(tmp_path / "centred.npz")).center, cat.center)
    video = cat.embedding("video")
    assert np.allclose(np.linalg.norm(video[cat.present[:, 3]], axis=1), 1, atol=1e-3)
    assert not video[~cat.present[:, 3]].any()
    with pytest.raises(ScaleError, match="unknown"):
        cat.embedding("smell")
    with np.load(path, allow_pickle=False) as z:  # strings stored as unicode, no pickles
        assert z["ids"].dtype.kind == "U" and z["fused"].dtype == np.float16


def test_attach_manifest_and_bad_file(setup, tmp_path):
    cat = Catalog.load(setup.catalog)
    cat.titles[:] = ""
    assert cat.attach_manifest(setup.products) == len(cat)
    assert cat.titles[0] == setup.products[0].title and cat.thumbnails[0].endswith(".png")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ScaleError, match="bad.npz"):
        Catalog.load(bad)
    with pytest.raises(ScaleError, match="not found"):
        Catalog.load(tmp_path / "missing.npz")
