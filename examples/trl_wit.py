"""Weighted Instruction Tuning with TRL on the embedded SmolLM2-135M-Instruct (CPU: about a minute).

    WIT_CACHE=.wit_cache python examples/trl_wit.py --max-steps 5

Trains on the project's generated instruction data with prompt weight λp and response weight λr, prints
the per-role losses TRL logged, and saves the model to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import os


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=64, help="rows of generated chat data")
    parser.add_argument("--prompt-weight", type=float, default=0.4, help="λp (template, system, instruction)")
    parser.add_argument("--response-weight", type=float, default=0.6, help="λr (response, end of turn)")
    parser.add_argument("--packing", action="store_true", help="BFD packing, padding-free batches")
    parser.add_argument("--output-dir", default="outputs/trl_wit")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it: the model is local

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wit_plugin import WITConfig, WITSFTTrainer
    from wit_plugin.demo.data import generate_rows
    from wit_plugin.demo.model import prepare_default_model

    model_dir = prepare_default_model()
    config = WITConfig(
        output_dir=args.output_dir,
        wit_prompt_weight=args.prompt_weight,
        wit_response_weight=args.response_weight,
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        max_length=256,
        packing=args.packing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,  # a 135M model on CPU: memory is not the constraint
    )
    trainer = WITSFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        args=config,
        train_dataset=Dataset.from_list(list(generate_rows(args.rows))),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    trainer.save_model()
    print(f"\nrole weights: {config.role_weights.describe()}")
    print(f"{'step':>4} {'loss':>7} {'instruction CE':>15} {'response CE':>12} {'accuracy':>9}")
    for entry in trainer.state.log_history:
        if "loss" in entry:
            print(
                f"{entry['step']:>4} {entry['loss']:>7.3f} {entry.get('wit/loss_instruction', float('nan')):>15.3f} "
                f"{entry.get('wit/loss_response', float('nan')):>12.3f} {entry['mean_token_accuracy']:>9.3f}"
            )
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
