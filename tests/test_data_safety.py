"""Data safety of the feature cache, the checkpoints and the trainer: no shard is overwritten, a product
missing from its shard is an error, failed products are retried, --resume never duplicates steps and
falls back to an intact checkpoint, files are 0644, and bad config.json values are refused by name
before any model is allocated."""
import json
import os
from pathlib import Path

import pytest
import torch

from core.data import featurize
from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.errors import CacheError, CheckpointError, ScaleError
from core.data.features import FeatureCache, build_cache
from core.model.scale import SCALE
from core.data.records import Product, write_manifest
from core.data.synth import draw_shape, write_image
from scale_testkit import one_thread, tiny  # noqa: F401  (one_thread: autouse)

TINY = {"hidden": 64, "heads": 4, "jct_layers": 1, "init_text_from_pretrained": False, "dropout": 0.0,
        "layers": {"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1}}


@pytest.fixture(autouse=True)
def shared_featurizer(monkeypatch, featurizer):
    """Every build reuses the session's backbones instead of loading them again (seconds per build)."""
    monkeypatch.setattr(featurize, "Featurizer", lambda *a, **k: featurizer)


def text_products(n: int, prefix: str = "p") -> list[Product]:
    colors = ["red", "green", "blue"]
    return [Product(id=f"{prefix}{i}", title=f"{colors[i % 3]} mug number {i}", attributes={"color": colors[i % 3]},
                    category=colors[i % 3], split="train") for i in range(n)]


def build(out: Path, products, chunk: int = 2) -> dict:
    return build_cache("m.jsonl", out, device="cpu", chunk=chunk, progress=False, products=products)


# ---------------------------------------------------------------- feature cache
def test_rebuild_after_repair_advice_never_overwrites_a_shard(tmp_path):
    out, products = tmp_path / "cache", text_products(6)
    build(out, products)
    shards = sorted((out / "shards").glob("shard-*.safetensors"))
    assert len(shards) == 3
    index = json.loads((out / "index.json").read_text())
    first = shards[0].name  # the repair advice: delete the shard and its index entries, then build again
    shards[0].unlink()
    index["products"] = {k: v for k, v in index["products"].items() if v["shard"] != first}
    (out / "index.json").write_text(json.dumps(index))
    before = {p.name: p.read_bytes() for p in shards[1:]}
    s = build(out, products)
    assert s["processed_now"] == 2 and s["products"] == 6
    assert {p.name: p.read_bytes() for p in shards[1:]} == before  # the live shards are untouched
    cache = FeatureCache(out)
    assert all(cache[pid]["text.ids"].size for pid in cache.keys())


def test_deleting_only_the_shard_file_rebuilds_its_products(tmp_path):
    out, products = tmp_path / "cache", text_products(4)
    build(out, products)
    (out / "shards" / "shard-00000.safetensors").unlink()
    s = build(out, products)
    assert s["rebuilt_missing_shards"] == 2 and s["processed_now"] == 2
    cache = FeatureCache(out)
    assert all(cache[pid]["table.ids"].size for pid in cache.keys())


def test_reader_refuses_a_product_missing_from_its_shard(tmp_path):
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "cache"
    build(out, text_products(2))
    shard = out / "shards" / "shard-00000.safetensors"
    save_file({k: v for k, v in load_file(str(shard)).items() if not k.startswith("p1/")}, str(shard))
    cache = FeatureCache(out)
    assert cache["p0"]["text.ids"].size
    with pytest.raises(CacheError, match=r"shard-00000\.safetensors: product 'p1' is indexed with modalities TB--- "
                                         r"but the shard holds -----.*Fix"):
        cache["p1"]


def test_failed_products_are_retried_after_the_file_is_fixed(tmp_path):
    out = tmp_path / "cache"
    img = tmp_path / "photo.png"
    img.write_bytes(b"not a png")
    products = text_products(2) + [Product(id="img-only", images=[str(img)]),
                                   Product(id="mug-photo", title="white mug", images=[str(img)])]
    s1 = build(out, products)
    assert set(s1["failures"]) == {"img-only", "mug-photo"} and s1["products"] == 3
    s2 = build(out, products)  # still broken: retried, still failing, nothing else redone
    assert s2["retried"] == 2 and sorted(s2["still_failing"]) == ["img-only", "mug-photo"] and s2["processed_now"] == 2
    write_image(img, draw_shape("circle", (200, 40, 40)))  # the fix
    s3 = build(out, products)
    assert s3["retried"] == 2 and s3["still_failing"] == [] and s3["failures"] == {}
    cache = FeatureCache(out)
    assert cache.products["img-only"]["pattern"] == "--I--" and cache.products["mug-photo"]["pattern"] == "T-I--"
    assert cache["mug-photo"]["image.tokens"].shape[0] == 50


# ---------------------------------------------------------------- checkpoints and config.json
def saved_tiny(tmp_path) -> Path:
    save_checkpoint(SCALE(tiny()), tmp_path / "ck")
    return tmp_path / "ck"


@pytest.mark.parametrize("field, value", [
    ("heads", 0), ("layers", [1, 1, 1, 1, 1]), ("layers", {"text": 1}), ("vocab_size", "30522"),
    ("dropout", 1.5), ("hidden", -64), ("share_text_table", "no"), ("feature_dims", {"image": 0, "video": 1, "audio": 1}),
    ("loss_weights", {"mlm": -1}), ("temperature", 0), ("missing", "drop"),
])
def test_bad_config_values_name_the_field(tmp_path, field, value):
    ck = saved_tiny(tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    meta["model"][field] = value
    (ck / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"config\.json: model config '{field}.*Fix"):
        load_checkpoint(ck)


def test_config_errors_are_scale_errors_naming_the_field():
    from core.model.config import get_config

    with pytest.raises(ScaleError, match=r"'jct_heads' must be an integer >= 0, got int -1"):
        get_config("small", jct_heads=-1)
    with pytest.raises(ScaleError, match=r"'hidden' 64 must be divisible by 'heads' 5"):
        get_config("small", hidden=64, heads=5)


def test_huge_vocab_refused_before_the_model_is_allocated(tmp_path, monkeypatch):
    import core.model.checkpoint as C

    ck = saved_tiny(tmp_path)
    meta = json.loads((ck / "config.json").read_text())
    meta["model"]["vocab_size"] = 2_000_000
    (ck / "config.json").write_text(json.dumps(meta))
    real = C.SCALE

    def meta_only(cfg, *a, **k):  # any model built before the shape check would be a real allocation
        assert torch.empty(0).device.type == "meta", "model allocated before the header check"
        return real(cfg, *a, **k)
    monkeypatch.setattr(C, "SCALE", meta_only)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not match .*config\.json.*"
                                              r"\[2000000, 64\].*check vocab_size"):
        load_checkpoint(ck)


# ---------------------------------------------------------------- trainer: resume and file modes
@pytest.fixture(scope="module")
def train_setup(tmp_path_factory, featurizer):
    root = tmp_path_factory.mktemp("safety-train")
    manifest = write_manifest(text_products(6), root / "m.jsonl")
    (root / "tiny.json").write_text(json.dumps(TINY))
    real = featurize.Featurizer
    featurize.Featurizer = lambda *a, **k: featurizer
    try:
        build_cache(manifest, root / "cache", device="cpu", progress=False)
    finally:
        featurize.Featurizer = real
    return manifest, root / "tiny.json", root / "cache"


def run_train(train_setup, out: Path, **kw):
    from core.train import trainer as T

    manifest, cfg, cache = train_setup
    args = dict(manifest=str(manifest), out=str(out), config=str(cfg), cache=str(cache), batch_size=2,
                split="all", val_split=None, device="cpu", epochs=1, save_every_min=0.0)
    return T.train(T.TrainArgs(**{**args, **kw}))


def steps_of(run: Path) -> list[int]:
    return [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_resume_without_checkpoint_restarts_metrics(train_setup, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed before its first checkpoint leaves: two logged steps, no checkpoints/
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "epoch": 0, "loss": {"total": 1.0}}) + "\n"
                                               for s in (1, 2)) + '{"step": 3, "lo')
    run_train(train_setup, run, resume=True)
    assert steps_of(run) == [1, 2, 3]
    assert "no intact checkpoint" in capsys.readouterr().err


def test_resume_falls_back_to_the_intact_checkpoint(train_setup, tmp_path, capsys):
    from core.train.trainer import latest_checkpoint

    run = tmp_path / "run"
    run_train(train_setup, run)
    assert steps_of(run) == [1, 2, 3]
    latest = run / "checkpoints" / (run / "LATEST").read_text()
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated newest checkpoint
    skipped: list[str] = []
    assert latest_checkpoint(run, skipped).name == "step-0000002" and "step-0000003" in skipped[0]
    capsys.readouterr()
    run_train(train_setup, run, resume=True, epochs=2)
    err = capsys.readouterr().err
    assert "resumed from" in err and "step-0000002" in err and "skipped unreadable checkpoints" in err
    assert steps_of(run) == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(run / "final").cfg.hidden == 64


def test_resume_skips_a_checkpoint_with_truncated_trainer_state(train_setup, tmp_path):
    from core.train.trainer import latest_checkpoint

    run = tmp_path / "run"
    run_train(train_setup, run)
    state = run / "checkpoints" / "step-0000003" / "trainer.safetensors"
    state.write_bytes(state.read_bytes()[:-10])
    assert latest_checkpoint(run).name == "step-0000002"
    (run / "checkpoints" / "step-0000002" / "trainer.json").write_text('{"step": 2')
    assert latest_checkpoint(run) is None


def test_checkpoint_files_are_0644(train_setup, tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "run"
        run_train(train_setup, run)
        save_checkpoint(SCALE(tiny()), tmp_path / "plain")
    finally:
        os.umask(old)
    files = [*run.glob("checkpoints/step-*/*"), *run.glob("final/*"), *(tmp_path / "plain").iterdir()]
    assert {f.name for f in files} >= {"model.safetensors", "config.json", "trainer.safetensors", "trainer.json"}
    assert {f"{f.parent.name}/{f.name}": oct(f.stat().st_mode & 0o777) for f in files} == \
        {f"{f.parent.name}/{f.name}": "0o644" for f in files}
