#!/usr/bin/env bash
# The main job: prepare SmolLM2-135M-Instruct and the generated dataset, then train with WIT (λp=0.4, λr=0.6)
# through Axolotl on CPU, logging per-role losses. An optional argument picks another preset's YAML: `it` or `im`.
set -euo pipefail
cd "$(dirname "$0")/.."
config="yaml_examples/${1:-wit}_smollm2_cpu.yml"
if [[ $# -gt 1 || ! -f "$config" ]]; then
  echo "usage: bash scripts/demo.sh [wit|it|im]" >&2
  exit 2
fi
bash scripts/setup.sh
source scripts/env.sh
wit prepare --out .wit_cache  # the YAML examples read .wit_cache/
accelerate launch --num_processes 1 --cpu -m axolotl.cli.train "$config"
