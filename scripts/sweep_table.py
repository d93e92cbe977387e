"""The mean ± std (population, over seeds) table of a recipe sweep, and which recipes pass the adoption rule against a baseline.

    python scripts/sweep_table.py sweep-out/results.jsonl [--baseline ship] [--markdown table.md]

Reads scripts/recipe_sweep.py's results (one line per job, with its core.eval JSON). The rule is the one the
checkpoint card states before every comparison: a recipe passes when its mean fitted fused mAP@10 is higher
than the baseline's and higher in at least 2 of the seeds both have, every alignment row's mean is within
1 point of the baseline's (or higher) and every mismatch AUC's within 0.01. The cross-fitted fusion rows
(fusion weights fitted on half of dev, scored on the other half) are shown beside the in-sample ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.eval.evaluate import seed_summary  # noqa: E402

ROWS = ["fused mAP@10", "[text] mAP@10", "[text+image] mAP@10", "[image] mAP@10", "[table] mAP@10",
        "fused - best single", "fused - best pair", "fused - best single (cross-fitted)",
        "fused - best pair (cross-fitted)", "text->image mAP@10", "table->image mAP@10", "video->text mAP@10",
        "audio->text mAP@10", "image->text R@1", "mismatch AUC table", "mismatch AUC image", "mismatch AUC video",
        "mismatch AUC audio", "MLM content-word top-1"]
ALIGNMENT = ["text->image mAP@10", "table->image mAP@10", "video->text mAP@10", "audio->text mAP@10", "image->text R@1"]
AUCS = [r for r in ROWS if r.startswith("mismatch AUC")]


def load(path: str | Path) -> dict[str, dict[int, dict[str, float]]]:
    """recipe -> seed -> row -> value, from the jobs that finished and were evaluated. The rows are core.eval's
    seed-summary rows (core.eval.evaluate.seed_summary over the recipe's jobs), so they read as `--seeds` does."""
    models: dict[str, dict[int, dict]] = defaultdict(dict)
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        name = rec["recipe"]
        if rec.get("rc") != 0 or not (rec.get("eval") or {}).get("models"):
            continue
        models[name][rec["seed"]] = rec["eval"]["models"]
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name, by_seed in models.items():
        seeds = sorted(by_seed)
        rows = {key.replace(f"{name} #0", f"{name} #{i}", 1): r
                for i, s in enumerate(seeds) for key, r in by_seed[s].items()}
        summary = seed_summary(rows, name, len(seeds))
        out[name] = {s: {row: summary[row]["runs"][i] for row in ROWS if row in summary} for i, s in enumerate(seeds)}
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std over seeds, as core.eval's --seeds reports them."""
    mu = sum(values) / len(values)
    return mu, (sum((v - mu) ** 2 for v in values) / len(values)) ** 0.5


def verdict(runs: dict[int, dict[str, float]], base: dict[int, dict[str, float]]) -> tuple[bool, list[str]]:
    """(passes, reasons it fails) of one recipe against the baseline, by the rule above."""
    why = []
    common = sorted(set(runs) & set(base))
    if not common:
        return False, ["no seed in common with the baseline"]

    def m(rs: dict[int, dict[str, float]], row: str) -> float:
        return mean_std([rs[s][row] for s in common])[0]

    wins = sum(runs[s]["fused mAP@10"] > base[s]["fused mAP@10"] for s in common)
    if m(runs, "fused mAP@10") <= m(base, "fused mAP@10"):
        why.append(f"fused mAP@10 {m(runs, 'fused mAP@10'):.2f} not above {m(base, 'fused mAP@10'):.2f}")
    if wins < min(2, len(common)):
        why.append(f"fused higher in {wins} of {len(common)} seeds")
    for row, tol in [(r, 1.0) for r in ALIGNMENT] + [(r, 0.01) for r in AUCS]:
        if m(runs, row) < m(base, row) - tol:
            why.append(f"{row} {m(runs, row):.3g} < {m(base, row):.3g} - {tol:g}")
    return not why, why


def table(results: dict[str, dict[int, dict[str, float]]], baseline: str) -> str:
    names = [baseline] + [n for n in results if n != baseline] if baseline in results else list(results)
    lines = ["| dev, mean ± std over seeds | " + " | ".join(f"{n} ({len(results[n])})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for row in ROWS:
        cells = []
        for n in names:
            vals = [results[n][s][row] for s in sorted(results[n]) if row in results[n][s]]
            if not vals:
                cells.append("")
                continue
            mu, sd = mean_std(vals)
            cells.append(f"{mu:.3f} ± {sd:.3f}" if row in AUCS else f"{mu:.2f} ± {sd:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if baseline in results:
        cells = []
        for n in names:
            ok, why = (True, []) if n == baseline else verdict(results[n], results[baseline])
            cells.append("baseline" if n == baseline else ("passes" if ok else "fails: " + "; ".join(why)))
        lines.append("| rule against " + baseline + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("--baseline", default="ship")
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()
    try:
        results = load(a.results)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {a.results}: {e}. Fix: pass the results.jsonl that scripts/recipe_sweep.py wrote.", file=sys.stderr)
        return 2
    text = table(results, a.baseline)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
