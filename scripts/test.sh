#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (pass e.g. `-m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
python -m pytest -q -p no:cacheprovider "$@" tests
