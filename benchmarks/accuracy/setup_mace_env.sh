#!/usr/bin/env bash
# Create the MACE virtual environment for the accuracy comparison at
# benchmarks/accuracy/.venv-mace (ignored by git through `.venv*/`).
#
# MACE (mace-torch 0.3.16) pins e3nn==0.4.4, which conflicts with e2former-calc
# (e3nn>=0.5), hence a separate environment.  torch==2.13.0 is installed first
# and on its own: on this project's machines it resolves to the local CPU wheel,
# while a bare `torch` requirement would pull a multi-GB CUDA build.
#
# Usage:  bash benchmarks/accuracy/setup_mace_env.sh      (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-mace"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install "torch==2.13.0"
"$VENV/bin/python" -m pip install -r "$HERE/requirements-mace.txt"

# Smoke check: the versions this benchmark reports.  (mace must be imported before
# e3nn: mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn 0.4.4 needs with torch>=2.6.)
OMP_NUM_THREADS=1 "$VENV/bin/python" -W ignore -c '
import mace, e3nn, torch
from mace.calculators import MACECalculator  # noqa: F401
print(f"MACE environment ready: mace-torch {mace.__version__}, e3nn {e3nn.__version__}, torch {torch.__version__}")
'
echo "python: $VENV/bin/python"
