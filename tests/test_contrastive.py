"""InfoNCE against a direct numpy computation; absent rows never act as positives; soft targets."""
from itertools import combinations

import numpy as np
import torch

from core.model.contrastive import contrastive_loss, gather_with_grad, info_nce, soft_partners
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


def test_soft_partners_on_a_hand_made_case():
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    valid = torch.tensor([True, True, True, False])
    got = soft_partners(teacher, valid, temperature=0.5)
    e2 = np.exp(2.0)  # cosine 1 / 0.5 against cosine 0 / 0.5
    expect = [[0, e2 / (e2 + 1), 1 / (e2 + 1), 0], [e2 / (e2 + 1), 0, 1 / (e2 + 1), 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6)  # no self, no invalid partner, an invalid row is 0
    assert soft_partners(teacher, torch.tensor([True, False, False, False]), 0.5).sum() == 0  # no partner at all


def test_soft_targets_match_a_direct_cross_entropy():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    valid = np.array([1, 1, 0, 1], dtype=bool)
    soft = np.array([[0, .7, .2, .1], [.5, 0, .5, 0], [.3, .3, 0, .4], [0, 0, 0, 0]])  # row 3: no partner
    share, T, B = 0.4, 0.1, 4
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    v = np.concatenate([valid, valid])
    losses = []
    for r in np.flatnonzero(v):
        p, cols = r % B, [c for c in range(2 * B) if c != r and v[c]]
        logits = np.array([z[r] @ z[c] / T for c in cols])
        logp = logits - np.log(np.exp(logits).sum())
        other = 0 if r >= B else B  # targets lie in the other modality's rows
        row = soft[p] * valid  # the invalid product 2 is no partner; renormalized
        row = row / row.sum() if row.sum() > 0 else row
        s = share if row.sum() > 0 else 0.0
        target = {other + p: 1 - s, **{other + q: s * row[q] for q in range(B) if row[q] > 0}}
        losses.append(-sum(t * logp[cols.index(c)] for c, t in target.items()))
    got = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(valid), T, soft=torch.tensor(soft), soft_share=share)
    np.testing.assert_allclose(got.item(), np.mean(losses), rtol=1e-9)
    one_hot = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(valid), T)
    assert not np.isclose(got.item(), one_hot.item())
    no_partner = info_nce(torch.tensor(a), torch.tensor(b), torch.tensor(valid), T, soft=torch.zeros(4, 4), soft_share=share)
    torch.testing.assert_close(no_partner, one_hot)  # rows without partners stay one-hot


def test_soft_targets_follow_the_teacher_and_keep_gradients_finite():
    torch.manual_seed(0)
    names = ("text", "table", "image")
    pooled = {m: torch.randn(6, 8, requires_grad=True) for m in names}
    present = torch.ones(6, 3, dtype=torch.bool)
    present[1, 2] = present[4, 0] = False  # an absent image, an absent text (no teacher for that product)
    total, per = contrastive_loss(pooled, present, soft_share=0.3)
    plain, _ = contrastive_loss(pooled, present)
    assert not torch.allclose(total, plain)
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in pooled.values())
    soft = soft_partners(pooled["text"], present[:, 0], 0.05)
    torch.testing.assert_close(per["cl_table_image"], info_nce(pooled["table"], pooled["image"], present[:, 1] & present[:, 2],
                                                               0.07, soft=soft, soft_share=0.3))
