"""InfoNCE against a direct numpy computation; absent rows never act as positives."""
from itertools import combinations

import numpy as np
import torch

from core.model.contrastive import contrastive_loss, gather_with_grad, info_nce
from scale_testkit import one_thread  # noqa: F401  (autouse)


def numpy_info_nce(a, b, valid, T, weight=None, scale=None):
    B = len(a)
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    v = np.concatenate([valid, valid])
    w = np.ones(2 * B) if weight is None else np.concatenate([weight, weight])
    s = np.ones(2 * B) if scale is None else np.concatenate([scale, scale])
    losses = []
    for r in range(2 * B):
        if not v[r]:
            continue
        cols = [c for c in range(2 * B) if c != r and v[c]]
        logits = np.array([z[r] @ z[c] / T * s[r] for c in cols])
        pos = cols.index((r + B) % (2 * B))
        losses.append(w[r] * (np.log(np.exp(logits).sum()) - logits[pos]))
    return sum(losses) / max(len(losses), 1)


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    valid = np.array([1, 0, 1, 1, 1], dtype=bool)
    w, s = rng.random(5), rng.random(5) + 0.5
    for kw_t, kw_np in [({}, {}), ({"weight": torch.tensor(w)}, {"weight": w}),
                        ({"logit_scale": torch.tensor(s)}, {"scale": s})]:
        got = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(valid), 0.1, **kw_t).item()
        np.testing.assert_allclose(got, numpy_info_nce(a, b, valid, 0.1, **kw_np), rtol=1e-9)
    got = info_nce(torch.tensor(a), torch.tensor(b), None, 0.07).item()
    np.testing.assert_allclose(got, numpy_info_nce(a, b, np.ones(5, bool), 0.07), rtol=1e-9)


def test_absent_rows_are_neither_positives_nor_negatives():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    valid = torch.tensor([True, True, False, True])
    base = info_nce(a, b, valid)
    a2, b2 = a.clone(), b.clone()
    a2[2], b2[2] = torch.randn(6) * 5, a[0]  # change the absent row (and make it a near copy of a valid row)
    assert torch.allclose(info_nce(a2, b2, valid), base)
    assert not torch.allclose(info_nce(a2, b2, None), info_nce(a, b, None))  # zero mode uses every row
    assert info_nce(a, b, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_pairs_average_and_names():
    names = ("text", "table", "image", "video", "audio")
    pooled = {m: torch.randn(3, 4) for m in names}
    present = torch.tensor([[1, 1, 1, 0, 1], [1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    total, per = contrastive_loss(pooled, present, True, 0.07)
    assert len(per) == 10 and "cl_text_image" in per and "cl_video_audio" in per
    expect = [info_nce(pooled[names[i]], pooled[names[j]], present[:, i] & present[:, j], 0.07)
              for i, j in combinations(range(5), 2)]
    assert torch.allclose(total, torch.stack(expect).mean())
    x = torch.randn(2, 3)
    assert gather_with_grad(x) is x


def test_one_way_pair_trains_the_other_side_only():
    torch.manual_seed(0)
    pooled = {m: torch.randn(4, 8, requires_grad=True) for m in ("text", "table", "image")}
    present = torch.ones(4, 3, dtype=torch.bool)
    two_way, _ = contrastive_loss(pooled, present)
    total, per = contrastive_loss(pooled, present, one_way=frozenset({("text", "table")}))
    assert torch.allclose(total, two_way)  # the loss value is unchanged, only its gradient
    per["cl_text_table"].backward(retain_graph=True)
    assert pooled["text"].grad is None and pooled["table"].grad.abs().sum() > 0
    per["cl_text_image"].backward()
    assert pooled["text"].grad.abs().sum() > 0  # a two-way pair still trains text
