"""Scale-out: sharded feature builds (2 gloo ranks on the CPU, a killed build resumed, decode workers)
and the trainer's data path (DataLoader workers give the in-process batches; lr scaling)."""
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.dataset import Collator, FeatureDataset, StepBatches, epoch_batches, epoch_order, step_loader
from core.errors import ScaleError
from core.data.features import FeatureCache, build_cache, load_index
from scale_testkit import products as random_products, tiny

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(manifest: Path, out: Path, world: int, *extra: str) -> list[subprocess.Popen]:
    """`world` processes of `python -m core.data.features build`, as torchrun would start them (gloo, CPU)."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "core.data.features", "build", "--manifest", str(manifest),
                                       "--out", str(out), "--device", "cpu", *extra], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def tensors_of(root: Path) -> dict[str, dict[str, np.ndarray]]:
    cache = FeatureCache(root)
    return {pid: cache[pid] for pid in cache.keys()}


def assert_same_cache(got: Path, want: Path) -> None:
    a, b = tensors_of(got), tensors_of(want)
    assert sorted(a) == sorted(b)
    for pid in b:
        assert sorted(a[pid]) == sorted(b[pid]), pid
        for k in b[pid]:
            np.testing.assert_array_equal(a[pid][k], b[pid][k], err_msg=f"{pid}/{k}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The rank processes run with OMP_NUM_THREADS=1; the CNN's sums differ in the last float16 bit
    between thread counts, so the in-process builds use one thread too."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory, synth_catalog):
    """A one-process build of the 6 generated products, 2 per shard."""
    out = tmp_path_factory.mktemp("ref") / "cache"
    build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False)
    return out


# ---------------------------------------------------------------- sharded feature builds
def test_two_rank_build_equals_one_process_build(tmp_path, synth_catalog, reference):
    out = tmp_path / "cache"
    procs = start_ranks(synth_catalog, out, 2, "--chunk", "2")
    try:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
    finally:  # a failed or timed-out rank must not outlive the test (its peer would wait at a barrier)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert_same_cache(out, reference)
    assert not list(out.glob("index.rank-*.json"))  # rank 0 merged the parts into index.json
    index = json.loads((out / "index.json").read_text())
    shards = {e["shard"] for e in index["products"].values()}
    assert any("-r0" in s for s in shards) and any("-r1" in s for s in shards)  # both ranks built, names apart
    ref = json.loads((reference / "index.json").read_text())
    fields = lambda idx: {pid: (e["pattern"], e["split"], e["category"]) for pid, e in idx["products"].items()}  # noqa: E731
    assert fields(index) == fields(ref) and index["failures"] == ref["failures"]


def test_killed_sharded_build_resumes_without_loss(tmp_path, synth_catalog, reference, monkeypatch):
    """Rank 0 of a 2-rank build dies after its first chunk (before rank 1 ran): its part keeps what it
    built, a reader sees it, and a one-process build finishes the rest; the cache equals the reference."""
    import torch.distributed as dist

    from core.data.featurize import Featurizer

    real, calls = Featurizer.encode_many, {"n": 0}

    def dies_on_second_chunk(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")  # what a kill leaves: nothing after this point runs
        return real(self, items)
    monkeypatch.setattr(Featurizer, "encode_many", dies_on_second_chunk)
    out = tmp_path / "cache"
    # a one-process group stands in for the two ranks' barriers (rank 1 never arrives: it was killed too)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(KeyboardInterrupt):
            build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False, rank=0, world=2)
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(Featurizer, "encode_many", real)
    assert [p.name for p in out.glob("index.rank-*.json")] == ["index.rank-0.json"]
    assert json.loads((out / "index.json").read_text())["products"] == {}
    done = set(load_index(out)["products"])
    assert done == {"synth-000", "synth-001"}  # chunk 0 of [0,1] [2,3] [4,5]; rank 0's next chunk was [4,5]
    cache = FeatureCache(out)
    assert set(cache.keys()) == done and all(len(cache[pid]) for pid in done)

    s = build_cache(synth_catalog, out, device="cpu", chunk=2, progress=False)  # any world size resumes; here one
    assert s["processed_now"] == 4 and s["products"] == 6
    assert not list(out.glob("index.rank-*.json"))
    assert_same_cache(out, reference)


def test_decode_workers_give_the_same_cache(tmp_path, synth_catalog, reference):
    s = build_cache(synth_catalog, tmp_path / "cache", device="cpu", chunk=2, progress=False, workers=1)
    assert s["processed_now"] == 6
    assert_same_cache(tmp_path / "cache", reference)


def test_bad_worker_count_is_a_clear_error(tmp_path, synth_catalog):
    from core.data.features import main

    assert main(["build", "--manifest", str(synth_catalog), "--out", str(tmp_path / "c"), "--workers", "-2"]) == 2


# ---------------------------------------------------------------- trainer data path
@pytest.fixture()
def step_data():
    cfg = tiny()
    rng = np.random.default_rng(1)
    items = {}
    for i, p in enumerate(random_products(21, cfg, seed=3)):  # text lengths vary, so length grouping matters
        p["text.ids"] = np.r_[101, rng.integers(999, cfg.vocab_size, 3 + i % 7), 102].astype(np.int32)
        items[p["id"]] = p
    ds = FeatureDataset(items)
    lengths = np.array([len(items[i]["text.ids"]) for i in ds.ids])
    return ds, lengths, {"vocab_size": cfg.vocab_size, "dims": dict(cfg.feature_dims)}


def assert_same_batch(a: dict, b: dict) -> None:
    assert a["id"] == b["id"]
    for m in ("text", "table", "image", "video", "audio"):
        assert a[m].keys() == b[m].keys()
        for k in a[m]:
            assert torch.equal(a[m][k], b[m][k]), (m, k)


def test_worker_batches_equal_in_process_batches(step_data):
    ds, lengths, kw = step_data
    data = StepBatches(ds, lengths, batch_size=4, seed=7, rank=1, world=2, **kw)
    keys = data.keys(epoch=0, in_epoch=0, step=0, total=8, epochs=3)
    assert keys[:6] == [(0, k) for k in range(3)] + [(1, k) for k in range(3)]  # 11 products a rank: 3 batches
    inproc = list(step_loader(data, keys, workers=0))
    workers = list(step_loader(data, keys, workers=2, prefetch=2))
    assert len(inproc) == len(workers) == 8
    for a, b in zip(inproc, workers):
        assert_same_batch(a, b)
    # the trainer's batch before this change: epoch order -> length groups -> Collator((seed, epoch, k, rank))
    for (epoch, k), got in zip(keys, inproc):
        idx = epoch_batches(epoch_order(len(ds), 7, epoch, 1, 2), lengths, 4, 7, epoch)[k]
        want = Collator(seed=(7, epoch, k, 1), **kw)([ds[i] for i in idx])
        assert_same_batch(got, want)
    assert any(int(b["text"]["labels"].ne(-100).sum()) for b in inproc)  # masking happened


def test_resumed_loader_sees_the_same_batches(step_data):
    ds, lengths, kw = step_data
    data = StepBatches(ds, lengths, batch_size=4, seed=0, **kw)
    full = data.keys(0, 0, 0, total=12, epochs=3)
    resumed = data.keys(epoch=1, in_epoch=2, step=8, total=12, epochs=3)  # 6 batches an epoch: step 8 = (1, 2)
    assert resumed == full[8:]
    a = list(step_loader(StepBatches(ds, lengths, 4, 0, **kw), resumed, workers=2, prefetch=1))
    b = list(step_loader(data, full, workers=0))[8:]
    for x, y in zip(a, b):
        assert_same_batch(x, y)


def test_lr_scaling():
    from core.train.trainer import scaled_lr

    assert scaled_lr(3e-4, 32, "linear") == pytest.approx(3e-4)
    assert scaled_lr(3e-4, 256, "linear") == pytest.approx(2.4e-3)
    assert scaled_lr(3e-4, 128, "sqrt") == pytest.approx(6e-4)
    assert scaled_lr(3e-4, 8, "sqrt") == pytest.approx(1.5e-4)
    assert scaled_lr(3e-4, 512, "none") == 3e-4
    with pytest.raises(ScaleError, match="--lr-scale 'cubic'"):
        scaled_lr(3e-4, 64, "cubic")


def test_lr_scale_and_workers_reach_the_optimizer(tmp_path, synth_catalog, reference):
    """A 2-step run with batch 2, linear scaling and 2 loader workers: the optimizer got lr x 2/32."""
    from core.train import trainer as T

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"hidden": 32, "heads": 2, "jct_layers": 1, "init_text_from_pretrained": False,
                               "layers": {m: 1 for m in ("text", "table", "image", "video", "audio")}}))
    args = T.TrainArgs(manifest=str(synth_catalog), out=str(tmp_path / "run"), config=str(cfg), cache=str(reference),
                       batch_size=2, split="all", val_split=None, fit_fusion_on=None, device="cpu", epochs=1,
                       max_steps=2, lr=3.2e-3, lr_scale="linear", workers=2)
    T.train(args)
    meta = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/trainer.json")).read_text())
    assert max(g["initial_lr"] for g in meta["param_groups"]) == pytest.approx(2e-4)
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(math.isfinite(r["loss"]["total"]) for r in recs)
