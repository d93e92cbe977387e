"""Collate, missing-modality modes and pretext masking rates (SCALE.md section 3)."""
import numpy as np
import torch

from core.data.dataset import Collator
from core.data.masking import IGNORE, entity_mask, item_mask, mlm_mask

SPECIAL = frozenset({0, 100, 101, 102, 103})


def fake_item(pid, video=True, n_text=20, n_frames=6):
    rng = np.random.default_rng(abs(hash(pid)) % 1000)
    ids = np.concatenate([[101], rng.integers(1000, 30000, n_text - 2), [102]]).astype(np.int32)
    table = np.array([101, 3609, 1024, 3212, 1025, 5907, 1024, 2273, 102], dtype=np.int32)
    it = {"id": pid, "text.ids": ids, "table.ids": table, "table.spans": np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int32),
          "image.tokens": rng.standard_normal((50, 1280)).astype(np.float16), "image.boxes": np.zeros((50, 5), np.float32),
          "audio.patches": rng.standard_normal((30, 640)).astype(np.float16)}
    if video:
        it["video.frames"] = rng.standard_normal((n_frames, 1280)).astype(np.float16)
    return it


def test_present_and_token_masks_mask_mode():
    b = Collator(missing="mask", mask_prob=0.0)([fake_item("a"), fake_item("b", video=False, n_text=10)])
    assert b["video"]["present"].tolist() == [True, False]
    assert b["video"]["mask"][1].sum() == 0 and b["video"]["mask"][0].sum() == 6
    assert b["text"]["mask"].sum(1).tolist() == [20, 10]
    assert (b["video"]["feats"][1] == 0).all()


def test_zero_mode_attends_zeros():
    b = Collator(missing="zero", mask_prob=0.0)([fake_item("a"), fake_item("b", video=False)])
    assert b["video"]["present"].tolist() == [True, False]
    assert b["video"]["mask"][1].all() and (b["video"]["feats"][1] == 0).all()


def test_modality_absent_from_whole_batch():
    b = Collator()([fake_item("a", video=False)])
    assert b["video"]["feats"].shape == (1, 1, 1280) and not b["video"]["present"].any()


def test_mlm_rates():
    rng = np.random.default_rng(0)
    ids = np.concatenate([[101], np.arange(2000, 2400), [102]])
    picked = kept = masked = rand = 0
    for _ in range(200):
        x, y = mlm_mask(ids, rng, 0.15, 103, 30522, SPECIAL)
        sel = y != IGNORE
        assert not sel[0] and not sel[-1]  # [CLS]/[SEP] never masked
        np.testing.assert_array_equal(y[sel], ids[sel])  # targets are the originals
        picked += sel.sum()
        masked += (x[sel] == 103).sum()
        kept += (x[sel] == ids[sel]).sum()
        rand += ((x[sel] != 103) & (x[sel] != ids[sel])).sum()
    assert abs(picked / (200 * 400) - 0.15) < 0.01
    assert abs(masked / picked - 0.8) < 0.02 and abs(kept / picked - 0.1) < 0.02 and abs(rand / picked - 0.1) < 0.02


def test_mem_masks_whole_spans():
    rng = np.random.default_rng(1)
    ids = np.arange(2000, 2100)
    spans = np.array([[i, i + 3, i + 4, i + 7] for i in range(1, 90, 9)])
    total = 0
    for _ in range(300):
        x, y = entity_mask(ids, spans, rng, 0.15, 103)
        for ks, ke, vs, ve in spans:
            k, v = (x[ks:ke] == 103), (x[vs:ve] == 103)
            assert k.all() or not k.any()
            assert v.all() or not v.any()
            assert not (k.all() and v.all())  # the key or the value, not both
            total += k.all() + v.all()
        np.testing.assert_array_equal(y[y != IGNORE], ids[y != IGNORE])
    assert abs(total / (300 * len(spans)) - 0.15) < 0.03


def test_feature_masking_targets_and_rate():
    col = Collator(seed=3, mask_prob=0.15)
    items = [fake_item(str(i)) for i in range(16)]
    b = col(items)
    img = b["image"]
    assert not img["masked"][:, 0].any()  # the global token stays
    rate = img["masked"][:, 1:].float().mean().item()
    assert abs(rate - 0.15) < 0.04
    assert (img["feats"][img["masked"]] == 0).all()
    orig = torch.stack([torch.from_numpy(it["image.tokens"].astype(np.float32)) for it in items])
    torch.testing.assert_close(img["target"], orig)
    assert abs(item_mask(10000, np.random.default_rng(0), 0.15).mean() - 0.15) < 0.01


def test_seeded_collate_is_reproducible():
    items = [fake_item(str(i)) for i in range(4)]
    a, b = Collator(seed=7)(items), Collator(seed=7)(items)
    assert torch.equal(a["text"]["ids"], b["text"]["ids"]) and torch.equal(a["audio"]["masked"], b["audio"]["masked"])


def test_mlm_content_targets_mask_only_those_ids():
    rng = np.random.default_rng(0)
    ids = np.array([101, 2000, 1012, 3000, 1010, 4000, 102] * 20, dtype=np.int64)  # words, "." and ","
    words = frozenset({2000, 3000, 4000})
    picked = []
    for _ in range(50):
        _, y = mlm_mask(ids, rng, 0.3, 103, 30522, SPECIAL, targets=words)
        picked.extend(ids[y != IGNORE].tolist())
    assert picked and set(picked) <= words  # punctuation is never a target
    _, y = mlm_mask(ids, np.random.default_rng(0), 1.0, 103, 30522, SPECIAL)
    assert {1012, 1010} <= set(ids[y != IGNORE].tolist())  # without targets it is


def test_collator_passes_mlm_targets():
    items = [{"id": str(i), "text.ids": np.array([101, 2000, 1012, 3000, 102], dtype=np.int32)} for i in range(40)]
    b = Collator(mask_prob=0.5, seed=0, mlm_targets=frozenset({2000}))(items)
    labels = b["text"]["labels"]
    assert (labels != IGNORE).any() and set(labels[labels != IGNORE].tolist()) == {2000}
