"""A tiny, randomly initialized SCALE checkpoint with a catalog of generated products, for the app tests.

It is built for real (core.data.synth media -> Featurizer -> a few optimizer steps -> save_checkpoint ->
embed_products), so the tests pass on a fresh clone without the shipped checkpoint. Nothing here is
a hard-coded result: the training log and metrics.json are what the tiny run produced.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TINY = dict(hidden=64, heads=4, layers={"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1}, jct_layers=1,
            init_text_from_pretrained=False, dropout=0.0)


@dataclass
class TinySetup:
    checkpoint: Path
    catalog: Path
    manifest: Path
    products: list
    features: dict  # id -> features dict


def build_tiny(root: Path, featurizer, n: int = 9, steps: int = 3) -> TinySetup:
    from core.model.catalog import embed_products
    from core.model.checkpoint import save_checkpoint
    from core.model.config import get_config
    from core.data.dataset import Collator
    from core.eval.metrics import retrieval_scores
    from core.model.scale import SCALE
    from core.data.records import read_manifest
    from core.data.synth import make_catalog
    from core.train.trainer import step_record

    root = Path(root)
    manifest = make_catalog(root / "synth", n=n, video_seconds=2.0, audio_seconds=2.0)
    products = read_manifest(manifest)
    decoded = [featurizer.decode(p) for p in products]
    feats = featurizer.encode_many(decoded)
    for p, f in zip(products, feats):
        f["id"] = p.id
    torch.manual_seed(0)
    cfg = get_config("small", **TINY)
    model = SCALE(cfg, pretrained=False)
    opt = model.configure_optimizers(lr=1e-3, weight_decay=0.01)
    collate = Collator(missing=cfg.missing, mask_prob=0.3, seed=0, dims=dict(cfg.feature_dims))
    ckpt = root / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    lines = []
    model.train()
    for step in range(steps):
        out = model(collate(feats))
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        lines.append(json.dumps(step_record(out, step, 0, 1e-3, len(feats))))
    model.eval()
    save_checkpoint(model, ckpt)
    (ckpt / "train_metrics.jsonl").write_text("\n".join(lines) + "\n")
    items = [dict(f, category=p.category, source=p.source, split=p.split) for p, f in zip(products, feats)]
    cat = embed_products(model, items)
    cat.save(ckpt / "catalog.npz")
    res = retrieval_scores(cat.fused, cat.fused, cat.categories, cat.categories, cat.ids, cat.ids)
    (ckpt / "metrics.json").write_text(json.dumps({"retrieval_fused": {k: float(v) for k, v in res.items()
                                                                       if isinstance(v, (int, float, np.floating))}}))
    (ckpt / "card.md").write_text(f"# tiny test checkpoint\n\nRandom init, {steps} steps on {n} generated products.\n")
    return TinySetup(ckpt, ckpt / "catalog.npz", manifest, products, {p.id: f for p, f in zip(products, feats)})


_BUILT: dict[str, TinySetup] = {}


def tiny_setup(featurizer) -> TinySetup:
    """Built once per test process (several test modules share it), in a temporary folder."""
    import atexit
    import shutil
    import tempfile

    if "tiny" not in _BUILT:
        root = Path(tempfile.mkdtemp(prefix="scale-tiny-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)  # 38 MB a test run: not left in /tmp
        _BUILT["tiny"] = build_tiny(root, featurizer)
    return _BUILT["tiny"]


def load_tiny_model(setup: TinySetup):
    from core.model.checkpoint import load_checkpoint

    return load_checkpoint(setup.checkpoint, "cpu").eval()


# ---------------------------------------------------------------- AppTest helpers shared by the app tests
def new_app() -> "AppTest":
    """The app's home page, run once (a fresh session)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    return at


def goto(at, page: str):
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@contextlib.contextmanager
def app_environment(setup: "TinySetup"):
    """The app's env for a tiny setup (checkpoint, catalog, manifest, and the root they lie under: the app
    reads nothing outside its roots), restored afterwards."""
    env = {"SCALE_CHECKPOINT": str(setup.checkpoint), "SCALE_CATALOG": str(setup.catalog),
           "SCALE_MANIFEST": str(setup.manifest), "SCALE_ROOTS": str(setup.checkpoint.parent)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield setup
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
