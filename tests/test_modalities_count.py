"""Issue 'make every modality count': pooling that does not collapse, no MRP leak, S on centred
features, fitted fusion weights, the dev split, mismatch swaps, and `missing` as a forward argument
that never changes the shared model (8 threads x 200 mixed calls)."""
from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.model.inference import forward_items
from core.model.config import ModelConfig
from core.model.score_matrix import score_matrix
from core.eval.metrics import collapse_score
from core.modalities import INDEX, MODALITIES
from core.model.scale import SCALE
from scale_testkit import collate, one_thread, product, products, tiny  # noqa: F401  (one_thread: autouse)


def model_for(cfg, seed=0):
    torch.manual_seed(seed)
    return SCALE(cfg).eval()


def test_table_mean_pooling_varies_where_the_first_token_collapses():
    # At initialization the table's first token is [CLS] + position 0 + segment 1 for every product,
    # and one layer barely moves it; the mean over the entities carries the product.
    items = products(24, tiny(), seed=1)
    first = model_for(tiny(pool={m: "first" for m in MODALITIES}))
    mean = model_for(tiny())
    c_first = collapse_score(forward_items(first, items).pooled["table"].numpy())
    c_mean = collapse_score(forward_items(mean, items).pooled["table"].numpy())
    assert c_first > 0.99 and c_mean < c_first - 0.01


def test_video_first_token_is_the_mean_item_not_a_constant():
    items = products(16, tiny(), seed=2)
    cls = model_for(tiny(first_item="cls"))
    mean = model_for(tiny(first_item="mean"))
    first_cls = torch.stack([cls.encoders["video"](b, b["mask"])[0][:, 0] for b in [collate(items, cls.cfg, 0.0)["video"]]])[0]
    first_mean = torch.stack([mean.encoders["video"](b, b["mask"])[0][:, 0] for b in [collate(items, mean.cfg, 0.0)["video"]]])[0]
    assert collapse_score(first_cls.detach().numpy()) > 0.99  # before any block: CLS + position only
    assert collapse_score(first_mean.detach().numpy()) < 0.95


def _image_batch(cfg, region_value: float, masked_region: int = 3):
    rng = np.random.default_rng(0)
    item = product(rng, cfg, "a")
    regions = item["image.tokens"][1:].astype(np.float32)
    regions[masked_region - 1] = region_value
    item["image.tokens"] = np.vstack([regions.mean(0, keepdims=True), regions]).astype(np.float16)  # as the cache
    batch = collate([item], cfg, mask_prob=0.0)
    img = batch["image"]
    img["masked"][0, masked_region] = True
    img["feats"] = img["target"].masked_fill(img["masked"][..., None], 0.0)
    return batch


@pytest.mark.parametrize("mode,leaks", [("masked", False), ("given", True)])
def test_mrp_global_token_does_not_see_the_masked_region(mode, leaks):
    # The cached global token is the mean of all 49 regions; under "masked" the model rebuilds it from
    # the regions left after masking, so what the masked region held cannot reach the model.
    cfg = tiny(image_global=mode)
    model = model_for(cfg)
    a = model(_image_batch(cfg, 0.0), compute_losses=False).pooled["image"]
    b = model(_image_batch(cfg, 5.0), compute_losses=False).pooled["image"]
    assert torch.allclose(a, b, atol=1e-5) != leaks


def test_score_matrix_on_centred_features():
    f = torch.tensor([[[1.0, 0.1], [1.0, -0.1]]])  # two modalities, nearly the same direction
    present = torch.ones(1, 2, dtype=torch.bool)
    raw = score_matrix(f, present)[0, 0, 1]
    center = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    centred = score_matrix(f, present, center)[0, 0, 1]
    # l2n gives (0.995, ±0.0995); minus the centre (1, 0): (-0.005, ±0.0995), cosine -0.995
    assert raw > 0.97 and centred == pytest.approx(-0.995, abs=1e-3)  # what is left points apart


def test_training_follows_the_centre_and_loss_weights_spread():
    cfg = tiny()
    model = SCALE(cfg).train()
    items = products(16, cfg, seed=3)
    assert float(model.fusion_center.abs().sum()) == 0
    out = model(collate(items, cfg))
    assert float(model.fusion_center.abs().sum()) > 0 and float(model.center_count) == 1
    from core.train.trainer import weight_spread

    assert weight_spread(out.weights, out.present) > 0
    model.eval()
    before = model.fusion_center.clone()
    model(collate(items, cfg))
    assert torch.equal(before, model.fusion_center)  # eval (the served model) never moves it


def test_legacy_checkpoint_config_keeps_its_behaviour():
    old = ModelConfig.from_dict({"hidden": 64, "heads": 4})  # a config.json saved before these fields
    assert old.pool["table"] == "first" and old.first_item == "cls" and old.image_global == "given"
    assert not old.center_harmony
    new = ModelConfig.from_dict({"hidden": 64, "heads": 4}, legacy=False)
    assert new.pool["table"] == "mean" and new.first_item == "mean" and new.center_harmony


def test_fusion_weights_fit_down_weights_a_noise_modality():
    from core.train.fusion import fit_weights, weighted_sum

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 10)
    centers = rng.normal(size=(8, 16))
    pooled = {m: rng.normal(size=(80, 16)).astype(np.float32) * 3 for m in MODALITIES}
    pooled["text"] = (centers[labels] + 0.8 * rng.normal(size=(80, 16))).astype(np.float32)  # informative
    pooled["image"] = (centers[labels] + 0.8 * rng.normal(size=(80, 16))).astype(np.float32)
    present = np.ones((80, 5), dtype=bool)
    ids = [str(i) for i in range(80)]
    w, best, base = fit_weights(pooled, present, None, labels.tolist(), ids)
    assert best > base + 5
    assert w[INDEX["text"]] == 1 and all(w[INDEX[m]] < 0.5 for m in ("table", "video", "audio"))
    assert weighted_sum(pooled, present, None, w).shape == (80, 16)


def test_fusion_fit_leaves_weak_modalities_at_the_smallest_weight():
    from core.train.fusion import GRID, _score, _terms, fit_weights

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 10)
    centers = rng.normal(size=(8, 16))
    pooled = {m: rng.normal(size=(80, 16)).astype(np.float32) * 3 for m in MODALITIES}  # noise
    pooled["text"] = (centers[labels] + 1.2 * rng.normal(size=(80, 16))).astype(np.float32)
    pooled["table"] = (centers[labels] + 3.0 * rng.normal(size=(80, 16))).astype(np.float32)  # weaker, above half
    present = np.ones((80, 5), dtype=bool)
    ids, labs = [str(i) for i in range(80)], labels.tolist()
    single = {m: _score(_terms(pooled, present, None), np.eye(5)[INDEX[m]], labs, ids) for m in MODALITIES}
    assert single["table"] >= 0.5 * single["text"] > single["image"]
    w, _, _ = fit_weights(pooled, present, None, labs, ids)
    assert w[INDEX["table"]] > min(GRID)  # fitted: it retrieves at least half as well as text
    assert all(w[INDEX[m]] == pytest.approx(min(GRID)) for m in ("image", "video", "audio"))  # weak: not fitted
    w_all, _, _ = fit_weights(pooled, present, None, labs, ids, weak_below=0.0)  # every weight fitted
    assert w_all[INDEX["image"]] > min(GRID)  # without the rule, the noise gets a weight fitted to these products


def test_cross_fit_scores_each_half_with_weights_fitted_on_the_other():
    from core.eval.metrics import l2n, retrieval_scores
    from core.train.fusion import cross_fit, fit_weights, weighted_sum

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(6), 6)
    centers = rng.normal(size=(6, 16))
    pooled = {m: rng.normal(size=(36, 16)).astype(np.float32) for m in MODALITIES}  # noise
    pooled["text"] = (centers[labels] + 1.2 * rng.normal(size=(36, 16))).astype(np.float32)
    pooled["image"] = (centers[labels] + 1.5 * rng.normal(size=(36, 16))).astype(np.float32)
    present = np.ones((36, 5), dtype=bool)
    present[:3, INDEX["audio"]] = False
    ids = np.array([str(i) for i in range(36)])

    def score(sel, w):  # mAP@10 of the weighted sum on the products `sel`, as their own gallery
        X = l2n(weighted_sum({m: v[sel] for m, v in pooled.items()}, present[sel], None, w))
        lab, idx = labels[sel].tolist(), ids[sel].tolist()
        return retrieval_scores(X, X, lab, lab, idx, idx, ks=(10,))["mAP@10"]

    half = np.random.default_rng(7).random(36) < 0.5  # the split cross_fit draws with seed 7
    fused, text, fitted_in = [], [], []
    for a in (half, ~half):
        w, best, _ = fit_weights({m: v[a] for m, v in pooled.items()}, present[a], None, labels[a].tolist(),
                                 ids[a].tolist())
        fused.append(score(~a, w))
        text.append(score(~a, np.eye(5)[INDEX["text"]]))
        fitted_in.append(best)
    r = cross_fit(pooled, present, None, labels.tolist(), ids.tolist(), splits=1, seed=7)
    assert r["splits"] == 2
    assert r["fused"] == pytest.approx(np.mean(fused), abs=0.01)
    assert r["singles"]["text"] == pytest.approx(np.mean(text), abs=0.01)
    assert r["fused"] < np.mean(fitted_in)  # the same fit scored on its own products looks better
    assert set(r["singles"]) == set(MODALITIES) and len(r["pairs"]) == 10
    best = max(r["singles"], key=r["singles"].get)
    assert r["fused - best single"] == {"vs": best, "diff": pytest.approx(r["fused"] - r["singles"][best], abs=0.01)}
    assert cross_fit({m: v[:3] for m, v in pooled.items()}, present[:3], None, ["a", "a", "b"], ["0", "1", "2"]) is None


def test_fusion_check_compares_fused_with_its_best_parts():
    from core.eval.evaluate import fusion_check
    from core.eval.metrics import l2n, retrieval_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    centers = rng.normal(size=(6, 8))
    feats = {"text": centers[labels] + 0.9 * rng.normal(size=(30, 8)),
             "image": centers[labels] + 1.5 * rng.normal(size=(30, 8)),
             "table": rng.normal(size=(30, 8))}
    present = np.zeros((30, 5), dtype=bool)
    present[:, [INDEX["text"], INDEX["table"], INDEX["image"]]] = True
    present[0, INDEX["video"]] = True  # one product with video: too few to score, left out
    embed = lambda sub: sum(feats[m] for m in sub)  # noqa: E731
    ids, labs = [str(i) for i in range(30)], labels.tolist()

    def mean_ap(X):
        X = l2n(X)
        return retrieval_scores(X, X, labs, labs, ids, ids, ks=(10,))["mAP@10"]

    fused = feats["text"] + feats["image"]
    r = fusion_check(fused, embed, present, labs, ids, baseline=feats["table"])
    assert set(r["singles"]) == {"text", "table", "image"}
    assert set(r["pairs"]) == {"text+table", "text+image", "table+image"}
    assert r["singles"]["text"] == pytest.approx(mean_ap(feats["text"]), abs=0.01)
    best = max(r["singles"], key=r["singles"].get)
    assert r["fused - best single"]["vs"] == best
    assert r["fused - best single"]["diff"] == pytest.approx(mean_ap(fused) - mean_ap(feats[best]), abs=0.02)
    lo, hi = r["fused - best single"]["lo"], r["fused - best single"]["hi"]
    assert lo <= r["fused - best single"]["diff"] <= hi and r["fused - best single"]["n"] == 30
    # fused is the text+image pair itself: the best pair can be no better, and ties give a zero interval
    pair = r["fused - best pair"]
    assert pair["vs"] == "text+image" and pair["diff"] == pair["lo"] == pair["hi"] == 0
    assert r["fused - frozen"]["diff"] > 0  # the noise "baseline" is far below
    assert "fused - frozen" not in fusion_check(fused, embed, present, labs, ids)


def test_dev_split_is_a_stable_tenth_of_train():
    from core.data.splits import in_split, is_dev, split_of

    ids = [f"prod-{i}" for i in range(5000)]
    dev = [i for i in ids if is_dev(i)]
    assert 0.08 < len(dev) / len(ids) < 0.12
    assert [is_dev(i) for i in ids[:50]] == [is_dev(i) for i in ids[:50]]
    d = dev[0]
    assert split_of(d, "train") == "dev" and split_of(d, "val") == "val"  # val is never carved
    assert not in_split(d, "train", "train") and in_split(d, "train", "dev") and in_split(d, "train", "all")


def test_swap_plan_takes_donors_from_other_categories():
    from core.eval.mismatch import swap_modality, swap_plan

    cfg = tiny()
    items = products(12, cfg, seed=4)
    items[0].pop("image.tokens"), items[0].pop("image.boxes")  # no image: not swapped
    cats = ["a", "b", "c"] * 4
    plan = swap_plan(items, cats, "image", seed=0)
    assert [i for i, _ in plan] == list(range(1, 12))
    assert all(cats[i] != cats[j] and j != 0 for i, j in plan)
    sw = swap_modality(items[1], items[2], "image")
    assert sw["image.tokens"] is items[2]["image.tokens"] and sw["text.ids"] is items[1]["text.ids"]


def test_collapse_score_hand_case():
    assert collapse_score(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    assert collapse_score(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(np.sqrt(0.5))
    assert np.isnan(collapse_score(np.zeros((3, 2))))


def test_missing_is_an_argument_eight_threads_never_see_the_wrong_mode():
    cfg = tiny()
    model = model_for(cfg)
    rng = np.random.default_rng(5)
    item = product(rng, cfg, "a", mods=("text", "image", "audio"))  # a missing modality: the modes differ
    ref = {m: forward_items(model, [item], m).S.clone() for m in ("mask", "zero")}
    assert not torch.allclose(torch.nan_to_num(ref["mask"]), torch.nan_to_num(ref["zero"]))
    wrong, errors = [0], []

    def worker(k: int) -> None:
        try:
            for n in range(200):
                mode = ("mask", "zero")[(k + n) % 2]
                S = forward_items(model, [item], mode).S
                if not torch.allclose(torch.nan_to_num(S), torch.nan_to_num(ref[mode]), atol=1e-5) \
                        or torch.isnan(S).any() != torch.isnan(ref[mode]).any():
                    wrong[0] += 1
        except Exception as e:  # noqa: BLE001 - any failure in a thread fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and wrong[0] == 0
    assert model.cfg.missing == "mask"  # the shared model was never changed


def test_content_words_leave_out_punctuation_and_one_letter_pieces():
    from core.data.masking import content_ids

    vocab = {"[CLS]": 101, "[MASK]": 103, ".": 1012, "-": 1011, "s": 1055, "##s": 2015, "hoodie": 7000,
             "##ie": 2666, "xl": 5000, "a": 1037}
    assert content_ids(vocab) == {7000, 2666, 5000}


def test_masked_word_accuracy_counts_only_content_words():
    from core.eval.mlm_eval import masked_word_accuracy

    cfg = tiny()
    model = model_for(cfg)
    items = products(6, cfg, seed=7, mods=("text",), n_text=30)
    content = set(range(999, 1100))  # tokens 999..1099 count as words here
    r = masked_word_accuracy(model, items, content, prob=0.5, seed=0)
    n_content = sum(int(np.isin(it["text.ids"], list(content)).sum()) for it in items)
    assert 0 < r["masked"] <= n_content
    assert 0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["baseline_top1"] <= 100
    assert masked_word_accuracy(model, items, set(), seed=0)["masked"] == 0


def test_unknown_set_key_and_broken_config_file_are_clear_errors(tmp_path):
    from core.model.config import get_config
    from core.errors import ScaleError

    with pytest.raises(ScaleError, match="harmonise"):
        get_config("small", harmonise="none")
    bad = tmp_path / "c.json"
    bad.write_text("{hidden: 3")
    with pytest.raises(ScaleError, match="c.json"):
        get_config(str(bad))
