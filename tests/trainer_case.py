"""One SGD step of a WIT trainer on two rows: run in-process, or under torchrun for the DDP test.

Plain SGD with lr=1 makes the parameter update equal to the gradient, so comparing updates compares
gradients of the full WIT loss, normalised over the whole global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

from wit_plugin.roles import RoleWeights
from wit_plugin.tagging import RoleTagger
from wit_plugin.training.mixin import WITTrainerMixin

ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2? Answer now."},
            {"role": "assistant", "content": "4"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue, like the sky."},
        ]
    },
]
# One plain SGD step with lr=1 and nothing else touching the update: the update is the gradient.
ONE_SGD_STEP = {
    "max_steps": 1,
    "learning_rate": 1.0,
    "optim": "sgd",
    "lr_scheduler_type": "constant",
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
}
WATCHED = (
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.29.mlp.down_proj.weight",
)


class WITTrainer(WITTrainerMixin, Trainer):
    pass


def one_step(
    model_path: str,
    out_dir: str,
    batch_size: int,
    accumulation: int,
    loss_impl: str = "eager",
    bf16: bool = False,
    fp32_weights: bool = False,
) -> dict:
    """``bf16``: a bf16 model trained with ``bf16=True`` mixed precision, as Axolotl's ``bf16: true`` runs it;
    with ``fp32_weights`` the model stays fp32 and only the autocast is bf16 (TRL's and Trainer's usual AMP)."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = torch.bfloat16 if bf16 and not fp32_weights else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if name in WATCHED}
    tagger = RoleTagger(tokenizer, "chat")
    dataset = Dataset.from_list([tagger.tag(row).as_features() for row in ROWS])
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        **ONE_SGD_STEP,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_drop_last=False,
        seed=0,
        bf16=bf16,
    )
    trainer = WITTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True)
    )
    trainer.setup_wit(RoleWeights.preset("wit"), loss_impl=loss_impl)
    trainer.train()
    # tensors, not lists: the embedding alone is 28M numbers (as JSON, 600 MB and a minute to write and read back)
    updates = {name: (before[name] - p.detach()).float() for name, p in model.named_parameters() if name in WATCHED}
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return {"loss": logged["loss"], "updates": updates, "log": logged}


if __name__ == "__main__":  # torchrun --nproc_per_node 2 tests/trainer_case.py MODEL OUT_FILE LOSS_IMPL[,LOSS_IMPL…]
    # one step per loss implementation, each on a freshly loaded model, in one launch: {loss_impl: result}
    results = {
        impl: one_step(sys.argv[1], str(Path(sys.argv[2]).parent / f"ddp_{impl}"), 1, 1, loss_impl=impl)
        for impl in sys.argv[3].split(",")
    }
    if torch.distributed.get_rank() == 0:
        torch.save(results, sys.argv[2])
