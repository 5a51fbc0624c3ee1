#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, GUI tests included (under Xvfb without a display).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MX2_DEFECTS_CACHE=${MX2_DEFECTS_CACHE:-$PWD/.cache/mx2-defects}
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
else
  exec .venv/bin/python -m pytest "$@"
fi
