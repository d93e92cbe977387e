"""Device check of `--text-epochs`: the trainer's optimizer (fused AdamW on CUDA) and per-group schedules
leave the text encoder exactly as it was once its schedule ends, while the other encoders keep training.

    python scripts/text_epochs_check.py [--device cuda|cpu] [--steps 12] [--text-steps 5]

Random `small`-shaped batches (core.bench.shop_batch), no data or backbone packages needed; bf16 autocast
on CUDA as the trainer. Prints one JSON object and exits 1 if the check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.bench import shop_batch  # noqa: E402
from core.data.dataset import batch_to  # noqa: E402
from core.model.config import get_config  # noqa: E402
from core.model.scale import SCALE  # noqa: E402
from core.train.trainer import build_optimizer, group_schedules  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--text-steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    cfg = get_config("small", init_text_from_pretrained=False)
    model = SCALE(cfg).to(dev).train()
    opt = build_optimizer(model, 3e-4, 0.01, 0.1, dev, split_text=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, group_schedules(opt, a.steps, 0.1, a.text_steps))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    snap = {}
    for step in range(a.steps):
        if step == a.text_steps:
            snap = {k: p.detach().clone() for k, p in model.named_parameters()}
        with amp:
            out = model(batch_to(shop_batch(a.batch, cfg, seed=step), dev))
        out.losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    params = dict(model.named_parameters())
    text = [k for k in params if k.startswith("encoders.text.")]
    others = [k for k in params if k.startswith(("encoders.image.", "jct."))]
    res = {"device": str(dev), "name": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
           "fused_adamw": bool(opt.defaults.get("fused")), "groups": [g["name"] for g in opt.param_groups],
           "text_unchanged": all(torch.equal(snap[k], params[k]) for k in text),
           "others_changed": any(not torch.equal(snap[k], params[k]) for k in others),
           "text_lr_after": [g["lr"] for g in opt.param_groups if g["name"].endswith("_text")]}
    res["ok"] = res["text_unchanged"] and res["others_changed"] and all(lr == 0 for lr in res["text_lr_after"])
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
