"""Evaluation CLI on a manifest it has never seen (generated products), and checkpoint packaging."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app_fixtures import tiny_setup


def test_evaluate_on_unseen_manifest(tmp_path, featurizer):
    from core.eval.evaluate import main

    s = tiny_setup(featurizer)
    out = tmp_path / "eval.json"
    rc = main(["--checkpoint", str(s.checkpoint), "--manifest", str(s.manifest), "--split", "all",
               "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "t.md"),
               "--compare", f"again={s.checkpoint}", "--subset", "text+image",
               "--seeds", f"recipe={s.checkpoint},{s.checkpoint}"])
    assert rc == 0
    res = json.loads(out.read_text())
    mods = ("text", "table", "image", "video", "audio")
    rows = {f"{n} [{m}]" for n in ("frozen", "SCALE", "recipe #0", "recipe #1") for m in (*mods, "text+image")}
    assert set(res["models"]) == {"frozen", "SCALE", "again", "recipe #0", "recipe #1"} | rows
    # each modality alone is scored over the whole split, with its coverage
    assert 0 < res["models"]["SCALE [audio]"]["coverage"] <= 1
    # mismatch AUC and the collapse check for checkpoints
    scale_row = res["models"]["SCALE"]
    assert set(scale_row["mismatch_auc"]) <= {"table", "image", "video", "audio"} and scale_row["mismatch_auc"]
    assert all(0 <= v["auc"] <= 1 and v["n"] >= 2 for v in scale_row["mismatch_auc"].values())
    assert all(-1 <= v <= 1 for v in scale_row["collapse"].values()) and "text" in scale_row["collapse"]
    # two copies of one checkpoint: the seed summary has their mean and zero spread
    summary = res["seeds"]["recipe"]["fused mAP@10"]
    assert summary["mean"] == scale_row["retrieval"]["fused"]["mAP@10"] and summary["std"] == 0
    assert "fused (skip singletons)" in scale_row["retrieval"]
    # the fusion fit scored on products it was not fitted on, per checkpoint and over seeds
    cross = scale_row["fusion_check"]["cross-fitted"]
    assert cross["splits"] == 10 and 0 <= cross["fused"] <= 100 and "text" in cross["singles"]
    assert res["seeds"]["recipe"]["fused - best single (cross-fitted)"]["mean"] == cross["fused - best single"]["diff"]
    scale = res["models"]["SCALE"]
    assert scale["retrieval"]["fused"] == res["models"]["again"]["retrieval"]["fused"]  # same checkpoint, same numbers
    for name, r in res["models"].items():
        f = r["retrieval"]["fused"]
        assert 0 <= f["mAP@10"] <= 100 and 0 <= f["P@1"] <= 100
        if "[" not in name:  # the per-modality and subset rows have retrieval only
            assert 0 <= r["clustering"]["nmi"] <= 100
    assert "text->image" in scale["retrieval"] and "R@1" in scale["instance"]["image->text"]
    assert "checkpoint" not in res["models"]["frozen"] and scale["checkpoint"] == str(s.checkpoint)
    table = (tmp_path / "t.md").read_text()
    assert all(f"| {name} |" in table for name in res["models"]) and "± 0.00" in table


def test_bad_subset_is_a_clear_error(tmp_path, featurizer, capsys):
    from core.eval.evaluate import main

    s = tiny_setup(featurizer)
    assert main(["--checkpoint", str(s.checkpoint), "--manifest", str(s.manifest), "--split", "all",
                 "--cache", str(tmp_path / "cache"), "--subset", "text+smell"]) == 2
    assert "smell" in capsys.readouterr().err


def _released(tmp_path, featurizer):
    """A tiny run packaged by core.train.release: (the setup, the checkpoint folder)."""
    from core.train.release import release

    s = tiny_setup(featurizer)
    run = tmp_path / "run"
    shutil.copytree(s.checkpoint, run / "final")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": {"total": 1.0}}\n')
    return s, release(run, s.manifest, tmp_path / "ckpt", str(tmp_path / "cache"), split="all")


def test_release_packages_a_run(tmp_path, featurizer):
    from core.model.catalog import Catalog
    from core.model.checkpoint import load_checkpoint

    s, out = _released(tmp_path, featurizer)
    model = load_checkpoint(out, "cpu")
    cat = Catalog.load(out / "catalog.npz")
    assert len(cat) == len(s.products) and set(cat.categories) == {p.category for p in s.products}
    assert np.isfinite(cat.fused).all() and (cat.titles == "").all()  # no titles shipped
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbones"]["image"] == "efficientnet-lite0"
    assert model.cfg.hidden == 64


def test_refit_fusion_rewrites_only_the_weights_and_logs_the_fit(tmp_path, featurizer):
    from safetensors.torch import load_file

    from core.model.catalog import Catalog
    from core.model.checkpoint import load_checkpoint, save_checkpoint
    from core.train.refit_fusion import main

    s, out = _released(tmp_path, featurizer)
    model = load_checkpoint(out, "cpu")
    model.fusion_weights.fill_(7.0)  # weights no fit would choose, so the refit must change them
    meta = json.loads((out / "config.json").read_text())
    save_checkpoint(model, out, extra={**meta["extra"], "backbones": meta["backbones"]}, dtype=torch.float16)
    before = load_file(out / "model.safetensors")
    args = ["--checkpoint", str(out), "--manifest", str(s.manifest), "--cache", str(tmp_path / "cache")]
    assert main(args + ["--on", "val"]) == 2  # never tuned on the reported split
    assert main(args + ["--on", "all"]) == 0
    after = load_file(out / "model.safetensors")
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before if k != "fusion_weights")
    assert after["fusion_weights"].dtype == torch.float16 and after["fusion_weights"].max() <= 1.5
    line = json.loads((out / "train_metrics.jsonl").read_text().splitlines()[-1])
    assert line["refit_on"] == "all" and line["fusion"]["fusion_weights"]["text"] == 1.0
    assert list(line["fusion"]["fusion_weights"].values()) == pytest.approx(after["fusion_weights"].float().tolist(), abs=1e-3)
    cat = Catalog.load(out / "catalog.npz")  # rewritten with the new weights
    assert cat.weights.tolist() == pytest.approx(after["fusion_weights"].float().tolist()) and len(cat) == len(s.products)
    assert json.loads((out / "config.json").read_text())["backbones"] == meta["backbones"]


def test_eval_output_paths_fail_fast_and_a_failed_write_keeps_the_report(tmp_path, monkeypatch, capsys):
    import errno

    from core.eval import evaluate as E

    called = []
    monkeypatch.setattr(E, "run", lambda *a, **k: called.append(1) or {"models": {}})
    monkeypatch.setattr(E, "print_report", lambda res: print("REPORT"))
    assert E.main(["--manifest", "m.jsonl", "--json", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err and not called  # refused before any evaluation

    def full(self, *_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    assert E.main(["--manifest", "m.jsonl", "--json", str(tmp_path / "r.json")]) == 2
    out = capsys.readouterr()
    assert "REPORT" in out.out and "No space left on device" in out.err and "The report above is complete" in out.err
