#!/usr/bin/env bash
# Main job: set up (if needed) and run the end-to-end demo; results land in ${1:-demo_out}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${1:-demo_out}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  OUT="${OUT}_$(date +%Y%m%d-%H%M%S)"
  echo "[demo] the output folder exists; writing to $OUT instead"
fi
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/mx2-defects demo --out "$OUT"
else
  exec .venv/bin/mx2-defects demo --out "$OUT"
fi
