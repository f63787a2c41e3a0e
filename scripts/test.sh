#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite: the quick tests and the slow end-to-end ones (`-m slow`)
# side by side, one torch thread each (most of their time is single-threaded Python and subprocess start-up), each
# one's output printed whole when both have ended. Arguments go to one pytest run instead (e.g. `-m "not slow"` for
# the quick part, `-x`, `-k NAME`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/phases.sh
py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
phase "install $py"
bash scripts/setup.sh
source scripts/env.sh
python -c "from wit_plugin.demo.model import prepare_default_model as p; p()"  # once, before two runs read it
if (($#)); then
  phase "tests $py"
  python -m pytest -q -p no:cacheprovider "$@" tests
  exit
fi
phase "tests $py, quick and slow side by side"
export OMP_NUM_THREADS=1
quick() { timed "quick tests $py" python -m pytest -q -p no:cacheprovider --durations=15 -m "not slow" tests; }
slow() { timed "slow tests $py" python -m pytest -q -p no:cacheprovider --durations=15 -m slow tests; }
side_by_side "quick tests" quick "slow tests" slow
