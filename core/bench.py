"""Benchmarks, one argparse subcommand each. Prints JSON.

    python -m core.bench model [--device cpu|cuda|auto] [--batch 32] [--configs small,base] [--iters 5] [--threads N]
        [--amp bf16] [--tf32] [--set key=value ...]
    python -m core.bench train [--cache DIR]          training products/s of `small`
    python -m core.bench train --cache DIR --manifest M [--workers N] [--batch B] [--iters 20]   the same, through core.train.trainer
    python -m core.bench features --manifest M [--limit 200] [--workers 0,1]   feature build products/s per decode-worker count
    python -m core.bench embed --cache DIR --manifest M   catalog embedding products/s (cached, raw files)
    python -m core.bench app                          app timings (core.explore.app_bench: bench_app, gallery_click, catalog_check_render)
    python -m core.bench app --gallery --checkpoint DIR --manifest M [--features CACHE]   home page, then a
        gallery click to the product's scores
    python -m core.bench app --catalog-check NPZ --checkpoint DIR [--manifest M]   only the Catalog check page's
        first render (fresh interpreter, empty caches) and a rerun, on that catalog
    python -m core.bench ann [--n 1000000] [--dim 384] [--queries 200]   ANN index on a synthetic catalog
    python -m core.bench synth-cache --n 20000 --out DIR   a SYNTHETIC shop3k-shaped feature cache + manifest
    python -m core.bench synth-media --n 300 --out DIR     SYNTHETIC products with real media files + manifest
    python -m core.bench parity --device cuda              S on the device vs the CPU (random `small`)
    python -m core.bench swap --checkpoint DIR --manifest M --cache CACHE [--split val] [--fraction 0.05] [--seeds 3]
        does the Catalog check page's ranking put products with a swapped image/table/video/audio in its top 5%?

`model`: forward (eval mode, with losses) and forward+backward (train mode) milliseconds per product on a shop3k-shaped batch with all five
modalities (text 24 tokens, table 40, image 50, video 8 frames, audio 94 patches), FLOPs per product
(torch.utils.flop_counter), the same run's plain matmul FLOP/s (float32, or bf16 with --amp bf16), and
MFU = achieved / matmul.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def shop_batch(batch: int, cfg, seed: int = 0) -> dict:
    """A random batch shaped like shop3k products, built by the real collate (15% masking)."""
    from .data.dataset import Collator

    rng = np.random.default_rng(seed)
    dims = cfg.feature_dims
    items = []
    for i in range(batch):
        spans = np.array([[1 + 4 * k, 3 + 4 * k, 4 + 4 * k, 5 + 4 * k] for k in range(9)], dtype=np.int32)
        items.append({
            "id": str(i),
            "text.ids": np.r_[101, rng.integers(999, cfg.vocab_size, 22), 102].astype(np.int32),
            "table.ids": np.r_[101, rng.integers(999, cfg.vocab_size, 38), 102].astype(np.int32),
            "table.spans": spans,
            "image.tokens": rng.standard_normal((50, dims["image"])).astype(np.float16),
            "image.boxes": rng.random((50, 5)).astype(np.float32),
            "video.frames": rng.standard_normal((8, dims["video"])).astype(np.float16),
            "audio.patches": rng.standard_normal((94, dims["audio"])).astype(np.float16),
        })
    return Collator(missing=cfg.missing, seed=seed, vocab_size=cfg.vocab_size, dims=dict(dims))(items)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, iters: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `iters` calls (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def matmul_flops(device: torch.device, n: int | None = None, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a plain n x n matmul of `dtype` on this device, now. On CUDA n is 8192: a 2048 bf16
    matmul takes ~25 us on an H100, too short to reach its peak. bf16 on the CPU: 1024 (cores without
    AMX run it ~10x slower than float32)."""
    n = n or (8192 if device.type == "cuda" else 1024 if dtype == torch.bfloat16 else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    iters = 50 if device.type == "cuda" else 5
    return 2 * n ** 3 / min(_time(lambda: a @ b, device, iters))


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_model(name: str, device: torch.device, batch: int, iters: int, amp: str = "none",
                overrides: dict | None = None) -> dict:
    from contextlib import nullcontext

    from .model.config import get_config
    from .data.dataset import batch_to
    from .model.scale import SCALE

    cfg = get_config(name, **(overrides or {}))
    model = SCALE(cfg).to(device).train()
    data = batch_to(shop_batch(batch, cfg), device)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    # bf16 autocast as core.train runs on CUDA; MFU is then against the bf16 matmul peak
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else nullcontext

    def fwd():  # inference: eval mode (no dropout), losses without predictions
        model.eval()
        with torch.no_grad(), ctx():
            model(data, predict=False)

    def fwd_bwd():  # one training step without the optimizer
        model.train()
        model.zero_grad(set_to_none=True)
        with ctx():
            loss = model(data).losses["total"]
        loss.backward()

    peak = matmul_flops(device, dtype=dtype)
    flops_f = count_flops(fwd)  # the counted run doubles as the warm-up
    t_f = _time(fwd, device, iters, warmup=0)
    flops_fb = count_flops(fwd_bwd)
    t_fb = _time(fwd_bwd, device, iters, warmup=0)
    peak = max(peak, matmul_flops(device, dtype=dtype))  # the better of before / after: a conservative MFU
    # median over the timed iterations; min too, since a shared CPU makes single runs noisy
    f, fb = float(np.median(t_f)), float(np.median(t_fb))
    return {
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "layers": {**cfg.layers, "jct": cfg.jct_layers}, "hidden": cfg.hidden, "iters": iters, "amp": amp,
        "products_per_s_fwd_bwd": round(batch / fb, 1), "products_per_s_fwd": round(batch / f, 1),
        "fwd_ms_per_product": round(1e3 * f / batch, 2),
        "fwd_bwd_ms_per_product": round(1e3 * fb / batch, 2),
        "fwd_ms_per_product_min": round(1e3 * min(t_f) / batch, 2),
        "fwd_bwd_ms_per_product_min": round(1e3 * min(t_fb) / batch, 2),
        "fwd_gflop_per_product": round(flops_f / batch / 1e9, 3),
        "fwd_bwd_gflop_per_product": round(flops_fb / batch / 1e9, 3),
        "matmul_gflops": round(peak / 1e9, 1), "matmul_dtype": str(dtype).replace("torch.", ""),
        "mfu_fwd": round(flops_f / f / peak, 3),
        "mfu_fwd_bwd": round(flops_fb / fb / peak, 3),
        "mfu_fwd_bwd_best": round(flops_fb / min(t_fb) / peak, 3),
    }


def cmd_model(args: argparse.Namespace) -> dict:
    from .data.backbones import resolve_device, set_offline

    set_offline()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:  # TF32 tensor cores for float32 matmuls / convs (Ampere and later)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    out = {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch, "amp": args.amp,
           "tf32": bool(torch.backends.cuda.matmul.allow_tf32), "sets": list(args.sets)}
    if device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(device)
    for name in args.configs.split(","):
        out[name] = bench_model(name, device, args.batch, args.iters if name == "small" or device.type == "cuda" else 1,
                                args.amp, parse_sets(args.sets))
    return out


def bench_trainer(args: argparse.Namespace) -> dict:
    """core.train.trainer itself (its data path, length-grouped batches, optimizer, metrics) for --iters steps of
    `small` into a temporary run folder: products/s between the end of step 1 (warm-up) and the last."""
    import shutil
    import tempfile
    from pathlib import Path

    from .train.trainer import TrainArgs, train

    run = Path(tempfile.mkdtemp(prefix="scale-bench-train-"))
    try:
        t = time.perf_counter()
        train(TrainArgs(manifest=args.manifest, out=str(run), config="small", cache=args.cache, device=args.device,
                        batch_size=args.batch, epochs=1000, max_steps=args.iters + 1, split="train", val_split=None,
                        fit_fusion_on=None, workers=args.workers, save_every_min=1e9, lr_scale=args.lr_scale,
                        sets=("center_fusion=false", *args.sets)))  # no end-of-run centring pass: only the steps are timed
        wall = time.perf_counter() - t
        recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if "t" in r]
    finally:
        shutil.rmtree(run, ignore_errors=True)
    products = sum(r["products"] for r in recs[1:])
    dt, cpu = recs[-1]["t"] - recs[0]["t"], recs[-1]["cpu_t"] - recs[0]["cpu_t"]
    return {"device": args.device, "threads": torch.get_num_threads(), "batch": args.batch, "data": args.cache,
            "path": "core.train.trainer", "workers": args.workers, "lr_scale": args.lr_scale, "sets": list(args.sets), "steps_timed": len(recs) - 1,
            "step_s_mean": round(dt / max(1, len(recs) - 1), 3), "products_per_s": round(products / dt, 2),
            "cpu_s_per_product": round(cpu / products, 4), "products_per_cpu_s": round(products / cpu, 2),
            "wall_s_with_setup_and_final_save": round(wall, 1)}


def cmd_train(args: argparse.Namespace) -> dict:
    """Training throughput (products/s) of `small`: real optimizer steps on shop3k-shaped batches,
    or on the feature cache's products when --cache is given (through core.train.trainer with --manifest)."""
    if args.manifest:
        if not args.cache:
            raise SystemExit("error: train --manifest needs --cache (the feature cache of that manifest).")
        return bench_trainer(args)
    from .data.backbones import resolve_device, set_offline
    from .model.config import get_config
    from .data.dataset import Collator, FeatureDataset, batch_to
    from .model.scale import SCALE

    set_offline()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = get_config("small", **parse_sets(args.sets))
    model = SCALE(cfg).to(device).train()
    opt = model.configure_optimizers(3e-4, 0.01)
    if args.cache:
        from .data.features import FeatureCache

        cache = FeatureCache(args.cache)
        ds = FeatureDataset(cache, cache.keys()[: args.batch * (args.iters + 1)])
        batches = [Collator(seed=i)([ds[j] for j in range(i * args.batch, (i + 1) * args.batch)]) for i in range(args.iters + 1)]
    else:
        batches = [shop_batch(args.batch, cfg, seed=i) for i in range(args.iters + 1)]
    times, cpu_times = [], []
    for i, b in enumerate(batches):
        b = batch_to(b, device)
        t, c = time.perf_counter(), time.process_time()
        loss = model(b).losses["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    med = float(np.median(times))
    cpu = float(np.mean(cpu_times))  # CPU seconds (all threads) a step: fair to compare on shared cores
    return {"device": str(device), "threads": torch.get_num_threads(), "batch": args.batch,
            "data": args.cache or "shop3k-shaped random", "step_s_median": round(med, 3),
            "products_per_s": round(args.batch / med, 2), "cpu_s_per_product": round(cpu / args.batch, 4),
            "products_per_cpu_s": round(args.batch / cpu, 2)}


def cmd_features(args: argparse.Namespace) -> dict:
    """Feature cache build speed on the manifest's first --limit products, once per decode-worker count,
    each into a fresh temporary folder (one process; ranks split the same work)."""
    import shutil
    import tempfile
    from pathlib import Path

    from .data.backbones import set_offline
    from .data.features import build_cache

    set_offline()
    out: dict = {"device": args.device, "threads": torch.get_num_threads(), "limit": args.limit, "runs": []}
    for w in (int(x) for x in args.workers.split(",")):
        root = Path(tempfile.mkdtemp(prefix="scale-bench-features-"))
        try:
            t = time.perf_counter()
            s = build_cache(args.manifest, root / "cache", args.limit, args.device, args.chunk, progress=False, workers=w)
            wall = time.perf_counter() - t
        finally:
            shutil.rmtree(root, ignore_errors=True)
        out["runs"].append({"workers": w, "products": s["processed_now"], "wall_s": round(wall, 1),
                            "products_per_s": round(s["processed_now"] / wall, 2)})
    return out


def cmd_embed(args: argparse.Namespace) -> dict:
    """Embedding speed: from cached features (products/s), and end to end from raw files
    (decode + backbones + model) on the manifest's first products."""
    from .data.backbones import set_offline
    from .model.catalog import embed_products
    from .model.checkpoint import load_checkpoint
    from .data.featurize import Featurizer
    from .data.features import FeatureCache
    from .data.records import read_manifest

    set_offline()
    model = load_checkpoint(args.checkpoint, args.device)
    out: dict = {"device": args.device, "threads": torch.get_num_threads(), "checkpoint": args.checkpoint}
    if args.cache:
        cache = FeatureCache(args.cache)
        ids = cache.keys()[: args.n]
        items = [dict(cache[i], id=i) for i in ids]
        t = time.perf_counter()
        embed_products(model, items)
        out["cached"] = {"products": len(items), "products_per_s": round(len(items) / (time.perf_counter() - t), 1)}
    if args.manifest:
        products = read_manifest(args.manifest)[: args.raw_n]
        fz = Featurizer(device=args.device)
        t = time.perf_counter()
        decoded = [fz.decode(p) for p in products]
        feats = fz.encode_many(decoded)
        embed_products(model, [dict(f, id=p.id) for f, p in zip(feats, products)])
        dt = time.perf_counter() - t
        out["raw_files"] = {"products": len(products), "products_per_s": round(len(products) / dt, 2)}
    return out


def cmd_app(args: argparse.Namespace) -> dict:
    from .explore.app_bench import bench_app, catalog_check_render, gallery_click

    if args.catalog_check:
        return catalog_check_render(args.catalog_check, args.checkpoint, args.manifest)
    if args.gallery:
        return gallery_click(args.checkpoint, args.manifest, args.features)
    return bench_app(args.checkpoint, args.catalog_size, args.device)


def cmd_swap(args: argparse.Namespace) -> dict:
    """core.explore.catalog_check.swap_benchmark on the split's products read from the feature cache."""
    from .data.backbones import set_offline
    from .explore.catalog_check import swap_benchmark
    from .model.checkpoint import load_checkpoint
    from .errors import ScaleError
    from .data.features import FeatureCache
    from .data.records import read_manifest

    set_offline()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint, args.device).eval()
    cache = FeatureCache(args.cache)
    products = [p for p in read_manifest(args.manifest, check=False)
                if (args.split == "all" or p.split == args.split) and p.id in cache]
    if len(products) < 20:
        raise ScaleError(f"{args.manifest}: only {len(products)} products of split {args.split!r} are in the cache "
                         f"{args.cache}. Fix: pass the cache built from this manifest (python -m core.data.features build) "
                         "or another --split.")
    items = [dict(cache[p.id], id=p.id) for p in products]
    t = time.perf_counter()
    out = swap_benchmark(model, items, [p.category or "" for p in products], fraction=args.fraction,
                         seeds=list(range(args.seeds)))
    out.update(checkpoint=args.checkpoint, split=args.split, seconds=round(time.perf_counter() - t, 1),
               threads=torch.get_num_threads())
    return out


def synthetic_catalog(n: int, dim: int, clusters: int, seed: int, start: int = 0) -> np.ndarray:
    """Rows start..start+n of a seeded catalog: a Gaussian mixture of `clusters` unit centres, uneven
    cluster sizes and spreads, rows L2-normalized float32. Rows are drawn in 65,536-row blocks with their
    own seeds, so any slice is the same whatever the chunking."""
    from .eval.metrics import l2n

    rng = np.random.default_rng(seed)
    centres = l2n(rng.standard_normal((clusters, dim))).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    spread = rng.uniform(0.6, 1.2, clusters).astype(np.float32)  # noise norm / centre norm, per cluster
    out = np.empty((n, dim), dtype=np.float32)
    block = 65_536
    for b in range(start // block, (start + n - 1) // block + 1):
        brng = np.random.default_rng([seed, b])
        y = brng.choice(clusters, size=block, p=weights)
        rows = centres[y] + (spread[y, None] / np.sqrt(dim)) * brng.standard_normal((block, dim), dtype=np.float32)
        lo, hi = max(start, b * block), min(start + n, (b + 1) * block)
        out[lo - start: hi - start] = rows[lo - b * block: hi - b * block]
    return l2n(out)


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (Linux)."""
    import os
    import resource

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_ann(args: argparse.Namespace) -> dict:
    """A synthetic catalog written chunk by chunk to a memory-mapped store, indexed by core.explore.ann (build
    time, tuned nprobe / efSearch), then timed one query at a time against exact search (recall@k)."""
    import shutil
    import tempfile
    from pathlib import Path

    import faiss

    from .explore.ann import AnnIndex, exact_search, recall_at_k
    from .explore.catalog_store import EmbeddingStore, StoreWriter

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rss_start = round(_rss_mb()[0])  # the interpreter with numpy, torch and faiss loaded
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="scale-bench-ann-"))
    out: dict = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "queries": args.queries, "k": args.k,
                 "dtype": args.dtype, "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                 "rss_mb_at_start": rss_start}
    try:
        t = time.perf_counter()
        chunk = 65_536
        with StoreWriter(root / "store", dim=args.dim, dtype=args.dtype) as w:
            for s in range(0, args.n, chunk):
                m = min(chunk, args.n - s)
                rows = synthetic_catalog(m, args.dim, args.clusters, args.seed, start=s)
                w.append(rows, [f"p{i}" for i in range(s, s + m)])
        store = EmbeddingStore.open(root / "store")
        out["store_write_s"] = round(time.perf_counter() - t, 1)
        # queries: fresh draws from the same mixture (rows past the catalog's end)
        Q = synthetic_catalog(args.queries, args.dim, args.clusters, args.seed, start=args.n + 65_536)

        t = time.perf_counter()
        index = AnnIndex.build(store.X, store.ids, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe,
                               ef_search=args.ef_search, m=args.m, target_recall=args.target_recall, seed=args.seed)
        out["build_s"] = round(time.perf_counter() - t, 1)
        out.update(kind=index.kind, params=index.params)
        out["rss_mb_after_build"], _ = (round(v) for v in _rss_mb())

        t = time.perf_counter()
        _, truth = exact_search(store.X, Q, args.k)
        out["exact_batch_ms_per_query"] = round(1e3 * (time.perf_counter() - t) / len(Q), 2)

        def single(knob: int | None) -> tuple[list[float], np.ndarray]:
            kw = {"nprobe": knob} if index.kind == "ivf" else {"ef_search": knob} if index.kind == "hnsw" else {}
            index.search(Q[0], args.k, **kw)  # warm-up
            times, found = [], []
            for q in Q:
                t0 = time.perf_counter()
                found.append(index.search(q, args.k, **kw)[1][0])
                times.append(time.perf_counter() - t0)
            return times, np.stack(found)

        times, found = single(None)
        out["query_ms_p50"] = round(1e3 * float(np.percentile(times, 50)), 2)
        out["query_ms_p95"] = round(1e3 * float(np.percentile(times, 95)), 2)
        out[f"recall@{args.k}"] = round(recall_at_k(found, truth), 4)
        knob = index.params.get("nprobe", index.params.get("ef_search"))
        if knob is not None:  # the trade-off around the tuned value
            out["sweep"] = []
            for v in sorted({max(1, knob // 2), knob, knob * 2}):
                tv, fv = single(v)
                out["sweep"].append({"nprobe" if index.kind == "ivf" else "ef_search": v,
                                     "p50_ms": round(1e3 * float(np.percentile(tv, 50)), 2),
                                     "p95_ms": round(1e3 * float(np.percentile(tv, 95)), 2),
                                     f"recall@{args.k}": round(recall_at_k(fv, truth), 4)})
        t = time.perf_counter()
        index.save(root / "ann")
        AnnIndex.load(root / "ann")
        out["save_load_s"] = round(time.perf_counter() - t, 1)
        rss, peak = _rss_mb()
        out.update(rss_mb=round(rss), peak_rss_mb=round(peak),
                   store_mb=round((root / "store" / "embeddings.npy").stat().st_size / 2**20),
                   index_file_mb=round((root / "ann" / "index.faiss").stat().st_size / 2**20))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return out


def parse_sets(sets) -> dict:
    from .train.trainer import parse_sets as parse

    return parse(sets)


def cmd_synth_cache(args: argparse.Namespace) -> dict:
    from .data.synth_cache import write_synth_cache

    t = time.perf_counter()
    out = write_synth_cache(args.out, args.n, args.seed)
    return dict(out, seconds=round(time.perf_counter() - t, 1))


def cmd_synth_media(args: argparse.Namespace) -> dict:
    from .data.synth_cache import write_synth_media

    return write_synth_media(args.out, args.n, args.seed, args.workers, args.repeat)


def cmd_parity(args: argparse.Namespace) -> dict:
    from .data.backbones import resolve_device
    from .data.synth_cache import s_parity

    return s_parity(args.n, str(resolve_device(args.device)), args.seed, parse_sets(args.sets))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model", help="SCALE forward / backward speed, FLOPs and MFU")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--configs", default="small,base", help="comma-separated config names")
    p.add_argument("--iters", type=int, default=5, help="timed iterations for small (base on CPU: 1)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--amp", default="none", choices=["none", "bf16"], help="bf16 autocast (as core.train on CUDA)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 for float32 matmuls on CUDA")
    p.add_argument("--set", dest="sets", action="append", default=[], help="model config override key=value")
    p.set_defaults(func=cmd_model)
    p = sub.add_parser("train", help="training throughput of `small` (products/s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--cache", default=None, help="feature cache folder (default: random shop3k-shaped batches)")
    p.add_argument("--manifest", default=None, help="with --cache: time core.train.trainer itself on its train split")
    p.add_argument("--workers", type=int, default=-1, help="core.train's DataLoader workers (-1: its default)")
    p.add_argument("--lr-scale", default="none", help="with --manifest: core.train's --lr-scale (none|linear|sqrt)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="model config override key=value")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("features", help="feature cache build products/s, per decode-worker count")
    p.add_argument("--manifest", required=True)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--workers", default="0,1", help="comma list of decode-worker counts to time")
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_features)
    p = sub.add_parser("embed", help="catalog embedding speed, from cached features and from raw files")
    p.add_argument("--checkpoint", default="checkpoints/scale-shop3k-small")
    p.add_argument("--cache", default=None)
    p.add_argument("--manifest", default=None)
    p.add_argument("--n", type=int, default=1000, help="cached products to embed")
    p.add_argument("--raw-n", type=int, default=32, help="products embedded from raw files")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("app", help="app cold start, upload to S, page switch, map, RSS")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--catalog-size", type=int, default=3000)
    p.add_argument("--catalog-check", default=None, metavar="NPZ",
                   help="time only the Catalog check page's first render on this catalog")
    p.add_argument("--manifest", default=None, help="with --catalog-check: titles and thumbnails; with --gallery: "
                   "the catalog's products")
    p.add_argument("--gallery", action="store_true",
                   help="time the home page, then a click on a gallery product until its scores are shown")
    p.add_argument("--features", default=None, help="with --gallery: the feature cache (SCALE_FEATURES)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_app)
    p = sub.add_parser("ann", help="ANN index on a synthetic catalog: build, query latency, recall, RSS")
    p.add_argument("--n", type=int, default=1_000_000, help="catalog rows")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture components")
    p.add_argument("--kind", default="auto", help="auto | flat | ivf | hnsw")
    p.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about sqrt(n))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells read per query (default: tuned)")
    p.add_argument("--m", type=int, default=32, help="HNSW links per node")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default: tuned)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--dtype", default="float32", help="store dtype: float32 | float16")
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: its default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="keep the store and index here (default: a temporary folder)")
    p.set_defaults(func=cmd_ann)
    p = sub.add_parser("synth-cache", help="write a SYNTHETIC shop3k-shaped feature cache and its manifest")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--out", required=True, help="new folder: gets cache/, manifest.jsonl, README.txt")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth_cache)
    p = sub.add_parser("synth-media", help="write SYNTHETIC products with real media files and their manifest")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="writer processes (0: this one)")
    p.add_argument("--repeat", type=int, default=1, help="list each product this many times (new ids, same files)")
    p.set_defaults(func=cmd_synth_media)
    p = sub.add_parser("parity", help="S of a random `small` on --device against the CPU (max |dS|)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[], help="model config override key=value")
    p.set_defaults(func=cmd_parity)
    p = sub.add_parser("swap", help="Catalog check: swapped modalities found in the ranking's top 5%%")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--cache", required=True, help="feature cache of the manifest (python -m core.data.features build)")
    p.add_argument("--split", default="val", help="val | train | all")
    p.add_argument("--fraction", type=float, default=0.05, help="share of products swapped, and the top cut")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_swap)
    args = parser.parse_args(argv)
    print(json.dumps(args.func(args), indent=2))


if __name__ == "__main__":
    main()
