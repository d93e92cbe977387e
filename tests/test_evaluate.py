"""Evaluation CLI on a manifest it has never seen (generated products), and checkpoint packaging."""
import json
import shutil

import numpy as np

from app_fixtures import tiny_setup


def test_evaluate_on_unseen_manifest(tmp_path, featurizer):
    from core.evaluate import main

    s = tiny_setup(featurizer)
    out = tmp_path / "eval.json"
    rc = main(["--checkpoint", str(s.checkpoint), "--manifest", str(s.manifest), "--split", "all",
               "--cache", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "t.md"),
               "--compare", f"again={s.checkpoint}", "--subset", "text+image"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"frozen", "frozen [text+image]", "SCALE", "SCALE [text+image]", "again"}
    scale = res["models"]["SCALE"]
    assert scale["retrieval"]["fused"] == res["models"]["again"]["retrieval"]["fused"]  # same checkpoint, same numbers
    for r in res["models"].values():
        f = r["retrieval"]["fused"]
        assert 0 <= f["mAP@10"] <= 100 and 0 <= f["P@1"] <= 100
        assert 0 <= r["clustering"]["nmi"] <= 100
    assert "text->image" in scale["retrieval"] and "R@1" in scale["instance"]["image->text"]
    assert "checkpoint" not in res["models"]["frozen"] and scale["checkpoint"] == str(s.checkpoint)
    assert (tmp_path / "t.md").read_text().count("\n") == len(res["models"]) + 2


def test_bad_subset_is_a_clear_error(tmp_path, featurizer, capsys):
    from core.evaluate import main

    s = tiny_setup(featurizer)
    assert main(["--checkpoint", str(s.checkpoint), "--manifest", str(s.manifest), "--split", "all",
                 "--cache", str(tmp_path / "cache"), "--subset", "text+smell"]) == 2
    assert "smell" in capsys.readouterr().err


def test_release_packages_a_run(tmp_path, featurizer):
    from core.catalog import Catalog
    from core.checkpoint import load_checkpoint
    from core.release import release

    s = tiny_setup(featurizer)
    run = tmp_path / "run"
    shutil.copytree(s.checkpoint, run / "final")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": {"total": 1.0}}\n')
    out = release(run, s.manifest, tmp_path / "ckpt", str(tmp_path / "cache"), split="all")
    model = load_checkpoint(out, "cpu")
    cat = Catalog.load(out / "catalog.npz")
    assert len(cat) == len(s.products) and set(cat.categories) == {p.category for p in s.products}
    assert np.isfinite(cat.fused).all() and (cat.titles == "").all()  # no titles shipped
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbones"]["image"] == "efficientnet-lite0"
    assert model.cfg.hidden == 64
