#!/usr/bin/env bash
# The device check: devicecheck/gpu_check.py (its plan: devicecheck/gpu_check_plan.py), run with
# $PYTHON (default python, else python3).  OUT, GPU_CHECK_DEVICE and DALI_PACK are read there.
#
#   PYTHONPATH=src bash devicecheck/gpu_check.sh                       # on a GPU machine, <= 8 minutes
#   DALI_PACK=.dali_pack PYTHONPATH=src bash devicecheck/gpu_check.sh  # DALI from its carried parts
#   GPU_CHECK_DEVICE=cpu PYTHONPATH=src bash devicecheck/gpu_check.sh  # the same steps shrunk, on a CPU
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
exec "$PY" devicecheck/gpu_check.py "$@"
