"""Train and evaluate many (recipe, seed) jobs side by side on one GPU box, inside a wall-clock budget.

    python3 scripts/recipe_sweep.py --parts /tmp/dd/part-00 .sweep/part-01/part-01 --budget 555 --par 14
    python3 scripts/recipe_sweep.py --data /tmp/sweepdata --only ship,cw20 --seeds 2 --budget 300 --par 3

Each job is `python -m core.train` (config small-whisper, 5 epochs unless the recipe says otherwise) and then
`python -m core.eval --split dev` on its final model. Jobs run seed by seed (every recipe's seed 0 first), so
a budget that runs out still leaves each recipe a direction. A job is only started when the longest finished
job would still fit. Every finished job appends one JSON line (its recipe, seed, wall time, per-epoch dev
mAP@10, fusion fit and the whole core.eval JSON) to $OUT/results.jsonl; progress goes to $OUT/log.txt.
`python scripts/sweep_table.py $OUT/results.jsonl` turns it into the mean ± std table.
The data come from scripts/sweep_pack.py (--parts joins and unpacks them into /tmp/sweepdata).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LW = {"mlm": 1.0, "mem": 1.0, "mrp": 1.0, "mfp": 1.0, "mam": 0.1}


def _contrastive(weight: float) -> list[str]:
    return ["--set", "loss_weights=" + json.dumps({**_LW, "contrastive": weight})]


# The recipes of the first sweep (the checkpoint card's "GPU sweep"): each is core.train arguments added to
# the shipped command.
RECIPES: dict[str, list[str]] = {
    "ship": [],
    "b64e10": ["--batch-size", "64", "--lr-scale", "sqrt", "--epochs", "10"],
    "e8": ["--epochs", "8"],
    "cw5": _contrastive(5.0),
    "cw20": _contrastive(20.0),
    "deep2": ["--set", 'layers={"text": 6, "table": 1, "image": 2, "video": 2, "audio": 2}', "--set", "jct_layers=2"],
    "ht03": ["--set", "harmony_temperature=0.3"],
    "plr03": ["--pretrained-lr-mult", "0.3"],
    "b64e5": ["--batch-size", "64", "--lr-scale", "sqrt"],
}


def jobs(names: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """(recipe, seed) in run order: every recipe's first seed, then every recipe's second, ..."""
    return [(n, s) for s in seeds for n in names]


def train_command(py: str, data: Path, run: Path, recipe: str, seed: int, device: str, max_steps: int | None = None) -> list[str]:
    cmd = [py, "-m", "core.train", "--manifest", str(data / "manifest.jsonl"), "--cache", str(data / "cache"),
           "--config", "small-whisper", "--out", str(run), "--epochs", "5", "--seed", str(seed), "--device", device,
           "--workers", "0", "--save-every-min", "1000"]
    return cmd + (["--max-steps", str(max_steps)] if max_steps else []) + RECIPES[recipe]


def eval_command(py: str, data: Path, run: Path, recipe: str, device: str, out_json: Path) -> list[str]:
    return [py, "-m", "core.eval", "--manifest", str(data / "manifest.jsonl"), "--cache", str(data / "cache"),
            "--split", "dev", "--subset", "text+image", "--no-frozen", "--device", device, "--json", str(out_json),
            "--seeds", f"{recipe}={run}/final"]


def job_record(work: Path, tag: str, recipe: str, seed: int, rc: int, wall: float) -> dict:
    """What one finished (or killed) job left behind, as one JSON-able dict."""
    rec: dict = {"tag": tag, "recipe": recipe, "seed": seed, "args": RECIPES[recipe], "rc": rc, "wall": round(wall, 1)}
    log = work / f"{tag}.train.log"
    if log.is_file():
        rec["train_tail"] = log.read_text(errors="replace")[-1500 if rc else -300:]
    try:
        lines = [json.loads(x) for x in (work / tag / "metrics.jsonl").read_text().splitlines() if x.strip()]
        epochs = [x["val"] for x in lines if "val" in x and "epoch" in x]
        rec["epochs"] = [v.get("mAP@10") for v in epochs]
        rec["fusion"] = [x["fusion"] for x in lines if "fusion" in x]
        final = work / tag / "final" / "model.safetensors"
        if final.is_file():
            rec["train_s"] = round(final.stat().st_mtime - (work / f"{tag}.start").stat().st_mtime, 1)
    except (OSError, ValueError) as e:
        rec["metrics_error"] = repr(e)
    try:
        rec["eval"] = json.loads((work / f"{tag}.json").read_text())
    except (OSError, ValueError) as e:
        rec["eval_error"] = repr(e)
        ev = work / f"{tag}.eval.log"
        if ev.is_file():
            rec["eval_tail"] = ev.read_text(errors="replace")[-1500:]
    return rec


def unpack(parts: list[str], dest: Path) -> Path:
    """Join scripts/sweep_pack.py's parts (in order) and unpack them under dest; returns the data folder."""
    dest.mkdir(parents=True, exist_ok=True)
    cat = subprocess.Popen(["cat", *parts], stdout=subprocess.PIPE)
    xz = subprocess.Popen(["xz", "-d", "-T0"], stdin=cat.stdout, stdout=subprocess.PIPE)
    subprocess.run(["tar", "x", "-C", str(dest)], stdin=xz.stdout, check=True)
    if cat.wait() or xz.wait():
        raise SystemExit(f"could not unpack {parts}. Fix: pass every part of scripts/sweep_pack.py's output, in order.")
    return dest / "sweepdata"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="an unpacked bundle (manifest.jsonl, cache/, minilm/)")
    src.add_argument("--parts", nargs="+", help="scripts/sweep_pack.py's part files, in order")
    ap.add_argument("--budget", type=float, required=True, help="wall seconds for the whole sweep")
    ap.add_argument("--par", type=int, default=14, help="jobs at a time (about one per CPU core)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default="", help="comma list of recipes (default: all)")
    ap.add_argument("--first-estimate", type=float, default=300.0, help="seconds a job is assumed to take until one finishes")
    ap.add_argument("--max-steps", type=int, default=None, help="smoke test: stop each training after this many steps")
    ap.add_argument("--work", default="/tmp/sweep")
    a = ap.parse_args()
    t0 = time.time()
    names = [n for n in a.only.split(",") if n] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"error: unknown recipe(s) {unknown}. Fix: use some of {sorted(RECIPES)}.", file=sys.stderr)
        return 2
    data = Path(a.data) if a.data else unpack(a.parts, Path("/tmp"))
    out = Path(os.environ.get("OUT", "sweep-out"))
    work = Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a", buffering=1)
    resf = open(out / "results.jsonl", "a", buffering=1)

    def log(*x: object) -> None:
        line = f"[{time.time() - t0:6.1f}s] " + " ".join(map(str, x))
        print(line, file=logf)
        print(line, flush=True)

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               SCALE_TEXT_MODEL_DIR=str(data / "minilm"))
    queue = jobs(names, [int(s) for s in a.seeds.split(",")])
    deadline = t0 + a.budget
    running: dict[str, tuple[subprocess.Popen, float, str, int]] = {}
    finished: list[float] = []
    last_status = 0.0
    while queue or running:
        now = time.time()
        for tag in list(running):
            p, started, recipe, seed = running[tag]
            if p.poll() is None:
                continue
            del running[tag]
            rec = job_record(work, tag, recipe, seed, p.returncode, now - started)
            resf.write(json.dumps(rec) + "\n")
            if p.returncode == 0:
                finished.append(rec["wall"])
            fit = (rec.get("fusion") or [{}])[-1].get("mAP@10_fitted")
            log("done", tag, "rc", p.returncode, "wall", rec["wall"], "fitted dev mAP@10", fit)
        estimate = max(finished) if finished else a.first_estimate
        while queue and len(running) < a.par and deadline - now > estimate * 1.05:
            recipe, seed = queue.pop(0)
            tag = f"{recipe}-s{seed}"
            run = work / tag
            train = train_command(sys.executable, data, run, recipe, seed, a.device, a.max_steps)
            ev = eval_command(sys.executable, data, run, recipe, a.device, work / f"{tag}.json")
            sh = (f"touch {shlex.quote(str(work / (tag + '.start')))} && {shlex.join(train)} > {shlex.quote(str(work / (tag + '.train.log')))} 2>&1"
                  f" && {shlex.join(ev)} > {shlex.quote(str(work / (tag + '.eval.log')))} 2>&1")
            running[tag] = (subprocess.Popen(["bash", "-c", sh], env=env, cwd=ROOT, start_new_session=True), now, recipe, seed)
            log("start", tag, shlex.join(RECIPES[recipe]))
        if queue and not running and deadline - now <= estimate * 1.05:
            log("no time for", len(queue), "more jobs:", [f"{r}-s{s}" for r, s in queue])
            break
        if now > deadline:
            for tag, (p, started, recipe, seed) in list(running.items()):
                os.killpg(p.pid, signal.SIGKILL)
                resf.write(json.dumps(job_record(work, tag, recipe, seed, -9, now - started)) + "\n")
                log("killed at the deadline:", tag)
            break
        if now - last_status > 60:
            last_status = now
            try:
                gpu = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=10).stdout.strip() or "-"
            except (OSError, subprocess.SubprocessError):
                gpu = "-"
            log("running", len(running), "queued", len(queue), "gpu", gpu, "load", round(os.getloadavg()[0], 1))
        time.sleep(1)
    log("end:", len(finished), "finished,", len(queue), "not started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
