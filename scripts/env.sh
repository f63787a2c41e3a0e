# Offline, no telemetry, model cache inside the checkout. Sourced by the other scripts.
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WIT_CACHE="${WIT_CACHE:-$PWD/.wit_cache}"
