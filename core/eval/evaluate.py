"""Evaluate SCALE checkpoints on any manifest in the shop3k format (SCALE.md section 8).

    python -m core.eval --checkpoint CKPT --manifest M [--split val|train|all] [--json OUT]
        [--compare NAME=CKPT ...] [--no-frozen] [--markdown OUT.md]

Per model: category retrieval, toolkit-exact as the M5Product toolkit's evaluate_unit_v2.py (mAP@1/5/10,
P@1/5/10; fused, each modality alone, the --subset sums, and cross-modal text->image, image->text,
table->image, video->text, audio->text; the older skip-singletons variant as a labelled second row),
instance matching (image<->text R@1/5/10), linear-probe accuracy (nested 5-fold CV) and k-means
clustering (NMI, purity) on the fused embedding; for checkpoints also the mismatch AUC of S[text, m]
(core.eval.mismatch), the collapse check (mean cosine of each modality's pooled feature to its mean), the
fusion check (fused minus the best single modality, the best pair and the frozen baseline, with paired
bootstrap intervals over queries, and cross-fitted: weights fitted on half of the split, scored on the other
half, core.train.fusion.cross_fit) and the fusion weights. `frozen` is the no-training baseline: each
backbone's own pooled features, L2-normalized, concatenated and PCA-projected. `--seeds` summarizes one recipe's seeds as mean ± std.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.backbones import set_offline
from ..model.catalog import Catalog
from ..errors import ScaleError, write_problem
from ..data.features import FeatureCache
from .metrics import (clustering, collapse_score, concat_pca, instance_recall, l2n, linear_probe, paired_bootstrap,
                      query_ap, retrieval_scores)
from .mismatch import mismatch_auc
from ..data.masking import content_ids
from .mlm_eval import masked_word_accuracy
from ..modalities import FEATURE_KEY, INDEX, MODALITIES, TOKEN_MODALITIES, present_in
from ..data.speech import check_cache_audio
from ..data.splits import SPLITS, in_split
from ..train.fusion import cross_fit

FROZEN_DIM = 256  # PCA width of the frozen baseline's concatenated backbone features

CROSS_PAIRS = [("text", "image"), ("image", "text"), ("table", "image"), ("video", "text"), ("audio", "text")]


def _split_ids(cache: FeatureCache, products: list, manifest, split: str) -> tuple[list[str], list[str], list[str]]:
    products = [p for p in products if p.id in cache and in_split(p.id, p.split, split)]
    if not products:
        raise ScaleError(f"{manifest}: no cached products in split {split!r}. Fix: use --split all, or check the manifest.")
    keep = [p for p in products if p.category]
    return [p.id for p in keep], [p.category for p in keep], [p.source or "" for p in keep]


def _r2(d: dict) -> dict:
    return {k: (round(float(v), 2) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


def evaluate_embeddings(fused: np.ndarray, per_modality: dict[str, np.ndarray] | None, present: np.ndarray,
                        labels: list[str], ids: list[str], seed: int = 0, full: bool = True) -> dict:
    """All metrics for one model's embeddings of one split. Retrieval is toolkit-exact ("fused");
    "fused (skip singletons)" is the older variant that skips queries without another positive and
    leaves the query out of its positives, kept as a labelled second row. full=False: retrieval only
    (the per-modality and subset rows)."""
    res: dict = {}
    X = l2n(fused.astype(np.float32))
    res["retrieval"] = {"fused": _r2(retrieval_scores(X, X, labels, labels, ids, ids)),
                        "fused (skip singletons)": _r2(retrieval_scores(X, X, labels, labels, ids, ids, protocol="skip"))}
    if not full:
        return res
    lab = np.asarray(labels)
    idarr = np.asarray(ids)
    if per_modality is not None:
        for q, g in CROSS_PAIRS:
            qm, gm = present[:, INDEX[q]], present[:, INDEX[g]]
            if qm.sum() < 2 or gm.sum() < 2:
                continue
            r = retrieval_scores(l2n(per_modality[q][qm]), l2n(per_modality[g][gm]), lab[qm], lab[gm], idarr[qm], idarr[gm])
            res["retrieval"][f"{q}->{g}"] = _r2(r)
        both = present[:, INDEX["image"]] & present[:, INDEX["text"]]
        t, im = l2n(per_modality["text"]), l2n(per_modality["image"])
        res["instance"] = {
            "image->text": _r2(instance_recall(im, t, valid=both)),
            "text->image": _r2(instance_recall(t, im, valid=both)),
        }
        res["collapse"] = {m: round(collapse_score(per_modality[m][present[:, i]]), 4)
                           for i, m in enumerate(MODALITIES) if present[:, i].sum() >= 2}
    res["classification"] = _r2(linear_probe(X, labels, folds=5, seed=seed))
    res["clustering"] = _r2(clustering(X, labels, seed=seed))
    return res


def model_embeddings(model, items: list[dict]) -> Catalog:
    """A model's embeddings of feature dicts: fused, per-modality pooled (pre-fusion: the aligned
    spaces), present masks, its fusion centre and weights."""
    from ..model.catalog import embed_products

    return embed_products(model, items)


@torch.inference_mode()
def frozen_blocks(cache: FeatureCache, ids: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Backbone features with no training, one block per modality: MiniLM-L6 mean-pooled sentence vectors
    for text and table, the image's global token, the mean video frame and the mean audio patch.
    Returns (blocks m -> (N, D_m), present (N, 5)); `concat_pca` of some blocks is the frozen baseline."""
    from transformers import AutoModel

    from ..data.backbones import text_model_dir

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
        for m, key in ((m, FEATURE_KEY[m]) for m in TOKEN_MODALITIES):
            if key in f:
                texts[m].append((i, f[key]))
        if "image.tokens" in f:
            blocks["image"][i] = f["image.tokens"][0]
        if "video.frames" in f:
            blocks["video"][i] = f["video.frames"].astype(np.float32).mean(0)
        if "audio.patches" in f:
            blocks["audio"][i] = f["audio.patches"].astype(np.float32).mean(0)
        present[i] = present_in(f)
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


def fusion_check(fused: np.ndarray, embed, present: np.ndarray, labels: list[str], ids: list[str],
                 baseline: np.ndarray | None = None) -> dict:
    """Is the fused embedding above its parts on this split? mAP@10 (toolkit) of each modality alone
    and of every two-modality sum, then fused minus the best single, the best pair and (when given)
    the frozen baseline's fused embedding, each with a 95% paired bootstrap interval over queries."""
    def ap(X: np.ndarray) -> np.ndarray:
        X = l2n(np.asarray(X, np.float32))
        return query_ap(X, X, labels, labels, ids, ids)

    usable = [m for i, m in enumerate(MODALITIES) if present[:, i].sum() >= 2]
    singles = {m: ap(embed((m,))) for m in usable}
    pairs = {f"{a}+{b}": ap(embed((a, b))) for j, a in enumerate(usable) for b in usable[j + 1:]}
    fused_ap = ap(fused)
    out: dict = {"singles": {k: round(float(v.mean()), 2) for k, v in singles.items()},
                 "pairs": {k: round(float(v.mean()), 2) for k, v in pairs.items()}}
    for label, group in (("best single", singles), ("best pair", pairs)):
        if group:
            best = max(group, key=lambda k: group[k].mean())
            out[f"fused - {label}"] = {"vs": best, **_r2(paired_bootstrap(fused_ap, group[best]))}
    if baseline is not None:
        out["fused - frozen"] = {"vs": "frozen", **_r2(paired_bootstrap(fused_ap, ap(baseline)))}
    return out


def modality_rows(name: str, embed, present: np.ndarray, labels: list[str], ids: list[str],
                  subsets: tuple[tuple[str, ...], ...]) -> dict:
    """Retrieval rows "<name> [m]" for each modality alone (over the whole split: a product without m
    has a zero row, as in a subset sum) and "<name> [m1+m2]" for each subset; embed(mods) -> (N, D)."""
    rows = {}
    for sub in ((m,) for m in MODALITIES):
        i = INDEX[sub[0]]
        if present[:, i].sum() < 2:
            continue
        rows[f"{name} [{sub[0]}]"] = evaluate_embeddings(embed(sub), None, present, labels, ids, full=False)
        rows[f"{name} [{sub[0]}]"]["coverage"] = round(float(present[:, i].mean()), 4)
    for sub in subsets:
        rows[f"{name} [{'+'.join(sub)}]"] = evaluate_embeddings(embed(sub), None, present, labels, ids, full=False)
    return rows


def run(checkpoint: str | None, manifest: str, split: str = "val", compare: dict[str, str] | None = None,
        frozen: bool = True, cache_dir: str | None = None, device: str = "cpu",
        subsets: tuple[tuple[str, ...], ...] = (), seeds: dict[str, list[str]] | None = None,
        mismatch: bool = True) -> dict:
    """Evaluate the frozen baseline and checkpoints on one split. `seeds`: name -> checkpoints of the
    same recipe trained with different seeds; each is evaluated as "<name> #k" and summarized under
    "seeds" as mean and std."""
    from ..data.cache import ensure_cache
    from ..data.records import read_manifest

    products = read_manifest(manifest)
    cache = ensure_cache(manifest, cache_dir, device, products=products)
    ids, labels, sources = _split_ids(cache, products, manifest, split)
    models = {}
    if checkpoint:
        models["SCALE"] = checkpoint
    models.update(compare or {})
    for name, cks in (seeds or {}).items():
        models.update({f"{name} #{k}": ck for k, ck in enumerate(cks)})
    out: dict = {"manifest": str(manifest), "split": split, "products": len(ids), "categories": len(set(labels)),
                 "protocol": "toolkit (evaluate_unit_v2.py: every query counted, the query in its own positives)",
                 "models": {}}
    frozen_fused = None
    if frozen:
        blocks, present = frozen_blocks(cache, ids)  # MiniLM runs once; each row is only its own PCA
        frozen_fused = concat_pca([blocks[m] for m in MODALITIES], dim=FROZEN_DIM)
        out["models"]["frozen"] = evaluate_embeddings(frozen_fused, None, present, labels, ids)
        out["models"].update(modality_rows("frozen", lambda sub: concat_pca([blocks[m] for m in sub], dim=FROZEN_DIM),
                                           present, labels, ids, subsets))
    items = [dict(cache[i], id=i) for i in ids]
    mlm_content, mlm_reference = None, []
    if models:  # masked content words on this split; the baseline's most frequent word comes from train
        from ..data.backbones import load_tokenizer

        mlm_content = content_ids(load_tokenizer(cache.backbones.text).get_vocab())
        train_ids = [p.id for p in products if p.id in cache and in_split(p.id, p.split, "train")][:2000]
        mlm_reference = [{"text.ids": f["text.ids"]} for f in map(cache.__getitem__, train_ids) if "text.ids" in f]
    for name, ck in models.items():
        from ..model.checkpoint import load_checkpoint

        model = load_checkpoint(ck, device).eval()
        check_cache_audio(cache.root, cache.backbones, model.cfg, f"the checkpoint {ck}")
        cat = model_embeddings(model, items)
        present = np.asarray(cat.present, dtype=bool)
        row = evaluate_embeddings(cat.fused, cat.pooled, present, labels, ids)
        row["checkpoint"] = str(ck)
        row["fusion_weights"] = {m: round(float(w), 3) for m, w in zip(MODALITIES, model.fusion_weights.tolist())}
        if mismatch:
            row["mismatch_auc"] = mismatch_auc(model, items, labels)
        if mlm_content is not None:
            row["mlm_content_words"] = masked_word_accuracy(model, items, mlm_content, reference=mlm_reference)
        out["models"][name] = row
        if name == "SCALE" or "#" in name:  # one row per modality alone and per subset (centred weighted sums)
            embed = lambda sub: cat.embedding("sum:" + "+".join(sub))  # noqa: E731
            row["fusion_check"] = fusion_check(cat.fused, embed, present, labels, ids, frozen_fused)
            cross = cross_fit(cat.pooled, present, cat.center, labels, ids)
            if cross is not None:
                row["fusion_check"]["cross-fitted"] = cross
            out["models"].update(modality_rows(name, embed, present, labels, ids, subsets))
    if seeds:
        out["seeds"] = {name: seed_summary(out["models"], name, len(cks)) for name, cks in seeds.items()}
    return out


HEADLINE = [("fused mAP@10", ("retrieval", "fused", "mAP@10")), ("fused mAP@1", ("retrieval", "fused", "mAP@1")),
            ("fused P@10", ("retrieval", "fused", "P@10")),
            ("fused mAP@10 (skip singletons)", ("retrieval", "fused (skip singletons)", "mAP@10")),
            ("text->image mAP@10", ("retrieval", "text->image", "mAP@10")),
            ("table->image mAP@10", ("retrieval", "table->image", "mAP@10")),
            ("audio->text mAP@10", ("retrieval", "audio->text", "mAP@10")),
            ("video->text mAP@10", ("retrieval", "video->text", "mAP@10")),
            ("image->text R@1", ("instance", "image->text", "R@1")),
            ("probe acc", ("classification", "acc")), ("NMI", ("clustering", "nmi")),
            *((f"mismatch AUC {m}", ("mismatch_auc", m, "auc")) for m in ("table", "image", "video", "audio")),
            *((f"collapse {m}", ("collapse", m)) for m in MODALITIES),
            ("MLM content-word top-1", ("mlm_content_words", "top1")),
            *((f"fused - {k}", ("fusion_check", f"fused - {k}", "diff")) for k in ("best single", "best pair", "frozen")),
            *((f"fused - {k} (cross-fitted)", ("fusion_check", "cross-fitted", f"fused - {k}", "diff"))
              for k in ("best single", "best pair"))]


def _dig(d: dict, path: tuple):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def seed_summary(rows: dict, name: str, n: int) -> dict:
    """Mean and std (population, over the seeds) of the headline metrics and the per-modality /
    subset rows of the checkpoints "<name> #0".."<name> #n-1"."""
    out: dict = {}
    runs = [rows[f"{name} #{k}"] for k in range(n)]
    for label, path in HEADLINE:
        vals = [v for v in (_dig(r, path) for r in runs) if v is not None]
        if len(vals) == n:
            out[label] = {"mean": round(float(np.mean(vals)), 3), "std": round(float(np.std(vals)), 3), "runs": vals}
    suffixes = {k[len(f"{name} #0"):] for k in rows if k.startswith(f"{name} #0 [")}
    for suf in sorted(suffixes):
        vals = [_dig(rows.get(f"{name} #{k}{suf}", {}), ("retrieval", "fused", "mAP@10")) for k in range(n)]
        if all(v is not None for v in vals):
            out[f"{suf.strip()} mAP@10"] = {"mean": round(float(np.mean(vals)), 3), "std": round(float(np.std(vals)), 3),
                                           "runs": vals}
    return out


def markdown_table(res: dict) -> str:
    """The comparison table for a checkpoint card (toolkit-exact retrieval; the per-modality and subset
    rows have retrieval only)."""
    head = ("| model | fused mAP@1 | mAP@5 | mAP@10 | P@10 | mAP@10 (skip singletons) | text→image mAP@10 | "
            "image→text R@1 | linear probe acc (nested) | NMI | purity |")
    lines = [head, "|" + "---|" * 11]
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    for name, r in res["models"].items():
        f = r["retrieval"]["fused"]
        cells = [f.get("mAP@1"), f.get("mAP@5"), f.get("mAP@10"), f.get("P@10"),
                 r["retrieval"]["fused (skip singletons)"].get("mAP@10"),
                 _dig(r, ("retrieval", "text->image", "mAP@10")), _dig(r, ("instance", "image->text", "R@1")),
                 _dig(r, ("classification", "acc")), _dig(r, ("clustering", "nmi")), _dig(r, ("clustering", "purity"))]
        lines.append(f"| {name} | " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def seeds_table(res: dict) -> str:
    """Mean ± std over seeds of each headline metric, one column per seeded recipe."""
    groups = res.get("seeds") or {}
    if not groups:
        return ""
    names = list(groups)
    labels = list(dict.fromkeys(k for g in groups.values() for k in g))
    lines = ["| metric | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for lab in labels:
        cells = []
        for n in names:
            v = groups[n].get(lab)
            cells.append("" if v is None else f"{v['mean']:.2f} ± {v['std']:.2f}")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_report(res: dict) -> None:
    print(f"{res['manifest']} split={res['split']}: {res['products']} products, {res['categories']} categories")
    print(f"retrieval protocol: {res.get('protocol', 'toolkit')}\n")
    print(markdown_table(res))
    for name, r in res["models"].items():
        cross = {k: v["mAP@10"] for k, v in r["retrieval"].items() if not k.startswith("fused")}
        if cross:
            print(f"\n{name} cross-modal mAP@10: " + ", ".join(f"{k} {v:.2f}" for k, v in cross.items()))
        if "instance" in r:
            print(f"{name} instance R@1/5/10: " + "; ".join(
                f"{k} {v['R@1']:.1f}/{v['R@5']:.1f}/{v['R@10']:.1f}" for k, v in r["instance"].items()))
        if "mismatch_auc" in r:
            print(f"{name} mismatch AUC of S[text, m]: " + ", ".join(
                f"{m} {v['auc']:.3f} (n={v['n']})" for m, v in r["mismatch_auc"].items()))
        if "collapse" in r:
            print(f"{name} collapse (cosine to the modality mean): " + ", ".join(
                f"{m} {v:.3f}" for m, v in r["collapse"].items()))
        if "mlm_content_words" in r:
            w = r["mlm_content_words"]
            print(f"{name} masked content words: top-1 {w['top1']:.1f}%, top-5 {w['top5']:.1f}% "
                  f"(most-frequent-word baseline {w['baseline_top1']:.1f}%, {w['masked']} masked)")
        for k, v in r.get("fusion_check", {}).items():
            if k.startswith("fused - "):
                print(f"{name} {k} ({v['vs']}): {v['diff']:+.2f} mAP@10, 95% interval [{v['lo']:+.2f}, {v['hi']:+.2f}] "
                      f"over {v['n']} queries" + (" (cannot tell)" if v["lo"] <= 0 <= v["hi"] else ""))
        cf = r.get("fusion_check", {}).get("cross-fitted")
        if cf:
            print(f"{name} cross-fitted fusion (weights fitted on one half, scored on the other, {cf['splits']} times): "
                  f"fused {cf['fused']:.2f}" + "".join(f", {k} ({cf[k]['vs']}) {cf[k]['diff']:+.2f}"
                                                        for k in ("fused - best single", "fused - best pair") if k in cf))
        if "fusion_weights" in r:
            print(f"{name} fusion weights: " + ", ".join(f"{m} {v:g}" for m, v in r["fusion_weights"].items()))
    if res.get("seeds"):
        print("\nmean ± std over seeds:\n" + seeds_table(res))


def main(argv: list[str] | None = None) -> int:
    set_offline()
    ap = argparse.ArgumentParser(prog="python -m core.eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="val", choices=list(SPLITS),
                    help="val is reported; dev (10%% of train, never trained on) is for choosing recipes")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--markdown", default=None, help="write the comparison table here")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=CKPT", help="more checkpoints (ablations)")
    ap.add_argument("--seeds", action="append", default=[], metavar="NAME=CKPT1,CKPT2,...",
                    help="one recipe trained with several seeds: each is evaluated, then summarized as mean ± std")
    ap.add_argument("--no-mismatch", action="store_true", help="skip the mismatch AUC (swapped-modality copies)")
    ap.add_argument("--no-frozen", action="store_true", help="skip the frozen-backbone baseline")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--subset", action="append", default=[], metavar="M1+M2",
                    help="also score the sum of these modalities (SCALE) and their concat (frozen)")
    a = ap.parse_args(argv)
    try:
        compare = dict(c.rsplit("=", 1) for c in a.compare)  # names may hold "=", paths rarely do
        seeds = {n: [c for c in cks.split(",") if c] for n, cks in (x.rsplit("=", 1) for x in a.seeds)}
    except ValueError:
        print("error: --compare takes NAME=CHECKPOINT_DIR and --seeds NAME=DIR1,DIR2,...", file=sys.stderr)
        return 2
    for flag, path in (("--json", a.json), ("--markdown", a.markdown)):  # before minutes of evaluation, not after
        if path and not Path(path).resolve().parent.is_dir():
            print(f"error: {flag} {path}: the folder {Path(path).resolve().parent} does not exist. Fix: create it, "
                  "or write the file elsewhere.", file=sys.stderr)
            return 2
    try:
        subsets = tuple(tuple(x.split("+")) for x in a.subset)
        bad = {m for sub in subsets for m in sub} - set(MODALITIES)
        if bad:
            raise ScaleError(f"--subset: unknown modalities {sorted(bad)}; use names from {', '.join(MODALITIES)}")
        res = run(a.checkpoint, a.manifest, a.split, compare, not a.no_frozen, a.cache, a.device, subsets,
                  seeds, not a.no_mismatch)
    except ScaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(res)
    outputs = [(a.json, lambda: json.dumps(res, indent=1)),
               (a.markdown, lambda: markdown_table(res) + "\n" + ("\n" + seeds_table(res) + "\n" if res.get("seeds") else ""))]
    for path, text in outputs:
        if not path:
            continue
        try:
            Path(path).write_text(text())
        except OSError as e:  # the report above is whole; only this file is missing
            print(f"error: {write_problem(path, e)}. The report above is complete. Fix: free disk space or pick "
                  "another path, then run it again.", file=sys.stderr)
            return 2
    return 0
