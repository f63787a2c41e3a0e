#!/usr/bin/env bash
# The main job: prepare SmolLM2-135M-Instruct and the generated dataset, then train with WIT (λp=0.4, λr=0.6)
# through Axolotl on CPU, logging per-role losses. Extra arguments go to the YAML choice, e.g. `im` or `it`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
wit prepare --out .wit_cache  # the YAML examples read .wit_cache/
accelerate launch --num_processes 1 --cpu -m axolotl.cli.train "yaml_examples/${1:-wit}_smollm2_cpu.yml"
