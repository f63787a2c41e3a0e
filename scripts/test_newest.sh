#!/usr/bin/env bash
# The newest supported stacks, on Python 3.12 (run by .ci/run after the README's test command, which tests the
# oldest: Python 3.11, Axolotl 0.19, transformers 5.16, TRL 1.9):
#   A. Axolotl 0.21 as a user has it (it pins transformers 5.20.1, TRL 1.14.1), then this package installed with
#      `pip install -e ".[axolotl,trl,dev]"`, which must keep Axolotl 0.21: the whole suite, with the model
#      converted afresh on transformers 5.20 (its GGUF quantizer).
#   B. transformers 5.24 + TRL 1.16 layered on A (a venv that adds A's site-packages): every test that touches
#      transformers, TRL or Axolotl internals, Axolotl end to end included.
# Nothing is cached between runs: the venvs are built in .venvs/ (PyPI's CUDA build of torch; it runs on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
py312="${PY312:-$(pyenv root 2>/dev/null || echo /nonexistent)/versions/3.12.1/bin/python}"
[[ -x $py312 ]] || py312=$(command -v python3.12) || { echo "test_newest.sh: no Python 3.12 found" >&2; exit 1; }
a=$PWD/.venvs/py312-axolotl021
b=$PWD/.venvs/py312-transformers524

if [[ ! -x $a/bin/python ]]; then
  "$py312" -m venv "$a"
  "$a/bin/python" -m pip install --quiet --upgrade pip
  "$a/bin/python" -m pip install --quiet torch==2.13.0
  "$a/bin/python" -m pip install --quiet axolotl==0.21.0
fi
"$a/bin/python" -m pip install --quiet -e ".[axolotl,trl,dev]"
"$a/bin/python" - <<'PY'
from importlib.metadata import version
assert version("axolotl") == "0.21.0", f"installing wit_plugin changed Axolotl to {version('axolotl')}"
print("stack A:", {name: version(name) for name in ("axolotl", "transformers", "trl", "torch", "datasets", "peft")})
PY
(export WIT_CACHE=$PWD/.wit_cache_py312 PATH="$a/bin:$PATH"; "$a/bin/python" -m pytest -q -p no:cacheprovider tests)
# the README's demo on this stack (the YAML reads .wit_cache/, which `wit prepare` fills)
(export PATH="$a/bin:$PATH"; wit prepare --out .wit_cache && \
  accelerate launch --num_processes 1 --cpu -m axolotl.cli.train yaml_examples/wit_smollm2_cpu.yml)

if [[ ! -x $b/bin/python ]]; then
  "$py312" -m venv "$b"
  own=$("$b/bin/python" -c "import site; print(site.getsitepackages()[0])")
  lower=$("$a/bin/python" -c "import site; print(site.getsitepackages()[0])")
  echo "import site; site.addsitedir('$lower')" > "$own/zz_stack_a.pth"
  "$b/bin/python" -m pip install --quiet --upgrade pip
  "$b/bin/python" -m pip install --quiet transformers==5.24.0 trl==1.16.0
  printf '#!%s\nimport sys\nfrom accelerate.commands.accelerate_cli import main\nsys.exit(main())\n' "$b/bin/python" \
    > "$b/bin/accelerate" && chmod +x "$b/bin/accelerate"  # `axolotl train` starts accelerate from PATH
fi
"$b/bin/python" - <<'PY'
from importlib.metadata import version
print("stack B:", {name: version(name) for name in ("axolotl", "transformers", "trl", "torch")})
PY
(export WIT_CACHE=$PWD/.wit_cache_py312 PATH="$b/bin:$PATH"; "$b/bin/python" -m pytest -q -p no:cacheprovider \
  tests/test_trl.py tests/test_loss.py tests/test_linear_ce.py tests/test_forward_patch.py tests/test_trainer.py \
  tests/test_engine.py tests/test_posix.py tests/test_crosstask.py tests/test_compare.py tests/test_axolotl_e2e.py \
  tests/test_axolotl_plugin.py tests/test_tagging_chat.py tests/test_tagging_templates.py tests/test_cli.py)
