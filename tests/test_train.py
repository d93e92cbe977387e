"""Trainer: a tiny run, torchrun DDP with 2 CPU processes, SIGKILL + --resume, SIGTERM, NaN stop."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.model.checkpoint import load_checkpoint
from core.modalities import MODALITIES

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden": 64, "heads": 4, "jct_layers": 1, "init_text_from_pretrained": False, "dropout": 0.0,
        "layers": {"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1}}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, synth_catalog):
    from core.data.features import build_cache

    root = tmp_path_factory.mktemp("train")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    cache = root / "cache"
    build_cache(synth_catalog, cache, device="cpu", progress=False)
    return synth_catalog, cfg, cache


def run_cli(args, env_extra=None, **kw):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "core.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def base_args(tiny_setup, out, *extra):
    manifest, cfg, cache = tiny_setup
    return ["--manifest", str(manifest), "--out", str(out), "--config", str(cfg), "--cache", str(cache),
            "--batch-size", "2", "--split", "all", "--val-split", "val", "--device", "cpu", *extra]


def steps_of(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_tiny_run_writes_metrics_and_loads(tiny_setup, tmp_path):
    r = run_cli(base_args(tiny_setup, tmp_path / "run", "--epochs", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = steps_of(tmp_path / "run")
    assert [x["step"] for x in recs] == list(range(1, 7))  # 6 products / batch 2 x 2 epochs
    assert {"mlm", "mem", "mrp", "mfp", "mam", "contrastive", "total"} <= set(recs[0]["loss"])
    assert len(recs[0]["S_prime"]) == 5 and recs[0]["lr"] > 0
    vals = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert len(vals) == 2 and "total" in vals[0]["val"]
    model = load_checkpoint(tmp_path / "run" / "final", "cpu")
    assert model.cfg.hidden == 64
    assert torch.count_nonzero(model.fusion_center) > 0  # the trainer centres the fused embedding


def test_torchrun_two_cpu_ranks(tiny_setup, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core.train", *base_args(tiny_setup, out, "--epochs", "1")]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2: finished 2 steps" in r.stderr and "rank 1/2: finished 2 steps" in r.stderr
    recs = steps_of(out)
    assert sorted(x["products"] for x in recs) == [2, 4]  # 3 products a rank: batches of 2 and 1, times 2 ranks
    assert load_checkpoint(out / "final", "cpu").cfg.hidden == 64


def _start(args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_steps(run: Path, n: int, proc, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if (run / "metrics.jsonl").is_file() and len(steps_of(run)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-2000:])
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


def test_sigkill_then_resume_matches_uninterrupted(tiny_setup, tmp_path):
    args = ["--epochs", "3", "--save-every-min", "0"]  # checkpoint after every step
    ref = run_cli(base_args(tiny_setup, tmp_path / "ref", *args))
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    p = _start(base_args(tiny_setup, run, *args))
    _wait_steps(run, 4, p)  # mid-epoch 2
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = run_cli(base_args(tiny_setup, run, *args, "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    got, want = steps_of(run), steps_of(tmp_path / "ref")
    assert [x["step"] for x in got] == list(range(1, 10))  # no step lost, none repeated
    for g, w in zip(got, want):
        assert g["loss"]["total"] == pytest.approx(w["loss"]["total"], rel=1e-3, abs=1e-4), g["step"]
    a = load_checkpoint(run / "final", "cpu").state_dict()
    b = load_checkpoint(tmp_path / "ref" / "final", "cpu").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_sigterm_saves_before_exit(tiny_setup, tmp_path):
    run = tmp_path / "term"
    p = _start(base_args(tiny_setup, run, "--epochs", "50", "--save-every-min", "100"))
    _wait_steps(run, 2, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 143
    latest = (run / "LATEST").read_text()
    assert int(latest.split("-")[1]) == len(steps_of(run))


def test_nan_loss_stops_and_keeps_last_good(tiny_setup, tmp_path, monkeypatch):
    from core.train import trainer as T
    from core.model.scale import SCALE

    real = SCALE.forward
    calls = {"n": 0}

    def poisoned(self, batch, *a, **k):
        out = real(self, batch, *a, **k)
        calls["n"] += 1
        if self.training and calls["n"] > 4:
            out.losses["total"] = out.losses["total"] * float("nan")
        return out
    monkeypatch.setattr(SCALE, "forward", poisoned)
    manifest, cfg, cache = tiny_setup
    args = T.TrainArgs(manifest=str(manifest), out=str(tmp_path / "nan"), config=str(cfg), cache=str(cache),
                       batch_size=2, split="all", val_split=None, device="cpu", epochs=5)
    with pytest.raises(T.TrainingStopped, match="loss became nan"):
        T.train(args)
    good = T.latest_checkpoint(tmp_path / "nan")
    assert good is not None and good.name == "step-0000003"  # the epoch-end save after 3 good steps
    assert load_checkpoint(good, "cpu").cfg.hidden == 64


def _enospc(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_skips_a_checkpoint_then_stops_cleanly_at_the_final_model(tiny_setup, tmp_path, monkeypatch, capsys):
    """A step checkpoint that cannot be written warns and training goes on; a final model that cannot be
    written stops with the fix (free space, --resume) and leaves no half folder; --resume then finishes."""
    from core.errors import ScaleError
    from core.train import trainer as T

    manifest, cfg, cache = tiny_setup
    run = tmp_path / "run"
    args = T.TrainArgs(manifest=str(manifest), out=str(run), config=str(cfg), cache=str(cache), batch_size=2,
                       split="all", val_split=None, device="cpu", epochs=2, fit_fusion_on=None)
    real_state, calls = T._save_state, {"n": 0}

    def first_save_fails(*a, **k):
        calls["n"] += 1
        return _enospc() if calls["n"] == 1 else real_state(*a, **k)
    monkeypatch.setattr(T, "_save_state", first_save_fails)
    real_save = T.save_checkpoint
    monkeypatch.setattr(T, "save_checkpoint", lambda m, d, **k: _enospc() if Path(d).name.startswith(".tmp-final")
                        else real_save(m, d, **k))
    with pytest.raises(ScaleError, match=r"could not write .*final: No space left on device .*B free there.*"
                                         r"Fix: free disk space, then rerun the same command with --resume"):
        T.train(args)
    err = capsys.readouterr().err
    assert "the checkpoint of step 3 was not written; training goes on, and --resume would start from step 0" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000006"]  # no .tmp-* folder left
    assert not any(p.name.startswith(".tmp") for p in run.iterdir()) and not (run / "final").exists()
    monkeypatch.setattr(T, "save_checkpoint", real_save)
    T.train(T.TrainArgs(**{**vars(args), "resume": True}))
    assert load_checkpoint(run / "final", "cpu").cfg.hidden == 64
    assert [x["step"] for x in steps_of(run)] == list(range(1, 7))


def test_metrics_log_drops_a_line_it_cannot_write_and_keeps_whole_lines(tmp_path, capsys):
    from core.train.trainer import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"step": 1})
    raw = log.f

    class HalfThenFull:  # a disk that takes part of the line, then is full
        def __init__(self):
            self.calls = 0

        def write(self, data):
            self.calls += 1
            return raw.write(data[:5]) if self.calls == 1 else _enospc()

        def fileno(self):
            return raw.fileno()
    log.f = HalfThenFull()
    log.write({"step": 2, "loss": 1.0})
    log.f = raw
    log.write({"step": 3})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l) for l in lines] == [{"step": 1}, {"step": 3}]
    err = capsys.readouterr().err
    assert "No space left on device" in err and "1 log line dropped" in err


def test_fusion_weights_fitted_at_the_end_and_logged(tiny_setup, tmp_path):
    run = tmp_path / "run"
    r = run_cli(base_args(tiny_setup, run, "--epochs", "1", "--fit-fusion-on", "all"))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    fit = [x["fusion"] for x in lines if "fusion" in x]
    assert len(fit) == 1 and fit[0]["mAP@10_fitted"] >= fit[0]["mAP@10_equal"]
    assert fit[0]["cross_fitted"]["fused - best single"]["vs"] in MODALITIES  # the fit on held-out halves
    assert "cross-fitted (held-out halves) fused - best pair" in r.stderr
    model = load_checkpoint(run / "final", "cpu")
    assert model.fusion_weights.tolist() == pytest.approx(list(fit[0]["fusion_weights"].values()))
    vals = [x["val"] for x in lines if "val" in x]
    assert "collapse" in vals[0] and all(-1 <= v <= 1 for v in vals[0]["collapse"].values())
    steps = [x for x in lines if "loss" in x]
    assert any("w_std" in x for x in steps)  # the spread of the S' loss weights is logged


def test_fusion_weights_are_never_fitted_on_val(tiny_setup, tmp_path):
    r = run_cli(base_args(tiny_setup, tmp_path / "run", "--epochs", "1", "--fit-fusion-on", "val"))
    assert r.returncode == 2 and "dev" in r.stderr


def test_a_bad_manifest_line_is_skipped_and_listed(tiny_setup, tmp_path):
    manifest, cfg, cache = tiny_setup
    bad = tmp_path / "manifest.jsonl"
    bad.write_text(Path(manifest).read_text().rstrip("\n") + '\n{"id": "broken", "images": 5}\n')
    args = ["--manifest", str(bad), "--out", str(tmp_path / "run"), "--config", str(cfg), "--cache", str(cache),
            "--batch-size", "2", "--split", "all", "--val-split", "none", "--fit-fusion-on", "none",
            "--device", "cpu", "--max-steps", "1"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 manifest lines skipped" in r.stderr and "images" in r.stderr


def test_keeps_the_best_dev_epoch_and_stops_on_patience(tiny_setup, tmp_path, monkeypatch):
    from core.train import trainer as T

    scores = iter([0.5, 0.7, 0.6, 0.4, 0.9])  # best at epoch 2; patience 2 stops after epoch 4
    real = T.validate
    seen = []

    def scripted(model, *a, **k):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return dict(real(model, *a, **k), **{"mAP@10": next(scores)})
    monkeypatch.setattr(T, "validate", scripted)
    manifest, cfg, cache = tiny_setup
    run = tmp_path / "run"
    T.train(T.TrainArgs(manifest=str(manifest), out=str(run), config=str(cfg), cache=str(cache), batch_size=2,
                        split="all", val_split="val", fit_fusion_on=None, device="cpu", epochs=5, keep_best=True,
                        patience=2))
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "val" in x] == [1, 2, 3, 4]  # epoch 5 never ran
    assert [x["kept"] for x in lines if "kept" in x] == [{"epoch": 2, "mAP@10": 0.7}]
    best = load_checkpoint(run / "best", "cpu").state_dict()
    final = load_checkpoint(run / "final", "cpu").state_dict()
    weights = [k for k in final if "fusion_center" not in k and final[k].is_floating_point()]
    assert all(torch.equal(best[k], final[k]) and torch.equal(seen[1][k], final[k]) for k in weights)
    assert not all(torch.equal(seen[3][k], final[k]) for k in weights)  # the last epoch's weights were not kept


def test_a_best_epoch_that_cannot_be_written_is_not_kept(tiny_setup, tmp_path, monkeypatch, capsys):
    """--keep-best on a full disk at epoch 2 (the best score): a warning, no half folder; final is the best
    epoch that is on disk (epoch 1), and the log says so."""
    from core.train import trainer as T

    scores = iter([0.5, 0.7, 0.4])
    real_validate, real_save = T.validate, T.save_checkpoint
    monkeypatch.setattr(T, "validate", lambda model, *a, **k: dict(real_validate(model, *a, **k), **{"mAP@10": next(scores)}))
    calls = {"best": 0}

    def full_at_second_best(model, d, **k):
        if Path(d).name.startswith(".tmp-best"):
            calls["best"] += 1
            if calls["best"] == 2:
                _enospc()
        return real_save(model, d, **k)
    monkeypatch.setattr(T, "save_checkpoint", full_at_second_best)
    manifest, cfg, cache = tiny_setup
    run = tmp_path / "run"
    T.train(T.TrainArgs(manifest=str(manifest), out=str(run), config=str(cfg), cache=str(cache), batch_size=2,
                        split="all", val_split="val", fit_fusion_on=None, device="cpu", epochs=3, keep_best=True))
    assert "epoch 2 is not kept as the best" in capsys.readouterr().err
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["kept"] for x in lines if "kept" in x] == [{"epoch": 1, "mAP@10": 0.5}]
    assert not any(p.name.startswith(".tmp") for p in run.iterdir())


def test_the_last_epoch_is_final_by_default(tiny_setup, tmp_path, monkeypatch):
    from core.train import trainer as T

    scores = iter([0.9, 0.1])
    real = T.validate
    monkeypatch.setattr(T, "validate", lambda *a, **k: dict(real(*a, **k), **{"mAP@10": next(scores)}))
    manifest, cfg, cache = tiny_setup
    run = tmp_path / "run"
    T.train(T.TrainArgs(manifest=str(manifest), out=str(run), config=str(cfg), cache=str(cache), batch_size=2,
                        split="all", val_split="val", fit_fusion_on=None, device="cpu", epochs=2))
    assert not (run / "best").exists()
    assert not any('"kept"' in l for l in (run / "metrics.jsonl").read_text().splitlines())


def test_pretrained_lr_mult_flag_sets_the_text_group_rate():
    from core.model.config import get_config
    from core.model.scale import SCALE
    from core.train.trainer import TrainArgs, build_optimizer, build_parser

    kw = vars(build_parser().parse_args(["--manifest", "m.jsonl", "--out", "run", "--pretrained-lr-mult", "0.3"]))
    a = TrainArgs(**{**kw, "sets": tuple(kw["sets"])})
    assert a.pretrained_lr_mult == 0.3
    cfg = get_config("small", hidden=64, heads=4, layers={"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1})
    opt = build_optimizer(SCALE(cfg, pretrained=False), 1e-3, 0.01, a.pretrained_lr_mult, torch.device("cpu"))
    rates = {g["name"]: g["lr"] for g in opt.param_groups}
    assert rates["decay_pretrained"] == pytest.approx(3e-4) and rates["decay"] == pytest.approx(1e-3)


@pytest.mark.parametrize("text_epochs", [1, None])
def test_text_epochs_stops_the_text_encoder_and_only_it(tiny_setup, tmp_path, monkeypatch, text_epochs):
    from core.train import trainer as T

    real, seen = T.validate, []

    def record(model, *a, **k):
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return real(model, *a, **k)
    monkeypatch.setattr(T, "validate", record)
    manifest, cfg, cache = tiny_setup
    T.train(T.TrainArgs(manifest=str(manifest), out=str(tmp_path / "run"), config=str(cfg), cache=str(cache),
                        batch_size=2, split="all", val_split="val", fit_fusion_on=None, device="cpu", epochs=3,
                        text_epochs=text_epochs))
    after1, last = seen[0], seen[-1]
    text = [k for k in last if k.startswith("encoders.text.")]
    image = [k for k in last if k.startswith("encoders.image.")]
    assert text and image
    assert not all(torch.equal(after1[k], last[k]) for k in image)  # the other encoders train on
    assert all(torch.equal(after1[k], last[k]) for k in text) == (text_epochs == 1)


def test_text_epochs_is_checked_and_splits_the_groups():
    from core.train import trainer as T
    from core.model.config import get_config
    from core.model.scale import SCALE

    with pytest.raises(T.ScaleError, match="--text-epochs 4"):
        T.train(T.TrainArgs(manifest="m.jsonl", out="run", epochs=3, text_epochs=4))
    cfg = get_config("small", hidden=64, heads=4, layers={"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1})
    opt = T.build_optimizer(SCALE(cfg, pretrained=False), 1e-3, 0.01, 0.1, torch.device("cpu"), split_text=True)
    names = {g["name"] for g in opt.param_groups}
    assert {"decay_pretrained_text", "decay_pretrained"} <= names  # table keeps its own (pretrained) groups
    f = T.group_schedules(opt, total=10, warmup=0.1, text_total=4)
    for g, fn in zip(opt.param_groups, f):
        assert (fn(4) == 0.0) == g["name"].endswith("_text") and fn(3) > 0


@pytest.mark.parametrize("module", ["release", "refit_fusion"])
def test_release_and_refit_report_a_full_disk_without_a_traceback(module, monkeypatch, tmp_path, capsys):
    import errno
    import importlib

    mod = importlib.import_module(f"core.train.{module}")
    target = tmp_path / "out" / "model.safetensors"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    monkeypatch.setattr(mod, "release" if module == "release" else "refit", full)
    argv = (["--run", "r", "--manifest", "m", "--out", str(tmp_path / "out")] if module == "release"
            else ["--checkpoint", str(tmp_path / "out"), "--manifest", "m"])
    assert mod.main(argv) == 2
    err = capsys.readouterr().err
    assert f"could not write {target}: No space left on device (" in err and "Fix: free disk space" in err
