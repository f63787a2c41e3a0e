"""A tiny WIT trainer and an independent float64 reference of its loss, for ``wit_normalize`` and the schedules.

The model is a one-layer Llama with SmolLM2's tokenizer (its bookkeeping, not its quality, is under test). Run
under torchrun (``torchrun --nproc_per_node 2 tests/normalize_case.py MODEL OUT NORMALIZE``) it takes one plain SGD
step (lr=1: the update is the gradient) with one row per rank and saves the update from rank 0.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM, TrainingArguments

from tests.trainer_case import ONE_SGD_STEP, ROWS, WITTrainer
from wit_plugin import options
from wit_plugin.tagging import RoleTagger

# Weights that make the two normalisations differ, and rows of different lengths (so a per-micro-batch N would be
# wrong under accumulation and across ranks).
VALUES = {"wit_prompt_weight": 0.3, "wit_response_weight": 1.0, "wit_eot_weight": 0.5, "wit_template_weight": 0.0}
ROLE_WEIGHT = {0: 0.0, 1: 0.3, 2: 0.3, 3: 1.0, 4: 0.5, 5: 1.0, 6: 0.0}  # by role code: VALUES by hand (6: PAD)


def tiny_model(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config)


def features(model_path: str, rows: list[dict[str, Any]] = ROWS) -> list[dict[str, Any]]:
    tagger = RoleTagger(AutoTokenizer.from_pretrained(model_path), "chat")
    return [tagger.tag(row).as_features() for row in rows]


def trainer(
    model_path: str, out_dir: str, values: dict[str, Any], rows: list[dict[str, Any]] = ROWS, **arguments: Any
) -> WITTrainer:
    """A WIT trainer of the tiny model set up from ``values`` (``wit_*`` options) as the adapters set it up."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    args = TrainingArguments(
        output_dir=out_dir,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        seed=0,
        **{"save_strategy": "no", **arguments},
    )
    built = WITTrainer(
        model=tiny_model(len(tokenizer)),
        args=args,
        train_dataset=Dataset.from_list(features(model_path, rows)),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    built.setup_wit(
        options.check_weights(values), loss_impl="eager", normalize=options.resolved(values, "wit_normalize")
    )
    return built


def reference_loss(
    model: torch.nn.Module, rows: list[dict[str, Any]], role_weight: dict[int, float], normalize: str
) -> torch.Tensor:
    """Σ w·CE / N in float64, each row on its own (no padding, no collator): N = #(w > 0) or Σ w over all rows."""
    model64 = model.double()
    total, count, weight_sum = torch.zeros((), dtype=torch.float64), 0, 0.0
    for row in rows:
        ids = torch.tensor(row["input_ids"])
        log_probs = torch.log_softmax(model64(input_ids=ids[None]).logits[0], dim=-1)
        for t in range(1, len(ids)):  # position t-1 predicts token t, weighted by token t's role
            w = role_weight[int(row["wit_roles"][t])]
            total = total - w * log_probs[t - 1, ids[t]]
            count += w > 0
            weight_sum += w
    return total / (count if normalize == "tokens" else weight_sum)


def reference_gradient(
    model: torch.nn.Module, rows: list[dict[str, Any]], role_weight: dict[int, float], normalize: str
) -> tuple[float, dict[str, torch.Tensor]]:
    """The float64 loss and its gradient per parameter (``model`` is left untouched)."""
    import copy

    copied = copy.deepcopy(model)
    loss = reference_loss(copied, rows, role_weight, normalize)
    loss.backward()
    return loss.item(), {name: p.grad.detach().clone() for name, p in copied.named_parameters()}


def one_step(model_path: str, out_dir: str, normalize: str, batch_size: int, accumulation: int) -> dict[str, Any]:
    """One SGD step (lr=1) of the tiny model on :data:`ROWS`: the logged loss and the update of every parameter."""
    built = trainer(
        model_path,
        out_dir,
        {**VALUES, "wit_normalize": normalize},
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        logging_steps=1,
        **ONE_SGD_STEP,
    )
    before = {name: p.detach().clone() for name, p in built.model.named_parameters()}
    built.train()
    updates = {name: before[name] - p.detach() for name, p in built.model.named_parameters()}
    logged = next(entry for entry in built.state.log_history if "loss" in entry)
    return {"loss": logged["loss"], "updates": updates}


def close_to(update: torch.Tensor, gradient: torch.Tensor) -> bool:
    """fp32 training against a float64 gradient: round-off only. An update is a difference of fp32 parameters
    (a norm weight near 1 moves by ~1e-5 and keeps ~1e-7 of it), hence the absolute floor."""
    gradient = gradient.to(update.dtype)
    elementwise = torch.allclose(update, gradient, rtol=1e-4, atol=1e-6)
    return elementwise and float((update - gradient).norm() / gradient.norm().clamp(min=1e-12)) < 1e-3


if __name__ == "__main__":
    result = one_step(sys.argv[1], sys.argv[2] + ".dir", sys.argv[3], batch_size=1, accumulation=1)
    if torch.distributed.get_rank() == 0:
        torch.save(result, sys.argv[2])
