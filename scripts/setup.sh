#!/usr/bin/env bash
# Set up everything napari-mx2-defects needs on a fresh Debian/Ubuntu machine:
# system libraries for a headless OpenGL context (Xvfb + Mesa), a virtual
# environment in .venv, and the package with its test extras.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# 1. System packages for napari's Qt/OpenGL under a virtual display (Debian names).
SYS_PKGS="xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libdbus-1-3
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xkb1 libfontconfig1 libxrender1 libxi6"
missing=""
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $SYS_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
fi
if [ -n "$missing" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "[setup] installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] warning: cannot install$missing (no root); GUI tests and the demo need them" >&2
  fi
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip wheel 2>&1 | (grep -v "^WARNING: Location" || true)

# 3. The package. torch and torchvision are resolved together from the registry;
#    constraints.txt forbids the machine's local torch 2.13.0+cpu wheel, which
#    with the registry's CUDA torchvision fails at import (torchvision::nms).
echo "[setup] installing napari-mx2-defects and its dependencies (first time: several minutes, ~5 GB)"
# (this machine kind's pip.conf names local indexes that lack most projects: drop those warnings)
"$VENV/bin/python" -m pip install -q -c constraints.txt ".[testing]" 2>&1 | (grep -v "^WARNING: Location" || true)

# 4. Check the pairing that bites on this kind of machine.
"$VENV/bin/python" - <<'PY'
import torch, torchvision
from torchvision.ops import nms
boxes = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]])
assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
print(f"[setup] torch {torch.__version__} + torchvision {torchvision.__version__}: ok "
      f"(CUDA available: {torch.cuda.is_available()})")
PY
