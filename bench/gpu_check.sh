#!/usr/bin/env bash
# The GPU check as one command: installs what is missing from .gpu_wheels/ (scripts/gpu_wheels.sh), then runs every
# check of bench/gpu_check.py and prints its summary. On the device machine, carrying .gpu_wheels:
#
#   bash bench/gpu_check.sh --out "$OUT"     # writes gpu_check.log and gpu_check.json there
#
# Without CUDA it is the CPU dry run (the CUDA parts skipped, with the reason). Arguments go to bench/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
