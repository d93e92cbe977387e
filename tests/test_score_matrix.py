"""Score matrix S, harmonized S' and the harmonize modes (SCALE.md section 5)."""
import numpy as np
import torch

from core.model.score_matrix import harmonized, harmony, score_matrix
from core.model.scale import SCALE
from scale_testkit import one_thread, collate, products, tiny  # noqa: F401  (one_thread: autouse)


def numpy_S(pooled, present):
    B, M, _ = pooled.shape
    S = np.full((B, M, M), np.nan)
    Sp = np.full((B, M, M), np.nan)
    for b in range(B):
        idx = np.flatnonzero(present[b])
        f = pooled[b, idx] / np.linalg.norm(pooled[b, idx], axis=1, keepdims=True)
        s = f @ f.T
        soft = np.exp(s) / np.exp(s).sum(1, keepdims=True)
        sp = s * soft
        sp /= np.linalg.norm(sp, axis=1, keepdims=True)
        S[b][np.ix_(idx, idx)] = s
        Sp[b][np.ix_(idx, idx)] = sp
    return S, Sp


def test_S_and_S_prime_match_numpy_with_missing_modalities():
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((4, 5, 6))
    pooled[1, 2] = pooled[1, 0] * 3 + 0.01  # nearly parallel features
    present = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=bool)
    S = score_matrix(torch.tensor(pooled), torch.tensor(present))
    Sp = harmonized(S, torch.tensor(present))
    S_np, Sp_np = numpy_S(pooled, present)
    np.testing.assert_array_equal(np.isnan(S.numpy()), np.isnan(S_np))
    np.testing.assert_allclose(S.numpy(), S_np, atol=1e-10)
    np.testing.assert_allclose(Sp.numpy(), Sp_np, atol=1e-10)
    assert Sp[3, 0, 0] == 1.0  # a lone modality gets weight 1


def test_none_is_exactly_uniform_and_loss_modes_differ():
    pooled = torch.randn(3, 5, 8)
    present = torch.ones(3, 5, dtype=torch.bool)
    present[1, 3] = False
    _, _, W = harmony(pooled, present, "none")
    assert torch.equal(W, torch.ones_like(W))
    _, Sp, W = harmony(pooled, present, "loss")
    assert not torch.allclose(W, torch.ones_like(W))
    assert torch.equal(W[1, 3], torch.zeros(5)) and torch.isnan(Sp[1, 3]).all()

    cfg = tiny()
    batch = collate(products(4, cfg), cfg, mask_prob=0.3, seed=1)
    totals = {}
    for mode in ("none", "loss", "logits"):
        torch.manual_seed(0)
        model = SCALE(tiny(harmonize=mode))
        out = model(batch)
        totals[mode] = out.losses["total"].item()
        assert torch.isfinite(out.losses["total"])
    assert len({round(v, 6) for v in totals.values()}) == 3, totals


def test_detach_harmony_gradient():
    """Only the masked-task losses count; they reach the poolers only through the weights S'_ii."""
    cfg = dict(loss_weights={"mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 1.0, "contrastive": 0.0})
    batch = collate(products(4, tiny()), tiny(), mask_prob=0.3, seed=2)
    grads = {}
    for detach in (True, False):
        torch.manual_seed(0)
        model = SCALE(tiny(detach_harmony=detach, **cfg))
        model(batch).losses["total"].backward()
        g = model.encoders["image"].pooler[0].weight.grad
        grads[detach] = 0.0 if g is None else g.abs().sum().item()
    assert grads[True] == 0.0
    assert grads[False] > 0.0
    # and at the function level
    pooled = torch.randn(2, 5, 4, requires_grad=True)
    assert not harmony(pooled, torch.ones(2, 5, dtype=torch.bool), "loss", detach=True)[2].requires_grad
    W = harmony(pooled, torch.ones(2, 5, dtype=torch.bool), "loss", detach=False)[2]
    W[:, 0, 1].sum().backward()
    assert pooled.grad.abs().sum() > 0


def test_loss_mode_weights_are_positive_mean_one_and_uniform_for_constant_scores():
    import torch

    from core.model.score_matrix import positive_weights

    present = torch.tensor([[True, True, True, False, True]])
    upper = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    pairs = (present[:, :, None] & present[:, None, :])[0]
    Sp = torch.randn(1, 5, 5)
    Sp = (Sp + Sp.transpose(1, 2)) / 2
    W = positive_weights(Sp, present)[0]
    assert (W[pairs] > 0).all() and (W[~pairs] == 0).all()
    assert torch.allclose(W[pairs & upper].mean(), torch.tensor(1.0)) and torch.allclose(W.diagonal()[present[0]].mean(), torch.tensor(1.0))
    assert torch.allclose(W, W.T)
    i, j = max(((a, b) for a in range(5) for b in range(a + 1, 5) if pairs[a, b]), key=lambda ab: Sp[0, ab[0], ab[1]])
    assert W[i, j] == W[pairs & upper].max()  # more agreement, more weight
    const = positive_weights(torch.full((1, 5, 5), 0.3), present)[0]
    assert torch.equal(const[pairs], torch.ones_like(const[pairs]))
