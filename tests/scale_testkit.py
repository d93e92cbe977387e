"""Shared helpers of the model tests: a tiny config and random products batched by the real collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model.config import get_config
from core.data.dataset import Collator
from core.modalities import MODALITIES

LAYERS1 = {m: 1 for m in MODALITIES}


def tiny(**kw):
    base = dict(hidden=64, heads=4, layers=dict(LAYERS1), jct_layers=1, vocab_size=1200, max_positions=64,
                max_items=32, feature_dims={"image": 16, "video": 12, "audio": 8}, dropout=0.0,
                init_text_from_pretrained=False)
    return get_config("small", **{**base, **kw})


def product(rng: np.random.Generator, cfg, pid: str = "p", mods=MODALITIES, n_text: int = 10, n_table: int = 4,
            n_video: int = 5, n_audio: int = 7) -> dict:
    d = {"id": pid}
    if "text" in mods:
        d["text.ids"] = np.r_[101, rng.integers(999, cfg.vocab_size, n_text), 102].astype(np.int32)
    if "table" in mods:  # n_table entities "k k : v ;"
        ids, spans = [101], []
        for e in range(n_table):
            if e:
                ids.append(1010)
            ks = len(ids); ids += list(rng.integers(999, cfg.vocab_size, 2)); ke = len(ids)
            ids.append(1024); vs = len(ids); ids += list(rng.integers(999, cfg.vocab_size, 2))
            spans.append((ks, ke, vs, len(ids)))
        d["table.ids"] = np.asarray(ids + [102], dtype=np.int32)
        d["table.spans"] = np.asarray(spans, dtype=np.int32)
    dims = cfg.feature_dims
    if "image" in mods:
        regions = rng.standard_normal((9, dims["image"])).astype(np.float32)
        d["image.tokens"] = np.vstack([regions.mean(0, keepdims=True), regions]).astype(np.float16)
        d["image.boxes"] = rng.random((10, 5)).astype(np.float32)
    if "video" in mods:
        d["video.frames"] = rng.standard_normal((n_video, dims["video"])).astype(np.float16)
    if "audio" in mods:
        d["audio.patches"] = rng.standard_normal((n_audio, dims["audio"])).astype(np.float16)
    return d


def collate(items, cfg, mask_prob: float = 0.15, seed: int = 0) -> dict:
    return Collator(missing=cfg.missing, mask_prob=mask_prob, seed=seed, vocab_size=cfg.vocab_size,
                    dims=dict(cfg.feature_dims))(items)


def products(n: int, cfg, seed: int = 0, **kw) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [product(rng, cfg, f"p{i}", **kw) for i in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread, above all on a CPU shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
