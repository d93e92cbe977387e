#!/usr/bin/env bash
# Make .venv with the pinned requirements. Idempotent: a second run with unchanged
# requirements.txt takes about a second. Chromium (for the browser test) is installed
# with apt where this user may do so; without it that one test is skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # PyPI's torch with its CUDA libraries fills about 9 GB of .venv; no wheel cache, so the
  # downloads do not take that much again.
  free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 10 ]; then
    echo "setup: only ${free_gb} GB free on the disk of $(pwd); .venv needs about 9 GB." >&2
  fi
  if ! { .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip \
         && .venv/bin/python -m pip install -q --no-cache-dir -r requirements.txt; }; then
    echo "setup: pip could not install requirements.txt into .venv ($(df -Ph . | awk 'NR==2 {print $4}') free now)." \
         "Free disk space if pip said 'No space left on device', then rerun: bash scripts/setup.sh" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: chromium could not be installed; the browser test will be skipped." >&2
  else
    echo "setup: no chromium and no root apt; the browser test will be skipped." >&2
  fi
fi
