"""Pack what a recipe sweep needs for a lent GPU box into parts that each fit one device call.

    python scripts/sweep_pack.py --manifest ../shared/data/shop3k/manifest.jsonl --cache cache/shop3k-whisper \
        [--out .sweep] [--part-mb 59.6]

The box has no shop3k, no backbone packages and no network, and one call carries at most 64 MiB of the
working tree. The bundle holds the train split only (dev is carved from it; val stays behind): the manifest
lines, the cached features of those products (the cache format unchanged, so core.train and core.eval read
it as they are) and MiniLM-L6's weights in fp16 with its tokenizer (read through $SCALE_TEXT_MODEL_DIR).
It is one tar.xz split into .sweep/part-00/, .sweep/part-01/, ...: carry one folder per call, copy each
part to the box's /tmp, and join them in the last call (scripts/recipe_sweep.py --parts does that).
`.sweep/` is git-ignored: it holds catalog data and must never be committed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.backbones import text_model_dir  # noqa: E402
from core.errors import ScaleError  # noqa: E402
from core.data.splits import split_of  # noqa: E402

TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def train_bundle(manifest: Path, cache: Path, dest: Path) -> int:
    """Write dest/{manifest.jsonl, cache/, minilm/} for the train split; returns the number of products."""
    from safetensors.numpy import load_file, save_file

    idx = json.loads((cache / "index.json").read_text())
    keep = {k: v for k, v in idx["products"].items() if split_of(k, v["split"]) in ("train", "dev")}
    (dest / "cache" / "shards").mkdir(parents=True)
    for shard in sorted({v["shard"] for v in keep.values()}):
        arrays = load_file(str(cache / "shards" / shard))
        save_file({k: a for k, a in arrays.items() if k.split("/")[0] in keep}, str(dest / "cache" / "shards" / shard))
    (dest / "cache" / "index.json").write_text(json.dumps({**idx, "products": keep, "failures": {}}))
    with open(manifest, encoding="utf-8", errors="surrogateescape") as f, \
            open(dest / "manifest.jsonl", "w", encoding="utf-8", errors="surrogateescape") as g:
        for line in f:
            try:
                pid = json.loads(line).get("id")
            except (json.JSONDecodeError, AttributeError):
                continue
            if pid in keep:
                g.write(line)
    text = Path(text_model_dir())
    (dest / "minilm").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(text / name, dest / "minilm" / name)
    from safetensors.torch import load_file as load_pt, save_file as save_pt

    sd = load_pt(str(text / "model.safetensors"))
    save_pt({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
            str(dest / "minilm" / "model.safetensors"))
    return len(keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--out", default=".sweep")
    ap.add_argument("--part-mb", type=float, default=59.6, help="size of each part (MB); one call carries 64 MiB in all")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists():
        print(f"error: {out} exists. Fix: remove it or pass another --out.", file=sys.stderr)
        return 2
    if not (Path(a.cache) / "index.json").is_file():
        print(f"error: {a.cache}: no index.json. Fix: build the cache with python -m core.data.features build.", file=sys.stderr)
        return 2
    if a.part_mb <= 0:
        print(f"error: --part-mb {a.part_mb}: use a size above 0 (one device call carries 64 MiB).", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        try:
            n = train_bundle(Path(a.manifest), Path(a.cache), Path(tmp) / "sweepdata")
        except (ScaleError, OSError) as e:  # no MiniLM package, an unreadable manifest or shard
            print(f"error: {e}. Fix: install the requirements and pass a readable --manifest and --cache.", file=sys.stderr)
            return 2
        out.mkdir(parents=True)
        tar = out / "sweepdata.tar.xz"
        with open(tar, "wb") as f:
            tar_p = subprocess.Popen(["tar", "cf", "-", "-C", tmp, "sweepdata"], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-6", "-T0"], stdin=tar_p.stdout, stdout=f, check=True)
            if tar_p.wait():
                raise SystemExit("tar failed")
    size, step = tar.stat().st_size, int(a.part_mb * 1e6)
    with open(tar, "rb") as f:
        for i in range((size + step - 1) // step):
            (out / f"part-{i:02d}").mkdir()
            (out / f"part-{i:02d}" / f"part-{i:02d}").write_bytes(f.read(step))
    tar.unlink()
    print(json.dumps({"products": n, "bytes": size, "parts": sorted(p.name for p in out.glob("part-*"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
