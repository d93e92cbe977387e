"""Train SCALE on a manifest (SCALE.md section 7), on one process or under `torchrun` (DDP).

    python -m core.train --manifest M --out RUN_DIR [--config small|base|FILE.json] [--epochs N]
        [--batch-size B] [--lr-scale linear|sqrt|none] [--workers N] [--set key=value ...] [--resume]
    torchrun --nproc_per_node 2 -m core.train ...   (gloo on CPU, NCCL on GPU)

RUN_DIR gets metrics.jsonl (one line a step, plus one `val` line an epoch), checkpoints/step-N/
(model + trainer state, written to a temp folder and renamed), LATEST (name of the newest one) and
final/ (the trained model). `--resume` restores model, optimizer, scheduler, RNG and the position in
the epoch: the data order and the masking of each step are functions of (seed, epoch, step), so a
resumed run sees exactly the batches the killed one would have seen.

Data path: the feature cache is read into memory once (the length scan loads every shard; DataLoader
workers fork after it and share those pages). Batches are collated from the length-grouped batch
lists in the training process (`--workers 0`, the CPU default: on a few shared cores a worker only
takes cores from the model) or by DataLoader workers (the CUDA default) into pinned memory, copied
with non_blocking; bf16 autocast and fused AdamW on CUDA.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data.backbones import BackboneConfig, resolve_device, set_offline
from ..model.inference import fusion_center
from ..model.checkpoint import load_checkpoint, save_checkpoint, save_safetensors, set_file_mode
from ..model.config import get_config
from ..data.dataset import Collator, FeatureDataset, StepBatches, batch_to, step_loader
from ..data.dataset import epoch_batches, epoch_order  # noqa: F401 - moved to core.data.dataset; importable from here as before
from ..errors import CheckpointError, ScaleError, write_problem
from ..data.cache import ensure_cache
from ..data.features import FeatureCache
from ..modalities import MODALITIES
from ..model.scale import SCALE
from ..data.records import scan_manifest
from ..data.speech import check_cache_audio
from ..data.splits import in_split


class TrainingStopped(Exception):
    """A non-finite loss: the run stops and the last good checkpoint stays."""


CENTER_PRODUCTS = 1024  # training products whose mean features centre the fused embedding (SCALE.fusion_center)


@dataclass
class TrainArgs:
    manifest: str
    out: str
    config: str = "small"
    epochs: int = 3
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    pretrained_lr_mult: float = 0.1
    clip: float = 1.0
    seed: int = 0
    cache: str | None = None
    device: str = "auto"
    resume: bool = False
    save_every_min: float = 10.0
    max_steps: int | None = None
    split: str = "train"
    val_split: str | None = "dev"
    modalities: str = ",".join(MODALITIES)
    complete_only: bool = False
    fit_fusion_on: str | None = "dev"
    mask_prob: float = 0.15
    sets: tuple = ()
    lr_scale: str = "none"
    workers: int = -1  # DataLoader workers; -1: 0 on the CPU, up to 4 on CUDA
    keep_best: bool = False  # final = the epoch with the best val_split mAP@10 (early stopping on dev)
    patience: int = 0  # stop after this many epochs without a better val_split mAP@10 (0: never)
    text_epochs: int | None = None  # the text encoder trains (own warmup + cosine) for this many epochs only


def parse_sets(sets) -> dict:
    """`key=value` overrides of the model config; values are JSON when they parse as JSON."""
    out = {}
    for s in sets or ():
        if "=" not in s:
            raise ScaleError(f"--set {s!r}: expected key=value, for example --set harmonize=none")
        k, v = s.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def select_ids(cache: FeatureCache, products: list, split: str | None, complete_only: bool = False) -> list[str]:
    """Cached products of `split` (core.data.splits: `train` excludes the `dev` bucket)."""
    ids = [p.id for p in products if p.id in cache and in_split(p.id, p.split, split)]
    if complete_only:
        ids = [i for i in ids if all(cache.present(i))]
    return ids


def lr_lambda(total: int, warmup: float):
    w = max(1, int(total * warmup))

    def f(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))
    return f


LR_SCALES = ("none", "linear", "sqrt")
LR_REFERENCE_BATCH = 32  # the batch the default --lr was tuned for


def scaled_lr(lr: float, global_batch: int, mode: str) -> float:
    """--lr for a global batch (batch size x ranks) other than 32: linear (x B/32), sqrt (x sqrt(B/32)) or none."""
    if mode not in LR_SCALES:
        raise ScaleError(f"--lr-scale {mode!r}: use one of {', '.join(LR_SCALES)}.")
    if global_batch < 1:
        raise ScaleError(f"--batch-size {global_batch}: must be 1 or more.")
    ratio = global_batch / LR_REFERENCE_BATCH
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[mode]


def loader_workers(requested: int, device: torch.device) -> int:
    """-1 (auto): none on the CPU (workers would take cores from the model); on CUDA up to 4, leaving each
    of the node's ranks one core of its share for the training loop."""
    if requested >= 0:
        return requested
    share = (os.cpu_count() or 2) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return min(4, max(1, share - 1)) if device.type == "cuda" else 0


def build_optimizer(model: SCALE, lr: float, weight_decay: float, pretrained_lr_mult: float,
                    device: torch.device, split_text: bool = False) -> torch.optim.Optimizer:
    """The model's AdamW groups; on CUDA the fused kernel (one launch for all parameters)."""
    if device.type != "cuda":
        return model.configure_optimizers(lr, weight_decay, pretrained_lr_mult, split_text=split_text)
    return torch.optim.AdamW(model.param_groups(lr, weight_decay, pretrained_lr_mult, split_text), lr=lr, fused=True)


def group_schedules(optimizer, total: int, warmup: float, text_total: int | None) -> list:
    """One LambdaLR function per parameter group: the run's warmup + cosine over `total` steps, except
    the text encoder's groups ("..._text") when `text_total` is set: their own warmup + cosine over the
    first `text_total` steps, then lr 0, so the text stays as it was after those steps while the other
    encoders keep aligning to it."""
    run = lr_lambda(total, warmup)
    if text_total is None:
        return [run for _ in optimizer.param_groups]
    text = lr_lambda(text_total, warmup)
    return [text if g.get("name", "").endswith("_text") else run for g in optimizer.param_groups]


# ---------------------------------------------------------------- trainer state on disk (no pickle)
def _save_state(path: Path, optimizer, scheduler, meta: dict) -> None:
    sd = optimizer.state_dict()
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                state_meta[str(pid)][k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_safetensors(tensors, path / "trainer.safetensors")
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in sd["param_groups"]]
    meta = dict(meta, param_groups=groups, state_meta=state_meta, scheduler=scheduler.state_dict())
    (path / "trainer.json").write_text(json.dumps(meta))


def _load_state(path: Path, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "trainer.safetensors"))
    meta = json.loads((path / "trainer.json").read_text())
    state = {}
    for pid, extra in meta["state_meta"].items():
        st = dict(extra)
        for k in ("step", "exp_avg", "exp_avg_sq"):
            if f"opt.{pid}.{k}" in tensors:
                st[k] = tensors[f"opt.{pid}.{k}"]
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched = meta["scheduler"]
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta


def _seal(folder: Path) -> None:
    """Mode 0644 (less the umask) and flushed to disk, before the rename makes the folder LATEST: a crash must
    not leave LATEST naming truncated files, and safetensors writes its files 0600."""
    for f in folder.iterdir():
        if f.is_file():
            set_file_mode(f)
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_checkpoint(run: Path, model, optimizer, scheduler, meta: dict, keep: int = 2) -> Path:
    """Model + trainer state into checkpoints/step-N, via a temp folder renamed into place, then LATEST.
    The `keep` newest are kept, so an intact one stays beside the newest. Files are mode 0644 (less the umask)."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{meta['step']:07d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_checkpoint(model, tmp, extra={"train": meta})
        _save_state(tmp, optimizer, scheduler, meta)
        _seal(tmp)
    except BaseException:  # a full disk: no half folder left to take the space the next save needs
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = run / ".LATEST.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, run / "LATEST")
    for old in sorted(p for p in root.glob("step-*") if p.name != name)[:-keep + 1 or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a trainer checkpoint cannot be resumed from (None when it can): every file is opened, the
    safetensors headers and sizes are checked and trainer.json is parsed. No tensor is loaded."""
    from safetensors import safe_open

    from ..model.checkpoint import read_checkpoint_config

    try:
        read_checkpoint_config(ckpt)
        for name in ("model.safetensors", "trainer.safetensors"):
            path = ckpt / name
            if not path.is_file():
                return f"{path} is missing"
            with safe_open(str(path), framework="pt", device="cpu") as f:  # checks the header against the size
                f.keys()
        meta = json.loads((ckpt / "trainer.json").read_text())
        missing = [k for k in ("step", "epoch", "in_epoch", "param_groups", "state_meta", "scheduler") if k not in meta]
        if missing:
            return f"{ckpt / 'trainer.json'} lacks {missing}"
    except ScaleError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - safetensors / json / OS errors all mean "unreadable"
        return f"{ckpt}: unreadable ({type(e).__name__}: {e})"
    return None


def latest_checkpoint(run: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest intact checkpoint of a run: the one LATEST names, else the newest step-N folder that opens.
    Each one passed over is appended to `skipped` with the reason."""
    root = run / "checkpoints"
    named = (run / "LATEST").read_text().strip() if (run / "LATEST").is_file() else ""
    candidates = sorted(root.glob("step-*"), key=lambda p: p.name, reverse=True) if root.is_dir() else []
    if named and (root / named) in candidates:  # LATEST first, then newest to oldest
        candidates.remove(root / named)
        candidates.insert(0, root / named)
    for ckpt in candidates:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if skipped is not None:
            skipped.append(f"{ckpt.name}: {problem}")
    return None


# ---------------------------------------------------------------- metrics
class MetricsLog:
    """metrics.jsonl, one JSON line per record, written unbuffered. A write that fails (a full disk) drops
    that line, cut back so the file stays whole lines, and warns once; the run goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.f = open(path, "ab", buffering=0)
        self.dropped = 0

    def write(self, rec: dict) -> None:
        data = memoryview((json.dumps(rec) + "\n").encode())
        end = os.fstat(self.f.fileno()).st_size
        try:
            while data:
                data = data[self.f.write(data):]
        except OSError as e:
            try:
                os.ftruncate(self.f.fileno(), end)
            except OSError:
                pass
            self.dropped += 1
            if self.dropped == 1:
                print(f"\nwarning: {write_problem(self.path, e)}; training goes on, and its log lines are dropped "
                      "until the disk has room. Fix: free disk space.", file=sys.stderr)

    def close(self) -> None:
        self.f.close()
        if self.dropped:
            n = self.dropped
            print(f"warning: {self.path}: {n} log line{'s' if n > 1 else ''} dropped (the disk was full).", file=sys.stderr)


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    os.replace(tmp, path)


def _scalar(x) -> float:
    return float(x.detach().float().cpu()) if torch.is_tensor(x) else float(x)


def weight_spread(W: torch.Tensor, present: torch.Tensor) -> float:
    """Mean over samples of the std of the pair loss weights (i < j, both present): how much S' moves
    the contrastive terms apart (0 = harmonization weights nothing)."""
    M = W.shape[-1]
    upper = torch.triu(torch.ones(M, M, dtype=torch.bool, device=W.device), diagonal=1)
    sel = present[:, :, None] & present[:, None, :] & upper
    stds = [W[b][sel[b]].float().std() for b in range(W.shape[0]) if int(sel[b].sum()) >= 2]
    return float(torch.stack(stds).mean()) if stds else float("nan")


def step_record(out, step: int, epoch: int, lr: float, products: int) -> dict:
    sp = out.S_prime.detach().float()
    mean_sp = torch.nanmean(sp, dim=0).cpu().numpy()
    rec = {"step": step, "epoch": epoch, "lr": lr, "products": products,
           "loss": {k: round(_scalar(v), 5) for k, v in out.losses.items()},
           "S_prime": [[None if not np.isfinite(x) else round(float(x), 4) for x in row] for row in mean_sp]}
    if out.weights is not None:
        spread = weight_spread(out.weights, out.present)
        if np.isfinite(spread):
            rec["w_std"] = round(spread, 4)
    return rec


def mlm_targets(cfg, text_backbone: str) -> "frozenset[int] | None":
    """The token ids MLM may mask under `cfg.mlm_targets`: the tokenizer's content words, or None (all)."""
    if cfg.mlm_targets != "content":
        return None
    from ..data.backbones import load_tokenizer
    from ..data.masking import content_ids

    return content_ids(load_tokenizer(text_backbone).get_vocab())


@torch.no_grad()
def validate(model, dataset: FeatureDataset, collate_missing: str, device, batch_size: int, seed: int,
             targets: "frozenset[int] | None" = None) -> dict:
    """Validation loss (fixed masking), fused category-retrieval mAP@10 (toolkit-exact) and, per
    modality, the collapse check (mean cosine of its pooled feature to their mean) over the split."""
    from ..eval.metrics import collapse_score, l2n, retrieval_scores

    model.eval()
    widths = {"vocab_size": model.cfg.vocab_size, "dims": dict(model.cfg.feature_dims)}
    col = Collator(missing=collate_missing, mask_prob=0.15, seed=seed, mlm_targets=targets, **widths)
    emb_col = Collator(missing=collate_missing, mask_prob=0.0, **widths)
    totals: dict[str, float] = {}
    n = 0
    fused, pooled, present = [], {m: [] for m in MODALITIES}, []
    for i in range(0, len(dataset), batch_size):
        items = [dataset[j] for j in range(i, min(len(dataset), i + batch_size))]
        out = model(batch_to(col(items), device))
        for k, v in out.losses.items():
            totals[k] = totals.get(k, 0.0) + _scalar(v) * len(items)
        emb = model.embed(batch_to(emb_col(items), device))
        fused.append(emb.fused.float().cpu().numpy())
        present.append(emb.present.cpu().numpy())
        for m in MODALITIES:
            pooled[m].append(emb.pooled[m].float().cpu().numpy())
        n += len(items)
    model.train()
    res = {k: round(v / max(n, 1), 5) for k, v in totals.items()}
    cats = [dataset.source.products[pid].get("category") for pid in dataset.ids]
    if fused and len(set(cats)) > 1:
        X = l2n(np.concatenate(fused))
        r = retrieval_scores(X, X, cats, cats, dataset.ids, dataset.ids, ks=(10,))
        res["mAP@10"] = round(float(r["mAP@10"]), 3)
    if present:
        P = np.concatenate(present)
        res["collapse"] = {m: round(collapse_score(np.concatenate(pooled[m])[P[:, i]]), 4)
                           for i, m in enumerate(MODALITIES) if P[:, i].sum() >= 2}
    return res


@torch.no_grad()
def fit_fusion(model, dataset: FeatureDataset, batch_size: int) -> dict:
    """Fit model.fusion_weights on `dataset` (the dev split) with core.train.fusion; returns what was logged,
    with the cross-fitted margins (the fit scored on held-out halves), since the fitted mAP@10 is in-sample."""
    from ..model.catalog import embed_products
    from .fusion import cross_fit, fit_weights

    was = model.training
    model.eval()
    try:
        items = [dataset[i] for i in range(len(dataset))]
        model.fusion_weights.fill_(1.0)
        cat = embed_products(model, items, batch_size)
    finally:
        model.train(was)
    cats = [dataset.source.products[pid].get("category") or "" for pid in dataset.ids]
    w, best, base = fit_weights(cat.pooled, cat.present, cat.center, cats, dataset.ids)
    model.fusion_weights.copy_(torch.from_numpy(w))
    out = {"fusion_weights": {m: round(float(x), 3) for m, x in zip(MODALITIES, w)},
           "mAP@10_fitted": round(best, 3), "mAP@10_equal": round(base, 3), "products": len(dataset)}
    cross = cross_fit(cat.pooled, cat.present, cat.center, cats, dataset.ids)
    if cross is not None:  # None: too few products to halve
        out["cross_fitted"] = {k: cross[k] for k in ("fused - best single", "fused - best pair") if k in cross}
    return out


# ---------------------------------------------------------------- main loop
def train(a: TrainArgs) -> Path:
    """Run (or resume) a training run; returns RUN_DIR/final."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if a.workers < -1:
        raise ScaleError(f"--workers {a.workers}: use 0 or more, or -1 for the default.")
    if a.text_epochs is not None and not 1 <= a.text_epochs <= a.epochs:
        raise ScaleError(f"--text-epochs {a.text_epochs}: use 1 to --epochs ({a.epochs}), or leave it out.")
    lr = scaled_lr(a.lr, a.batch_size * world, a.lr_scale)  # checked before any slow step
    device = resolve_device(a.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    run = Path(a.out)
    is_main = rank == 0
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed + rank)
    overrides = parse_sets(a.sets)
    cfg = get_config(a.config, **overrides)
    report = scan_manifest(a.manifest)  # read once: the cache check and both splits use it
    products = report.products
    if report.problems and is_main:  # a bad line skips that product, as the feature build does
        print(f"{len(report.problems)} manifest lines skipped:", file=sys.stderr)
        for pr in report.problems[:20]:
            print(f"  {pr.message}", file=sys.stderr)
    cache = ensure_cache(a.manifest, a.cache, "cpu" if world > 1 and device.type == "cpu" else a.device, rank, products,
                         model_cfg=cfg)
    keep = tuple(m.strip() for m in a.modalities.split(",") if m.strip())
    unknown = set(keep) - set(MODALITIES)
    if unknown:
        raise ScaleError(f"--modalities: unknown {sorted(unknown)}; use a comma list of {','.join(MODALITIES)}")
    drop = tuple(m for m in MODALITIES if m not in keep)
    train_ids = select_ids(cache, products, a.split, a.complete_only)
    if not train_ids:
        raise ScaleError(f"{a.manifest}: no cached products in split {a.split!r}. Fix: check the split names.")
    train_set = FeatureDataset(cache, train_ids, drop=drop)
    # batching key: text length, and audio apart (its ~94 patches would pad the whole batch)
    lengths = np.array([len(f.get("text.ids", ())) + 100 * ("audio.patches" in f) for f in map(cache.__getitem__, train_ids)])
    val_ids = select_ids(cache, products, a.val_split) if a.val_split else []
    val_set = FeatureDataset(cache, val_ids, drop=drop) if val_ids else None
    if a.fit_fusion_on == "val":
        raise ScaleError("--fit-fusion-on val would tune on the reported split. Fix: use dev (the default) or none.")
    fit_ids = select_ids(cache, products, a.fit_fusion_on) if a.fit_fusion_on else []
    fit_set = FeatureDataset(cache, fit_ids) if len(fit_ids) >= 2 else None

    skipped: list[str] = []
    ckpt = latest_checkpoint(run, skipped) if a.resume else None
    if is_main and skipped:
        print("skipped unreadable checkpoints: " + "; ".join(skipped), file=sys.stderr)
    if is_main and a.resume and ckpt is None:
        print(f"--resume: no intact checkpoint in {run / 'checkpoints'}; starting from step 0 "
              "(metrics.jsonl restarted)", file=sys.stderr)
    model = load_checkpoint(ckpt, device) if ckpt else SCALE(cfg).to(device)
    if ckpt:
        cfg = model.cfg
        check_cache_audio(cache.root, cache.backbones, cfg, f"the checkpoint {ckpt}")
    model.train()
    if is_main and lr != a.lr:
        print(f"--lr-scale {a.lr_scale}: lr {a.lr:g} -> {lr:g} for a global batch of {a.batch_size * world}", file=sys.stderr)
    optimizer = build_optimizer(model, lr, a.weight_decay, a.pretrained_lr_mult, device, split_text=a.text_epochs is not None)
    steps_per_epoch = math.ceil(len(train_set) / (a.batch_size * world))
    total = a.epochs * steps_per_epoch if a.max_steps is None else min(a.max_steps, a.epochs * steps_per_epoch)
    text_total = None if a.text_epochs is None else min(total, a.text_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, group_schedules(optimizer, total, a.warmup, text_total))
    step, epoch, in_epoch, elapsed0 = 0, 0, 0, 0.0
    if ckpt:
        try:
            meta = _load_state(ckpt, optimizer, scheduler)
        except (KeyError, ValueError, RuntimeError, OSError) as e:  # a checkpoint of another model or optimizer
            raise CheckpointError(f"{ckpt}: its trainer state does not fit this run ({type(e).__name__}: "
                                  f"{str(e)[:300]}). Fix: resume with the arguments that wrote it, or use a new --out.") from None
        step, epoch, in_epoch, elapsed0 = meta["step"], meta["epoch"], meta["in_epoch"], meta.get("elapsed", 0.0)
        if is_main:
            print(f"resumed from {ckpt} at step {step} (epoch {epoch}, batch {in_epoch})", file=sys.stderr)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=bool(drop)) if world > 1 else model

    stop = {"signal": None}

    def on_signal(signum, frame):  # save at the end of the current step, then exit
        stop["signal"] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if is_main and a.resume:  # the killed run may have logged steps past its last checkpoint (or had none)
        _truncate_metrics(run / "metrics.jsonl", step)
    metrics_f = MetricsLog(run / "metrics.jsonl") if is_main else None
    started, last_save, cpu0 = time.time(), time.time(), time.process_time()

    best = dict(meta.get("best") or {}) if ckpt else {}  # {"epoch", "mAP@10", "stale"}: survives --resume

    def meta_now() -> dict:
        return {"step": step, "epoch": epoch, "in_epoch": in_epoch, "elapsed": elapsed0 + time.time() - started,
                "args": {k: v for k, v in vars(a).items()}, "world": world, "best": best}

    def save() -> bool:
        """The step checkpoint (rank 0). A failed write (a full disk) warns and training goes on: the
        checkpoint before it stays the one --resume starts from. Returns whether it was written."""
        if not is_main:
            return True
        try:
            write_checkpoint(run, model, optimizer, scheduler, meta_now())
            return True
        except OSError as e:
            last = latest_checkpoint(run)
            print(f"\nwarning: {write_problem(run / 'checkpoints', e)}: the checkpoint of step {step} was not written; "
                  f"training goes on, and --resume would start from {last.name if last else 'step 0'}. "
                  "Fix: free disk space.", file=sys.stderr)
            return False

    centered_at = {"step": -1}

    def refresh_center() -> None:  # rank 0; DDP broadcasts buffers from rank 0 at the next forward
        if is_main and cfg.center_fusion and centered_at["step"] != step:
            pick = np.random.default_rng(a.seed).permutation(len(train_set))[:CENTER_PRODUCTS]
            model.fusion_center.copy_(fusion_center(model, [train_set[int(i)] for i in np.sort(pick)], a.batch_size))
            centered_at["step"] = step

    def keep_as_best(value: float) -> bool:  # --keep-best: this epoch's weights to run/best
        tmp = run / f".tmp-best-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_checkpoint(model, tmp, extra={"train": {"epoch": epoch, "step": step, f"{a.val_split} mAP@10": value}})
        except OSError as e:  # the best so far stays as it was; this epoch is not recorded as best
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"\nwarning: {write_problem(run / 'best', e)}: epoch {epoch} is not kept as the best. "
                  "Fix: free disk space.", file=sys.stderr)
            return False
        shutil.rmtree(run / "best", ignore_errors=True)
        os.replace(tmp, run / "best")
        return True

    def track_best(value: float) -> None:  # rank 0, after each epoch's validation
        better = value > best.get("mAP@10", -1.0)
        if better and a.keep_best:
            better = keep_as_best(value)
        if better:
            best.update({"epoch": epoch, "mAP@10": value, "stale": 0})
        else:
            best["stale"] = best.get("stale", 0) + 1
        best["stop"] = bool(a.patience) and best["stale"] >= a.patience

    from tqdm import tqdm
    bar = tqdm(total=total, initial=step, unit="step", disable=not is_main, dynamic_ncols=True, desc="train")
    products_seen = 0
    targets = mlm_targets(cfg, cache.backbones.text)
    steps = StepBatches(train_set, lengths, a.batch_size, a.seed, rank, world, cfg.missing, a.mask_prob,
                        vocab_size=cfg.vocab_size, dims=dict(cfg.feature_dims), mlm_targets=targets)
    # every remaining step's batch, in order: one iterator for the run, so workers run ahead across epochs
    batch_iter = step_loader(steps, steps.keys(epoch, in_epoch, step, total, a.epochs),
                             loader_workers(a.workers, device), pin=device.type == "cuda")
    try:
        while step < total and epoch < a.epochs and not best.get("stop"):
            batches = steps.batches(epoch)
            while in_epoch < len(batches) and step < total:
                host = next(batch_iter)
                n_batch = len(host["id"])
                batch = batch_to(host, device)
                with amp:
                    out = ddp(batch)
                loss = out.losses["total"]
                if not torch.isfinite(loss):
                    raise TrainingStopped(
                        f"loss became {loss.item()} at step {step} (epoch {epoch}); losses: "
                        f"{ {k: _scalar(v) for k, v in out.losses.items()} }. The last good checkpoint is kept in "
                        f"{run / 'checkpoints'}. Fix: lower --lr, or --resume from it.")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
                optimizer.step()
                scheduler.step()
                step += 1
                in_epoch += 1
                products_seen += n_batch * world
                if is_main:
                    # the main learning rate (the pretrained text group runs at pretrained_lr_mult of it)
                    rec = step_record(out, step, epoch, max(scheduler.get_last_lr()), n_batch * world)
                    # wall and CPU seconds into this process's loop (core.bench; CPU time stays fair on shared cores)
                    rec["t"], rec["cpu_t"] = round(time.time() - started, 3), round(time.process_time() - cpu0, 3)
                    metrics_f.write(rec)
                    rate = products_seen / max(1e-6, time.time() - started)
                    bar.set_postfix_str(f"{rate:.1f} products/s loss {rec['loss']['total']:.3f} "
                                        f"cl {rec['loss'].get('contrastive', 0):.3f} mlm {rec['loss'].get('mlm', 0):.3f}")
                    bar.update(1)
                stop_now = stop["signal"] is not None
                if world > 1:  # every rank must agree to stop at the same step
                    flag = torch.tensor([float(stop_now)], device=device)
                    dist.all_reduce(flag)
                    stop_now = bool(flag.item())
                if stop_now:
                    saved = save()
                    if is_main:
                        print(f"\nstopped by signal at step {step}; {'saved' if saved else 'not saved'}. "
                              "Continue with --resume.", file=sys.stderr)
                    raise SystemExit(130 if stop["signal"] == signal.SIGINT else 143)
                if time.time() - last_save > a.save_every_min * 60:
                    save()
                    last_save = time.time()
            if in_epoch >= len(batches):
                epoch, in_epoch = epoch + 1, 0
                refresh_center()
                if is_main and val_set is not None:
                    v = validate(model, val_set, cfg.missing, device, a.batch_size, a.seed, targets)
                    metrics_f.write({"step": step, "epoch": epoch, "val": v})
                    print(f"\nepoch {epoch} val: loss {v.get('total', float('nan')):.4f} mAP@10 {v.get('mAP@10', float('nan'))}",
                          file=sys.stderr)
                    if "mAP@10" in v:
                        track_best(v["mAP@10"])
                if world > 1:  # every rank stops at the same epoch
                    flag = torch.tensor([float(best.get("stop", False))], device=device)
                    dist.broadcast(flag, 0)
                    best["stop"] = bool(flag.item())
                save()
                last_save = time.time()
                if best.get("stop"):
                    if is_main:
                        print(f"early stop: no better {a.val_split} mAP@10 for {a.patience} epochs "
                              f"(best {best['mAP@10']} at epoch {best['epoch']})", file=sys.stderr)
                    break
        bar.close()
        print(f"rank {rank}/{world}: finished {step} steps", file=sys.stderr)
        final = run / "final"
        if is_main:
            if a.keep_best and best.get("epoch") not in (None, epoch) and (run / "best").is_dir():
                model.load_state_dict(load_checkpoint(run / "best", device).state_dict())
                centered_at["step"] = -1
                metrics_f.write({"step": step, "epoch": epoch, "kept": {k: best[k] for k in ("epoch", "mAP@10")}})
                print(f"final model: epoch {best['epoch']} (best {a.val_split} mAP@10 {best['mAP@10']}), "
                      f"not the last epoch {epoch}", file=sys.stderr)
            refresh_center()
            if fit_set is not None and not drop:  # weights of modalities the run never saw mean nothing
                fit = fit_fusion(model, fit_set, a.batch_size)
                metrics_f.write({"step": step, "epoch": epoch, "fusion": fit})
                print(f"fusion weights fitted on {a.fit_fusion_on}: {fit['fusion_weights']} "
                      f"(mAP@10 {fit['mAP@10_equal']} -> {fit['mAP@10_fitted']})", file=sys.stderr)
                for k, v in fit.get("cross_fitted", {}).items():
                    print(f"  cross-fitted (held-out halves) {k} ({v['vs']}): {v['diff']:+.2f}", file=sys.stderr)
            save()
            tmp = run / f".tmp-final-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                save_checkpoint(model, tmp, extra={"train": meta_now()})
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                last = latest_checkpoint(run)
                raise ScaleError(f"{write_problem(final, e)}: the trained model was not written. Fix: free disk space, "
                                 f"then rerun the same command with --resume (it goes on from "
                                 f"{last.name if last else 'step 0'} in {run / 'checkpoints'}).") from None
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            print(f"done: {step} steps in {elapsed0 + time.time() - started:.0f} s; model in {final}", file=sys.stderr)
        return final
    finally:
        bar.close()
        del batch_iter  # stops DataLoader workers
        if metrics_f:
            metrics_f.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core.train", description="Train SCALE (one process or torchrun DDP).")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--config", default="small", help="small | base | a config .json")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32, help="per process")
    ap.add_argument("--lr", type=float, default=3e-4, help="for a global batch of 32 (see --lr-scale)")
    ap.add_argument("--lr-scale", default="none", choices=LR_SCALES,
                    help="scale --lr to the global batch (batch size x ranks) relative to 32: linear, sqrt or none")
    ap.add_argument("--workers", type=int, default=-1,
                    help="DataLoader processes that collate batches (-1: 0 on the CPU, up to 4 on CUDA)")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps")
    ap.add_argument("--pretrained-lr-mult", type=float, default=0.1,
                    help="learning rate of the pretrained text weights, as a fraction of --lr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="feature cache folder (default: cache/<manifest folder>)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--save-every-min", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--split", default="train", help="train split name ('train' leaves out the dev bucket), or 'all'")
    ap.add_argument("--val-split", default="dev", help="validated every epoch (recipes are chosen on dev); 'none' to skip")
    ap.add_argument("--modalities", default=",".join(MODALITIES), help="ablation: train on these only")
    ap.add_argument("--complete-only", action="store_true", help="ablation: only products with all five modalities")
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--fit-fusion-on", default="dev", help="split the fusion weights are fitted on at the end "
                    "(core.train.fusion); 'none' keeps equal weights")
    ap.add_argument("--keep-best", action="store_true",
                    help="final = the epoch with the best --val-split mAP@10 (default: the last epoch)")
    ap.add_argument("--patience", type=int, default=0,
                    help="stop after this many epochs without a better --val-split mAP@10 (0: run every epoch)")
    ap.add_argument("--text-epochs", type=int, default=None,
                    help="the text encoder trains for the first N epochs only (its own warmup and cosine over them, "
                         "then lr 0); the other encoders train for all --epochs, aligning to that text")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="model config override key=value")
    return ap


def main(argv: list[str] | None = None) -> int:
    set_offline()
    args = build_parser().parse_args(argv)
    kw = vars(args)
    if kw["val_split"] in ("none", ""):
        kw["val_split"] = None
    if kw["fit_fusion_on"] in ("none", ""):
        kw["fit_fusion_on"] = None
    kw["sets"] = tuple(kw["sets"])
    try:
        train(TrainArgs(**kw))
    except TrainingStopped as e:
        print(f"\nerror: training stopped: {e}", file=sys.stderr)
        return 3
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
