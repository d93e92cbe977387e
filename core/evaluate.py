"""Evaluate SCALE checkpoints on any manifest in the shop3k format (SCALE.md section 8).

    python -m core.evaluate --checkpoint CKPT --manifest M [--split val|train|all] [--json OUT]
        [--compare NAME=CKPT ...] [--no-frozen] [--markdown OUT.md]

Per model: category retrieval (mAP@1/5/10, P@1/5/10; fused, and cross-modal text->image,
image->text, table->image, video->text, audio->text), instance matching (image<->text R@1/5/10),
linear-probe accuracy (5-fold CV) and k-means clustering (NMI, purity) on the fused embedding.
`frozen` is the no-training baseline: each backbone's own pooled features, L2-normalized,
concatenated and PCA-projected.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .backbones import set_offline
from .catalog import Catalog
from .errors import ScaleError
from .features import FeatureCache
from .metrics import clustering, concat_pca, instance_recall, l2n, linear_probe, retrieval_scores
from .modalities import INDEX, MODALITIES

FROZEN_DIM = 256  # PCA width of the frozen baseline's concatenated backbone features

CROSS_PAIRS = [("text", "image"), ("image", "text"), ("table", "image"), ("video", "text"), ("audio", "text")]


def _split_ids(cache: FeatureCache, products: list, manifest, split: str) -> tuple[list[str], list[str], list[str]]:
    products = [p for p in products if p.id in cache and (split == "all" or p.split == split)]
    if not products:
        raise ScaleError(f"{manifest}: no cached products in split {split!r}. Fix: use --split all, or check the manifest.")
    keep = [p for p in products if p.category]
    return [p.id for p in keep], [p.category for p in keep], [p.source or "" for p in keep]


def evaluate_embeddings(fused: np.ndarray, per_modality: dict[str, np.ndarray] | None, present: np.ndarray,
                        labels: list[str], ids: list[str], seed: int = 0) -> dict:
    """All metrics for one model's embeddings of one split."""
    res: dict = {}
    X = l2n(fused.astype(np.float32))
    r = retrieval_scores(X, X, labels, labels, ids, ids)
    res["retrieval"] = {"fused": {k: round(float(v), 2) for k, v in r.items()}}
    lab = np.asarray(labels)
    idarr = np.asarray(ids)
    if per_modality is not None:
        for q, g in CROSS_PAIRS:
            qm, gm = present[:, INDEX[q]], present[:, INDEX[g]]
            if qm.sum() < 2 or gm.sum() < 2:
                continue
            r = retrieval_scores(l2n(per_modality[q][qm]), l2n(per_modality[g][gm]), lab[qm], lab[gm], idarr[qm], idarr[gm])
            res["retrieval"][f"{q}->{g}"] = {k: round(float(v), 2) for k, v in r.items()}
        both = present[:, INDEX["image"]] & present[:, INDEX["text"]]
        t, im = l2n(per_modality["text"]), l2n(per_modality["image"])
        res["instance"] = {
            "image->text": {k: round(float(v), 2) for k, v in instance_recall(im, t, valid=both).items()},
            "text->image": {k: round(float(v), 2) for k, v in instance_recall(t, im, valid=both).items()},
        }
    res["classification"] = {k: (round(float(v), 2) if isinstance(v, (float, np.floating)) else v)
                             for k, v in linear_probe(X, labels, folds=5, seed=seed).items()}
    res["clustering"] = {k: (round(float(v), 2) if isinstance(v, (float, np.floating)) else v)
                         for k, v in clustering(X, labels, seed=seed).items()}
    return res


def model_embeddings(checkpoint: str | Path, cache: FeatureCache, ids: list[str], device: str = "cpu") -> Catalog:
    """The checkpoint's embeddings of `ids`: fused, per-modality pooled (pre-fusion: the aligned spaces),
    present masks and its fusion centre."""
    from .catalog import embed_products
    from .checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, device)
    model.eval()
    return embed_products(model, [dict(cache[i], id=i) for i in ids])


@torch.inference_mode()
def frozen_blocks(cache: FeatureCache, ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Backbone features with no training, one block per modality: MiniLM-L6 mean-pooled sentence vectors
    for text and table, the image's global token, the mean video frame and the mean audio patch.
    Returns (blocks m -> (N, D_m), present (N, 5)); `concat_pca` of some blocks is the frozen baseline."""
    from transformers import AutoModel

    from .backbones import text_model_dir

    bb = cache.backbones
    path = text_model_dir(bb.text)
    bert = AutoModel.from_pretrained(path, local_files_only=Path(path).is_dir()).eval()
    n = len(ids)
    blocks = {"text": np.zeros((n, 384), np.float32), "table": np.zeros((n, 384), np.float32),
              "image": np.zeros((n, 1280), np.float32), "video": np.zeros((n, 1280), np.float32),
              "audio": np.zeros((n, bb.audio_dim), np.float32)}
    present = np.zeros((n, 5), dtype=bool)
    texts: dict[str, list[tuple[int, np.ndarray]]] = {"text": [], "table": []}
    for i, pid in enumerate(ids):
        f = cache[pid]
        for m, key in (("text", "text.ids"), ("table", "table.ids")):
            if key in f:
                texts[m].append((i, f[key]))
        if "image.tokens" in f:
            blocks["image"][i] = f["image.tokens"][0]
        if "video.frames" in f:
            blocks["video"][i] = f["video.frames"].astype(np.float32).mean(0)
        if "audio.patches" in f:
            blocks["audio"][i] = f["audio.patches"].astype(np.float32).mean(0)
        present[i] = [k in f for k in ("text.ids", "table.ids", "image.tokens", "video.frames", "audio.patches")]
    for m, rows in texts.items():
        for s in range(0, len(rows), 64):
            chunk = rows[s: s + 64]
            L = max(len(x) for _, x in chunk)
            ids_t = torch.zeros(len(chunk), L, dtype=torch.long)
            mask = torch.zeros(len(chunk), L, dtype=torch.long)
            for j, (_, x) in enumerate(chunk):
                ids_t[j, : len(x)] = torch.from_numpy(x.astype(np.int64))
                mask[j, : len(x)] = 1
            h = bert(input_ids=ids_t, attention_mask=mask).last_hidden_state
            v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            for (i, _), row in zip(chunk, v.numpy()):
                blocks[m][i] = row
    return blocks, present


def run(checkpoint: str | None, manifest: str, split: str = "val", compare: dict[str, str] | None = None,
        frozen: bool = True, cache_dir: str | None = None, device: str = "cpu",
        subsets: tuple[tuple[str, ...], ...] = ()) -> dict:
    from .records import read_manifest
    from .train import ensure_cache

    products = read_manifest(manifest)
    cache = ensure_cache(manifest, cache_dir, device, products=products)
    ids, labels, sources = _split_ids(cache, products, manifest, split)
    models = {}
    if checkpoint:
        models["SCALE"] = checkpoint
    models.update(compare or {})
    out: dict = {"manifest": str(manifest), "split": split, "products": len(ids), "categories": len(set(labels)), "models": {}}
    if frozen:
        blocks, present = frozen_blocks(cache, ids)  # MiniLM runs once; each subset is only its own PCA
        for name, sub in (("frozen", MODALITIES), *((f"frozen [{'+'.join(s)}]", s) for s in subsets)):
            fused = concat_pca([blocks[m] for m in sub], dim=FROZEN_DIM)
            out["models"][name] = evaluate_embeddings(fused, None, present, labels, ids)
    for name, ck in models.items():
        cat = model_embeddings(ck, cache, ids, device)
        present = np.asarray(cat.present, dtype=bool)
        out["models"][name] = evaluate_embeddings(cat.fused, cat.pooled, present, labels, ids)
        out["models"][name]["checkpoint"] = str(ck)
        if name == "SCALE":
            for sub in subsets:  # the centred sum of those modalities, as the fused embedding
                out["models"][f"SCALE [{'+'.join(sub)}]"] = evaluate_embeddings(
                    cat.embedding("sum:" + "+".join(sub)), None, present, labels, ids)
    return out


def markdown_table(res: dict) -> str:
    """The comparison table for a checkpoint card."""
    head = ("| model | fused mAP@1 | mAP@5 | mAP@10 | P@10 | text→image mAP@10 | image→text R@1 | "
            "linear probe acc | NMI | purity |")
    lines = [head, "|" + "---|" * 10]
    for name, r in res["models"].items():
        f = r["retrieval"]["fused"]
        ti = r["retrieval"].get("text->image", {}).get("mAP@10")
        it = r.get("instance", {}).get("image->text", {}).get("R@1")
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {name} | {fmt(f['mAP@1'])} | {fmt(f['mAP@5'])} | {fmt(f['mAP@10'])} | {fmt(f['P@10'])} | "
                     f"{fmt(ti)} | {fmt(it)} | {fmt(r['classification']['acc'])} | {fmt(r['clustering']['nmi'])} | "
                     f"{fmt(r['clustering']['purity'])} |")
    return "\n".join(lines)


def print_report(res: dict) -> None:
    print(f"{res['manifest']} split={res['split']}: {res['products']} products, {res['categories']} categories\n")
    print(markdown_table(res))
    for name, r in res["models"].items():
        cross = {k: v["mAP@10"] for k, v in r["retrieval"].items() if k != "fused"}
        if cross:
            print(f"\n{name} cross-modal mAP@10: " + ", ".join(f"{k} {v:.2f}" for k, v in cross.items()))
        if "instance" in r:
            print(f"{name} instance R@1/5/10: " + "; ".join(
                f"{k} {v['R@1']:.1f}/{v['R@5']:.1f}/{v['R@10']:.1f}" for k, v in r["instance"].items()))


def main(argv: list[str] | None = None) -> int:
    set_offline()
    ap = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="val", choices=["val", "train", "all"])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--markdown", default=None, help="write the comparison table here")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=CKPT", help="more checkpoints (ablations)")
    ap.add_argument("--no-frozen", action="store_true", help="skip the frozen-backbone baseline")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--subset", action="append", default=[], metavar="M1+M2",
                    help="also score the sum of these modalities (SCALE) and their concat (frozen)")
    a = ap.parse_args(argv)
    try:
        compare = dict(c.rsplit("=", 1) for c in a.compare)  # names may hold "=", paths rarely do
    except ValueError:
        print("error: --compare takes NAME=CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        subsets = tuple(tuple(x.split("+")) for x in a.subset)
        bad = {m for sub in subsets for m in sub} - set(MODALITIES)
        if bad:
            raise ScaleError(f"--subset: unknown modalities {sorted(bad)}; use names from {', '.join(MODALITIES)}")
        res = run(a.checkpoint, a.manifest, a.split, compare, not a.no_frozen, a.cache, a.device, subsets)
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(markdown_table(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
