"""The recipe-sweep scripts: every recipe is a valid training command, the bundle holds the train split only and
survives its split into parts, and the sweep table's means and adoption rule on a hand-made case."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from core.data.synth_cache import write_synth_cache
from core.model.config import get_config
from core.train.trainer import build_parser, parse_sets

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


sweep = _script("recipe_sweep")
table = _script("sweep_table")
pack = _script("sweep_pack")


@pytest.mark.parametrize("recipe", list(sweep.RECIPES))
def test_every_sweep_recipe_is_a_valid_training_command(recipe, tmp_path):
    cmd = sweep.train_command("python", tmp_path, tmp_path / "run", recipe, 1, "cpu")
    assert cmd[1:3] == ["-m", "core.train"]
    args = build_parser().parse_args(cmd[3:])
    cfg = get_config(args.config, **parse_sets(args.sets))
    assert args.seed == 1 and args.device == "cpu" and args.manifest == str(tmp_path / "manifest.jsonl")
    if recipe == "cw20":
        assert cfg.loss_weights["contrastive"] == 20.0 and cfg.loss_weights["mam"] == 0.1
    if recipe == "b64e10":
        assert (args.batch_size, args.epochs, args.lr_scale) == (64, 10, "sqrt")
    if recipe == "ship":
        assert args.epochs == 5 and cfg == get_config("small-whisper")
    ev = sweep.eval_command("python", tmp_path, tmp_path / "run", recipe, "cpu", tmp_path / "e.json")
    assert ev[ev.index("--split") + 1] == "dev" and ev[-1] == f"{recipe}={tmp_path / 'run'}/final"


def test_sweep_runs_every_recipes_first_seed_first():
    assert sweep.jobs(["a", "b"], [0, 1]) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]


def test_the_bundle_holds_the_train_split_only_and_survives_its_parts(tmp_path, monkeypatch):
    write_synth_cache(tmp_path / "src", 40, seed=3)
    src_idx = json.loads((tmp_path / "src" / "cache" / "index.json").read_text())
    val = {k for k, v in src_idx["products"].items() if v["split"] == "val"}
    assert val and len(val) < 40
    n = pack.train_bundle(tmp_path / "src" / "manifest.jsonl", tmp_path / "src" / "cache", tmp_path / "b")
    idx = json.loads((tmp_path / "b" / "cache" / "index.json").read_text())
    assert n == 40 - len(val) and set(idx["products"]) == set(src_idx["products"]) - val
    ids = {json.loads(line)["id"] for line in (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()}
    assert ids == set(idx["products"])
    from safetensors.numpy import load_file
    keys = {k.split("/")[0] for s in (tmp_path / "b" / "cache" / "shards").iterdir() for k in load_file(str(s))}
    assert keys == ids
    assert (tmp_path / "b" / "minilm" / "tokenizer_config.json").is_file()
    from safetensors.torch import load_file as load_pt
    sd = load_pt(str(tmp_path / "b" / "minilm" / "model.safetensors"))
    assert {str(v.dtype) for v in sd.values() if v.is_floating_point()} == {"torch.float16"}

    # parts of 0.2 MB, joined again in order, give back the same files
    small = tmp_path / "small"

    def tiny_bundle(manifest, cache, dest):
        (dest / "cache").mkdir(parents=True)
        (dest / "cache" / "x.bin").write_bytes(bytes(range(256)) * 2000)
        return 1

    monkeypatch.setattr(pack, "train_bundle", tiny_bundle)
    monkeypatch.setattr(sys, "argv", ["sweep_pack", "--manifest", "m", "--cache", str(tmp_path / "src" / "cache"),
                                      "--out", str(small), "--part-mb", "0.0002"])
    assert pack.main() == 0
    parts = sorted(small.glob("part-*/part-*"))
    assert len(parts) > 1
    data = sweep.unpack([str(p) for p in parts], tmp_path / "unpacked")
    assert (data / "cache" / "x.bin").read_bytes() == bytes(range(256)) * 2000
    assert pack.main() == 2  # --out exists: refused, nothing overwritten
    monkeypatch.setattr(pack, "train_bundle", lambda *a: (_ for _ in ()).throw(FileNotFoundError("manifest.jsonl")))
    monkeypatch.setattr(sys, "argv", ["sweep_pack", "--manifest", "m", "--cache", str(tmp_path / "src" / "cache"),
                                      "--out", str(tmp_path / "other")])
    assert pack.main() == 2 and not (tmp_path / "other").exists()  # a clear error, no half-written bundle


def _job(recipe: str, seed: int, fused: float, r1: float, auc_table: float = 0.92, rc: int = 0) -> str:
    """One job's line as scripts/recipe_sweep.py writes it, its eval in core.eval's layout (one seed, "#0")."""
    from core.eval.evaluate import HEADLINE

    values = {r: 50.0 for r in table.ROWS}
    values.update({"fused mAP@10": fused, "image->text R@1": r1, "mismatch AUC table": auc_table,
                   "mismatch AUC image": 0.98, "mismatch AUC video": 0.98, "mismatch AUC audio": 0.93})
    model: dict = {}
    for label, path in HEADLINE:
        if label in values:
            d = model
            for k in path[:-1]:
                d = d.setdefault(k, {})
            d[path[-1]] = values[label]
    models = {f"{recipe} #0": model}
    for sub in ("text", "text+image", "image", "table"):
        models[f"{recipe} #0 [{sub}]"] = {"retrieval": {"fused": {"mAP@10": values[f"[{sub}] mAP@10"]}}}
    return json.dumps({"recipe": recipe, "seed": seed, "rc": rc, "eval": {"models": models}})


def test_sweep_table_means_and_rule_on_a_hand_made_case(tmp_path):
    lines = [_job("ship", 0, 73.0, 28.0), _job("ship", 1, 72.0, 27.0), _job("ship", 2, 74.0, 29.0),
             # higher in 2 of 3 seeds, mean 73.33 > 73, R@1 27.2 within 1 point of 28: passes
             _job("good", 0, 74.0, 27.0), _job("good", 1, 71.0, 27.0), _job("good", 2, 75.0, 27.6),
             # higher mean (73.67) but in 1 of 3 seeds only
             _job("lucky", 0, 72.9, 28.0), _job("lucky", 1, 71.9, 28.0), _job("lucky", 2, 76.2, 28.0),
             # higher everywhere, but R@1 1.5 lower and the table AUC 0.02 lower
             _job("aligns", 0, 74.0, 26.5, 0.90), _job("aligns", 1, 73.0, 25.5, 0.90), _job("aligns", 2, 75.0, 27.5, 0.90),
             _job("good", 3, 99.0, 99.0, rc=1)]  # a failed job counts for nothing
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    res = table.load(tmp_path / "r.jsonl")
    assert sorted(res["good"]) == [0, 1, 2]
    assert table.mean_std([73.0, 72.0, 74.0]) == pytest.approx((73.0, (2 / 3) ** 0.5))  # population std, as --seeds
    assert res["ship"][1]["[text+image] mAP@10"] == 50.0 and res["aligns"][2]["mismatch AUC table"] == 0.90
    assert res["ship"][0]["fused - best pair (cross-fitted)"] == 50.0  # read from fusion_check["cross-fitted"]
    assert table.verdict(res["good"], res["ship"]) == (True, [])
    ok, why = table.verdict(res["lucky"], res["ship"])
    assert not ok and why == ["fused higher in 1 of 3 seeds"]
    ok, why = table.verdict(res["aligns"], res["ship"])
    assert not ok and len(why) == 2 and why[0].startswith("image->text R@1") and why[1].startswith("mismatch AUC table")
    md = table.table(res, "ship")
    assert "| fused mAP@10 | 73.00 ± 0.82 | 73.33 ± 1.70 |" in md
    assert md.splitlines()[-1].startswith("| rule against ship | baseline | passes | fails: fused higher in 1 of 3 seeds |")
