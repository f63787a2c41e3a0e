#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine (CPU). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pin torch first: an unpinned torch (asked for by a dependency) pulls several GB of CUDA wheels.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[axolotl,trl,tune,dev]"
