"""Feature cache: every product's backbone features on disk, for training and evaluation.

    python -m core.data.features build --manifest M --out DIR [--limit N] [--device auto|cpu|cuda] [--workers N]
        [--audio-backbone logmel|whisper-tiny.en] [--reuse-from OTHER_CACHE]
    torchrun --nproc_per_node N [--nnodes M] -m core.data.features build ...   (the manifest split across ranks)

Layout (never pickle): DIR/index.json and DIR/shards/shard-NNNNN.safetensors, whose tensors are
named `<product id>/<feature key>`. Each shard is written to a temp file and renamed, then the
index is rewritten the same way, so a killed run loses at most the chunk in flight; re-running
skips the products already in the index. A new shard takes a number above every shard on disk or in
the index, reserved with O_EXCL, so a build never overwrites a live shard. Products that failed (a
broken file) are retried by the next build; index entries whose shard file was deleted are rebuilt.
Bad manifest lines are skipped and listed in the summary; the other products are built.

Sharded builds (RANK / WORLD_SIZE set, as torchrun does; gloo only for barriers): the chunks of the
products to build are dealt round-robin to the ranks, so each product is batched with the same
neighbours as in a one-process build and gets the same features. Each rank writes its shards (named
shard-NNNNN-rK) and, after each one, its own index part index.rank-K.json (the final record of every
product it processed). After a barrier rank 0 folds the parts into index.json and deletes them. A killed
build leaves its parts; readers fold them in, and the next build (of any world size) folds them first.

`--workers N` decodes the media in N spawned processes, two chunks ahead of the CNN; `--workers 0`
decodes in the build process as before. On CUDA the CNN runs in bf16 autocast (channels-last).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from collections import Counter, deque
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .backbones import BackboneConfig, set_offline
from ..errors import CacheError, ScaleError, write_problem
from ..modalities import pattern, present_in
from .records import Product, scan_manifest
from .speech import AUDIO_BACKBONES

VERSION = 1


_SHARD_NUMBER = re.compile(r"^shard-(\d+)")


def _reserve_shard(shards: Path, taken: set[str], tag: str = "") -> str:
    """A new shard name numbered above every shard on disk and in the index; O_EXCL makes the claim, so
    neither a deleted-and-rebuilt shard nor a second build (or another rank) can reuse a live name.
    `tag` ("-r3" on rank 3 of a sharded build) tells whose shard it is."""
    numbers = [int(m.group(1)) for n in (*taken, *(p.name for p in shards.iterdir()))
               if (m := _SHARD_NUMBER.match(n))]
    n = max(numbers, default=-1) + 1
    while True:
        name = f"shard-{n:05d}{tag}.safetensors"
        try:
            os.close(os.open(shards / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return name
        except FileExistsError:
            n += 1


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no half file left behind
        tmp.unlink(missing_ok=True)
        raise


_PART = re.compile(r"^index\.rank-(\d+)\.json$")


def _parts(root: Path) -> list[Path]:
    """The index parts a sharded build left (by rank), oldest rank first."""
    found = [(int(m.group(1)), p) for p in root.glob("index.rank-*.json") if (m := _PART.match(p.name))]
    return [p for _, p in sorted(found)]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CacheError(f"{path}: corrupt index ({e}). Fix: delete the folder and build again.") from None


def _fold(index: dict, records: dict) -> None:
    """Apply a part's records (product id -> its final entry and failure, either None) to `index`."""
    for pid, r in records.items():
        if r.get("entry") is None:
            index["products"].pop(pid, None)
        else:
            index["products"][pid] = r["entry"]
        if r.get("failure") is None:
            index["failures"].pop(pid, None)
        else:
            index["failures"][pid] = r["failure"]


def load_index(root: str | Path) -> dict:
    """index.json with the parts of an unfinished sharded build folded in (they are newer). Parts are read
    first: a part deleted meanwhile was merged into index.json before its deletion."""
    root = Path(root)
    parts = []
    for p in _parts(root):
        try:
            parts.append(_read_json(p))
        except FileNotFoundError:  # merged by rank 0 while we listed
            continue
    index = _read_json(root / "index.json")
    index.setdefault("failures", {})
    for part in parts:
        _fold(index, part.get("records", {}))
    return index


class FeatureCache:
    """Read access to a built cache: a mapping product id -> features dict."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.is_file():
            raise CacheError(f"{index}: no feature cache here. Fix: run `python -m core.data.features build --manifest M --out {self.root}`.")
        self.index = load_index(self.root)
        self._shards: dict[str, dict[str, np.ndarray]] = {}

    @property
    def backbones(self) -> BackboneConfig:
        return BackboneConfig.from_dict(self.index.get("backbones", {}))

    @property
    def products(self) -> dict[str, dict]:
        return self.index["products"]

    def keys(self) -> list[str]:
        return list(self.products)

    def __contains__(self, pid: str) -> bool:
        return pid in self.products

    def __len__(self) -> int:
        return len(self.products)

    def _shard(self, name: str) -> dict[str, np.ndarray]:
        if name not in self._shards:
            from safetensors.numpy import load_file

            path = self.root / "shards" / name
            try:
                self._shards[name] = load_file(str(path))
            except Exception as e:  # noqa: BLE001 - any read failure of the shard means the same fix
                raise CacheError(f"{path}: unreadable shard ({e}). Fix: delete this shard file and build again "
                                 f"(`python -m core.data.features build --manifest M --out {self.root}` re-extracts its "
                                 "products).") from None
        return self._shards[name]

    def __getitem__(self, pid: str) -> dict[str, np.ndarray]:
        try:
            entry = self.products[pid]
        except KeyError:
            raise KeyError(f"product {pid!r} is not in the feature cache {self.root}") from None
        shard = self._shard(entry["shard"])
        prefix = pid + "/"
        feats = {k[len(prefix):]: v for k, v in shard.items() if k.startswith(prefix)}

        got = pattern(present_in(feats))
        if got != entry["pattern"]:  # e.g. the shard was overwritten: never hand back {} as a product
            raise CacheError(f"{self.root / 'shards' / entry['shard']}: product {pid!r} is indexed with modalities "
                             f"{entry['pattern']} but the shard holds {got}. Fix: delete this shard file and build "
                             f"again (`python -m core.data.features build --manifest M --out {self.root}` re-extracts "
                             "the products of deleted shards).")
        return feats

    def present(self, pid: str) -> list[bool]:
        return [c != "-" for c in self.products[pid]["pattern"]]


def _chunks(items: Sequence[Product], n: int) -> Iterator[list[Product]]:
    for i in range(0, len(items), n):
        yield list(items[i: i + n])


# ---------------------------------------------------------------- decoding in worker processes
_WORKER_DECODER = None


def _init_worker(cfg: dict) -> None:
    """A decode worker: a Featurizer without its backbones (decode needs only the config), so a worker
    decodes exactly as the build process does and loads no network."""
    global _WORKER_DECODER
    from .featurize import Featurizer

    set_offline()
    _WORKER_DECODER = Featurizer.__new__(Featurizer)
    _WORKER_DECODER.cfg, _WORKER_DECODER.audio_from_video = BackboneConfig.from_dict(cfg), True


def _decode_in_worker(product: Product):
    return _WORKER_DECODER.decode(product)


def decoded_groups(groups: Iterable[list[Product]], featurizer, workers: int = 0, ahead: int = 2):
    """(group, decoded products) for each group, in order. With workers, `ahead` groups are decoded in
    spawned processes while the caller encodes the current one (bounded: decoded media is large)."""
    if workers <= 0:
        for g in groups:
            yield g, [featurizer.decode(p) for p in g]
        return
    # spawn, not fork: the build process holds torch / OpenMP / PyAV state that a fork can deadlock on
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(featurizer.cfg.to_dict(),)) as pool:
        pending: deque = deque()
        it = iter(groups)
        for g in it:
            pending.append((g, pool.map_async(_decode_in_worker, g, chunksize=1)))
            if len(pending) > ahead:
                break
        while pending:
            g, res = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.map_async(_decode_in_worker, nxt, chunksize=1)))
            yield g, res.get()


# ---------------------------------------------------------------- ranks
def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _from_rank0(world: int, problem: str | None) -> str | None:
    """Rank 0's problem (None if none) on every rank: a rank that stopped alone would leave the others
    waiting at a barrier."""
    if world > 1:
        import torch.distributed as dist

        box = [problem]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return problem


def _fold_parts(out: Path, index: dict) -> list[Path]:
    """Fold every index part into `index`; returns the parts, to delete once `index` is written. A crash
    between the write and the deletions folds the same records again next time: idempotent."""
    parts = _parts(out)
    for p in parts:
        _fold(index, _read_json(p).get("records", {}))
    return parts


def manifest_products(manifest: str | Path, products: list | None = None,
                      limit: int | None = None) -> tuple[list[Product], list[dict]]:
    """The products a build covers (`products` if given, else the manifest's readable lines, the first `limit`)
    and the manifest's bad lines: a bad line skips that product only; the build summary lists it."""
    problems: list[dict] = []
    if products is None:
        report = scan_manifest(manifest)
        all_products, problems = report.products, [q.to_json() for q in report.problems]
    else:
        all_products = list(products)
    return (all_products[:limit] if limit else all_products), problems


def open_index(index_path: Path, cfg: BackboneConfig, manifest: str | Path) -> dict:
    """The cache's index, or a new empty one; a cache of other backbones is refused."""
    if not index_path.is_file():
        return {"version": VERSION, "backbones": cfg.to_dict(), "manifest": str(manifest), "products": {}, "failures": {}}
    index = _read_json(index_path)
    # compared as configs: a cache made before a field existed has that field's default
    if BackboneConfig.from_dict(index.get("backbones", {})) != cfg:
        raise CacheError(f"{index_path}: cache was built with other backbones {index.get('backbones')}. "
                         "Fix: use another --out folder, or delete this one.")
    return index


def build_cache(manifest: str | Path, out: str | Path, limit: int | None = None, device: str = "auto",
                chunk: int = 32, cfg: BackboneConfig = BackboneConfig(), progress: bool = True,
                products: Sequence[Product] | None = None, workers: int = 0, rank: int = 0,
                world: int = 1, on_chunk: Callable[[int, int], None] | None = None) -> dict:
    """Extract and store the features of every product not yet cached. Returns the summary dict.
    With world > 1 this process is `rank` of a sharded build (torch.distributed already initialized).
    `on_chunk(done, total)` is called after each chunk is on disk (this rank's products); an exception it
    raises stops the build there, and the next build resumes after the chunks already written."""
    from safetensors.numpy import save as save_bytes
    from tqdm import tqdm

    from .featurize import Featurizer

    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    all_products, problems = manifest_products(manifest, products, limit)
    shards = out / "shards"
    gone: list[str] = []
    problem = None
    if rank == 0:
        try:
            index = open_index(index_path, cfg, manifest)
            index.setdefault("failures", {})
            index["manifest_problems"] = problems
            # a killed sharded build's records, then the repairs, before any other rank reads the index
            parts = _fold_parts(out, index)
        except CacheError as e:
            problem = str(e)
        else:
            # following the repair advice (delete a bad shard): its products are extracted again
            gone = sorted(pid for pid, e in index["products"].items() if not (shards / e["shard"]).is_file())
            for pid in gone:
                del index["products"][pid]
            if parts or world > 1:
                _atomic_write_bytes(index_path, json.dumps(index).encode())
                for p in parts:
                    p.unlink(missing_ok=True)
    problem = _from_rank0(world, problem)  # also the barrier: index.json is ready
    if problem:
        raise CacheError(problem)
    if rank != 0:
        index = _read_json(index_path)
    # failed products are retried: the broken file may have been fixed since
    todo = [p for p in all_products if p.id not in index["products"] or p.id in index["failures"]]
    retried = [p.id for p in todo if p.id in index["failures"]]
    # whole chunks are dealt to the ranks: the CNN batches the same products together whatever the world size
    mine = list(_chunks(todo, chunk))[rank::world]
    part_path = out / f"index.rank-{rank}.json"
    records: dict[str, dict] = {}
    tag = f"-r{rank}" if world > 1 else ""
    started = time.time()
    featurizer = Featurizer(cfg, device) if mine else None
    on_cuda = featurizer is not None and featurizer.image.device_.type == "cuda"
    done, total = 0, sum(map(len, mine))  # counted here: a disabled tqdm bar counts nothing
    bar = tqdm(total=total, unit="product", disable=not progress, desc=f"features{tag}", dynamic_ncols=True)
    for group, decoded in decoded_groups(mine, featurizer, workers if mine else 0):
        if on_cuda:  # bf16 autocast: the CNN in channels-last bf16; its features are stored as float16 anyway
            import torch

            amp = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            amp = nullcontext()
        with amp:
            feats = featurizer.encode_many(decoded)
        tensors: dict[str, np.ndarray] = {}
        name = _reserve_shard(shards, {e["shard"] for e in index["products"].values()}, tag)
        entries = {}
        for p, d, f in zip(group, decoded, feats):
            index["failures"].pop(p.id, None)
            if d.errors:
                index["failures"][p.id] = {"modalities": d.errors}
            if not f:
                index["failures"].setdefault(p.id, {})["rejected"] = f"product {p.id!r} has no usable modality left."
                index["products"].pop(p.id, None)  # a retried product whose last file broke since
                records[p.id] = {"entry": None, "failure": index["failures"][p.id]}
                continue
            for k, v in f.items():
                tensors[f"{p.id}/{k}"] = np.ascontiguousarray(v)
            entries[p.id] = {"shard": name, "pattern": pattern(present_in(f)), "split": p.split, "category": p.category}
            records[p.id] = {"entry": entries[p.id], "failure": index["failures"].get(p.id)}
        try:
            if tensors:
                _atomic_write_bytes(shards / name, save_bytes(tensors))
            else:
                (shards / name).unlink(missing_ok=True)  # the reservation of a chunk where every product failed
            index["products"].update(entries)
            if world > 1:  # only this rank's records: the ranks never write the same file
                _atomic_write_bytes(part_path, json.dumps({"rank": rank, "world": world, "records": records}).encode())
            else:
                _atomic_write_bytes(index_path, json.dumps(index).encode())
        except OSError as e:  # a full disk: the chunks already on disk stay cached, this one is done again next time
            (shards / name).unlink(missing_ok=True)
            bar.close()
            raise CacheError(f"{write_problem(out, e)}. The {done} products of this build written before it are kept. "
                             "Fix: free disk space (or build into an --out on another disk), then run the same "
                             "command again: it goes on from there.") from None
        bar.update(len(group))
        done += len(group)
        if on_chunk is not None:
            on_chunk(done, total)
    bar.close()
    if world == 1 and not mine:  # the manifest problems of this build are still recorded
        _atomic_write_bytes(index_path, json.dumps(index).encode())
    _barrier(world)
    if world > 1:
        if rank == 0:
            index = _read_json(index_path)
            parts = _fold_parts(out, index)
            _atomic_write_bytes(index_path, json.dumps(index).encode())
            for p in parts:
                p.unlink(missing_ok=True)
        _barrier(world)
        index = _read_json(index_path)
    elapsed = time.time() - started
    s = summarize(index, elapsed, len(todo))
    s["retried"] = len(retried)
    s["still_failing"] = [pid for pid in retried if pid in index["failures"]]
    s["rebuilt_missing_shards"] = len(gone)
    s["world"] = world
    return s


def summarize(index: dict, elapsed: float = 0.0, processed: int = 0) -> dict:
    patterns = Counter(e["pattern"] for e in index["products"].values())
    return {
        "products": len(index["products"]),
        "processed_now": processed,
        "seconds": round(elapsed, 1),
        "products_per_s": round(processed / elapsed, 2) if elapsed > 0 else None,
        "patterns": dict(patterns.most_common()),
        "failures": index["failures"],
        "manifest_problems": index.get("manifest_problems", []),
    }


def print_summary(s: dict) -> None:
    print(f"\n{s['products']} products cached ({s['processed_now']} processed now in {s['seconds']} s"
          + (f", {s['products_per_s']} products/s)" if s["products_per_s"] else ")"))
    print("present-modality patterns (T text, B table, I image, V video, A audio):")
    for pat, n in s["patterns"].items():
        print(f"  {pat}  {n}")
    fails = s["failures"]
    print(f"{len(fails)} products had a failed modality or were rejected:")
    for pid, f in list(fails.items())[:50]:
        for m, msg in f.get("modalities", {}).items():
            print(f"  {pid} [{m}] {msg}")
        if "rejected" in f:
            print(f"  {pid} REJECTED: {f['rejected']}")
    if len(fails) > 50:
        print(f"  ... and {len(fails) - 50} more (see index.json)")
    if s.get("retried"):
        still = s.get("still_failing", [])
        print(f"{s['retried']} products that had failed were retried: {s['retried'] - len(still)} now build, "
              f"{len(still)} still fail" + (f" ({', '.join(still[:20])}{' ...' if len(still) > 20 else ''})" if still else ""))
    if "reused" in s:  # a --reuse-from build (core.cache_reuse)
        print(f"{s['reused']} products reused the image / video features of {s['reused_from']}, "
              f"{s['featurized_whole']} were featurized whole; audio ({s['audio_backbone']}) of "
              f"{s['audio_from']['file']} products from the audio file, {s['audio_from']['video']} from the video soundtrack")
    if s.get("rebuilt_missing_shards"):
        print(f"{s['rebuilt_missing_shards']} products whose shard file was deleted were extracted again")
    probs = s.get("manifest_problems", [])
    if probs:
        print(f"{len(probs)} manifest lines were skipped (their products are not in the cache):")
        for q in probs[:50]:
            print(f"  {q['message']}")
        if len(probs) > 50:
            print(f"  ... and {len(probs) - 50} more (see index.json, 'manifest_problems')")


def main(argv: list[str] | None = None) -> int:
    set_offline()
    ap = argparse.ArgumentParser(prog="python -m core.data.features", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="extract and store every product's features")
    b.add_argument("--manifest", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--limit", type=int, default=None)
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--chunk", type=int, default=32, help="products per shard")
    b.add_argument("--workers", type=int, default=0, help="decode processes (0: decode in this process)")
    b.add_argument("--json", default=None, help="also write the summary here")
    b.add_argument("--audio-backbone", default="logmel", choices=list(AUDIO_BACKBONES),
                   help="frozen model behind the audio items (core.speech)")
    b.add_argument("--reuse-from", default=None, metavar="CACHE",
                   help="copy the image and video features of this cache (products whose files are unchanged since) "
                        "and compute text, table and audio again: a new audio backbone without the CNN's work")
    args = ap.parse_args(argv)
    if args.workers < 0:
        print(f"error: --workers {args.workers}: must be 0 or more.", file=sys.stderr)
        return 2
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device
    cfg = BackboneConfig(audio=args.audio_backbone)
    if args.reuse_from:
        if world > 1:
            print("error: --reuse-from runs in one process. Fix: run it without torchrun.", file=sys.stderr)
            return 2
        from .cache_reuse import build_reusing

        try:
            s = build_reusing(args.manifest, args.out, args.reuse_from, cfg, args.limit, device, args.chunk)
        except ScaleError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print_summary(s)
        if args.json:
            Path(args.json).write_text(json.dumps(s, indent=1))
        return 0
    try:
        if world > 1:
            import torch
            import torch.distributed as dist

            from .backbones import resolve_device

            if resolve_device(device).type == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                torch.cuda.set_device(torch.device(device))
            # gloo carries only barriers; a rank may wait for the slowest one's whole share
            dist.init_process_group("gloo", timeout=timedelta(hours=12))
        try:
            s = build_cache(args.manifest, args.out, args.limit, device, args.chunk, cfg=cfg, workers=args.workers,
                            rank=rank, world=world, progress=rank == 0)
        finally:
            if world > 1:
                dist.destroy_process_group()
    except ScaleError as e:
        print(f"error{f' (rank {rank})' if world > 1 else ''}: {e}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    print_summary(s)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
