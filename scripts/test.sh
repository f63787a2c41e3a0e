#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite (pass e.g. `-m "not slow"` for the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/phases.sh
py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
phase "install $py"
bash scripts/setup.sh
source scripts/env.sh
phase "tests $py"
python -m pytest -q -p no:cacheprovider "$@" tests
