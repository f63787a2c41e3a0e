"""A trial pruned at step 2 of 6 under torchrun: every rank must stop there (run by tests/test_tune.py).

A one-layer random Llama and a fake trial keep it to the callback's own work: rank 0 reports and decides, every rank
scores and must follow rank 0's decision, or the ranks that go on wait forever in their next gradient all-reduce.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from wit_plugin.training.records import PRUNED_FILE
from wit_plugin.tuning.pruning import PruningCallback, TrialLink

PRUNE_AT = 2


class PrunedAtTwo:
    """The trial as rank 0 sees it: the reports it got; the pruner's verdict is yes from step PRUNE_AT."""

    def __init__(self) -> None:
        self.reports: list[int] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append(step)

    def should_prune(self) -> bool:
        return self.reports[-1] >= PRUNE_AT


def main(out: Path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    ids = torch.randint(0, 32, (16, 6)).tolist()
    data = Dataset.from_list([{"input_ids": row, "labels": row} for row in ids])
    args = TrainingArguments(
        output_dir=str(out), max_steps=6, per_device_train_batch_size=1, save_strategy="no", report_to=[],
        use_cpu=True, logging_steps=1, seed=0,
    )  # fmt: skip
    link = TrialLink(storage="", study="", trial_id=0, pruner="", objective="response_ce", settings={}, report_every=1)
    trial = PrunedAtTwo()
    callback = PruningCallback(link, trial=trial, score=lambda model, tokenizer, folder: 1.0)

    trainer = Trainer(model=LlamaForCausalLM(config), args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    rank = torch.distributed.get_rank()
    record = {"step": trainer.state.global_step, "reports": trial.reports, "pruned": (out / PRUNED_FILE).is_file()}
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":  # torchrun --standalone --nproc_per_node 2 tests/pruning_case.py OUT_DIR
    main(Path(sys.argv[1]))
