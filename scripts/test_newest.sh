#!/usr/bin/env bash
# The newest supported stacks, on Python 3.12 (run by .ci/run after the README's test command, which runs the whole
# suite on the oldest: Python 3.11, Axolotl 0.19, transformers 5.16, TRL 1.9). Each runs the tests that can differ
# between releases (`-m stack_sensitive`: all but the few tests/conftest.py lists as STACK_NEUTRAL):
#   A. Axolotl 0.21 as a user has it (it pins transformers 5.20.1, TRL 1.14.1), then this package installed with
#      `pip install -e ".[axolotl,trl,dev]"`, which must keep Axolotl 0.21; the model converted afresh on
#      transformers 5.20 (its GGUF quantizer); then the README's demo.
#   B. transformers 5.25 + TRL 1.16 layered on A (a venv that adds A's site-packages; pip also lifts
#      huggingface-hub, datasets and kernels past Axolotl 0.21's pins, as it would for a user). B skips the tests
#      that run Axolotl's own training (`axolotl_run`): Axolotl pins transformers 5.20.1, so its training is
#      tested with that, on A; B checks the newest transformers and TRL on everything else.
# Nothing is cached between runs: the venvs are built in .venvs/ (PyPI's CUDA build of torch; it runs on the CPU).
# Three pytest runs at once, one torch thread each (most of a test's time is single-threaded Python: tokenising,
# Axolotl's start-up): A's Axolotl training runs (then A's demo), A's other tests, and B's tests; each stack with
# its own model cache and datasets cache inside its venv. Each run's output is printed whole when all have ended.
# Arguments go to both stacks' pytest (e.g. -x, or -k NAME to try the script itself quickly); `--venvs` alone only
# builds the two venvs' third-party packages (.ci/run does that while the Python 3.11 tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/phases.sh
source scripts/env.sh
AXOLOTL_A=0.21.0 TRANSFORMERS_B=5.25.0 TRL_B=1.16.0
py312="${PY312:-$(pyenv root 2>/dev/null || echo /nonexistent)/versions/3.12.1/bin/python}"
[[ -x $py312 ]] || py312=$(command -v python3.12) || { echo "test_newest.sh: no Python 3.12 found" >&2; exit 1; }
a=$PWD/.venvs/py312-axolotl${AXOLOTL_A//./}
b=$PWD/.venvs/py312-transformers${TRANSFORMERS_B//./}
# run_tests VENV [PYTEST ARGS]: the stack-sensitive tests on that venv's Python. Any non-zero exit stops the script,
# pytest's 5 (no test collected) included.
run_tests() {
  local venv=$1
  shift
  (export WIT_CACHE=$venv/wit_cache HF_DATASETS_CACHE=$venv/hf_datasets PATH="$venv/bin:$PATH"
   "$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=15 "$@" tests)
}

demo_a() {  # the README's demo command on stack A (the YAML reads .wit_cache/, which `wit prepare` fills), 3 of its
  # 20 steps: that it runs on the newest Axolotl is the check; what it trains, the e2e tests check on every stack
  (export PATH="$a/bin:$PATH"; wit prepare --out .wit_cache && \
    accelerate launch --num_processes 1 --cpu -m axolotl.cli.train yaml_examples/wit_smollm2_cpu.yml --max_steps=3)
}

build_venvs() {  # the downloads (several GB), not this package: its editable install writes into the checkout
  if [[ ! -f $a/.built ]]; then  # (a venv left half-built by an interrupted run is built again)
    rm -rf "$a" "$b"
    "$py312" -m venv "$a"
    "$a/bin/python" -m pip install --quiet --upgrade pip
    "$a/bin/python" -m pip install --quiet torch==2.13.0
    "$a/bin/python" -m pip install --quiet axolotl==$AXOLOTL_A
    touch "$a/.built"
  fi
  if [[ ! -f $b/.built ]]; then
    rm -rf "$b"
    "$py312" -m venv "$b"
    own=$("$b/bin/python" -c "import site; print(site.getsitepackages()[0])")
    lower=$("$a/bin/python" -c "import site; print(site.getsitepackages()[0])")
    echo "import site; site.addsitedir('$lower')" > "$own/zz_stack_a.pth"
    "$b/bin/python" -m pip install --quiet --upgrade pip
    printf '#!%s\nimport sys\nfrom accelerate.commands.accelerate_cli import main\nsys.exit(main())\n' \
      "$b/bin/python" > "$b/bin/accelerate" && chmod +x "$b/bin/accelerate"  # `axolotl train` runs it from PATH
    "$b/bin/python" -m pip install --quiet transformers==$TRANSFORMERS_B trl==$TRL_B
    touch "$b/.built"
  fi
}

if [[ ${1:-} == --venvs ]]; then
  phase "venvs A+B"
  build_venvs
  exit
fi

phase "install 3.12"  # the venvs (unless .ci/run built them already), this package, and what each stack imports
build_venvs
"$a/bin/python" -m pip install --quiet -e ".[axolotl,trl,dev]"
"$a/bin/python" - "$AXOLOTL_A" <<'PY'
import sys
from importlib.metadata import version
assert version("axolotl") == sys.argv[1], f"installing wit_plugin changed Axolotl to {version('axolotl')}"
print("stack A:", {name: version(name) for name in ("axolotl", "transformers", "trl", "torch", "datasets", "peft")})
PY
# B's own packages must be the ones imported (not A's underneath), and this checkout's wit_plugin with them
"$b/bin/python" - "$TRANSFORMERS_B" "$TRL_B" "$PWD" <<'PY'
import sys
from importlib.metadata import version
import transformers, trl, wit_plugin
found = {"transformers": transformers.__version__, "trl": trl.__version__}
assert found == {"transformers": sys.argv[1], "trl": sys.argv[2]}, f"stack B imports {found}"
assert wit_plugin.__file__.startswith(sys.argv[3] + "/"), f"stack B imports wit_plugin from {wit_plugin.__file__}"
print("stack B:", {name: version(name) for name in ("axolotl", "transformers", "trl", "torch", "datasets")})
PY

(export WIT_CACHE=$a/wit_cache; "$a/bin/python" -c "from wit_plugin.demo.model import prepare_default_model as p; p()")
(export WIT_CACHE=$b/wit_cache; "$b/bin/python" -c "from wit_plugin.demo.model import prepare_default_model as p; p()")

phase "A and B side by side"  # the wall time of all three; each one's own time is a phase too
export OMP_NUM_THREADS=1
pytest_args=("$@")
runs_a() { timed "Axolotl runs A" run_tests "$a" -m "stack_sensitive and axolotl_run" "${pytest_args[@]}" &&
  timed "demo A" demo_a; }
rest_a() { timed "tests A" run_tests "$a" -m "stack_sensitive and not axolotl_run" "${pytest_args[@]}"; }
tests_b() { timed "tests B" run_tests "$b" -m "stack_sensitive and not axolotl_run" "${pytest_args[@]}"; }
side_by_side "stack A (Axolotl $AXOLOTL_A): Axolotl's training runs, then the demo" runs_a \
  "stack A: the other tests" rest_a "stack B (transformers $TRANSFORMERS_B, TRL $TRL_B): tests" tests_b
