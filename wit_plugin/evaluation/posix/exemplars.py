"""POSIX with exemplars: a fixed block of in-context demos in front of every prompt of a set.

The POSIX paper finds that even one exemplar lowers prompt sensitivity; this measures it per condition:

* ``none``: the prompts as they are;
* ``cross``: the K pool examples of *other* tasks most similar to the set's first prompt;
* ``in-task``: the K most similar pool examples of the set's own task (sets without a task, or whose task has
  no pool rows, are skipped with a note).

Demos are chosen with the cross-task evaluator's selection (``similar``, ``lexical``, ``random``) and written in
its format; a chat prompt gets the block at the start of its first user message.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wit_plugin.evaluation.crosstask.prompts import Demo, demo_block
from wit_plugin.evaluation.crosstask.select import embed_inputs, selection_scores, top_k
from wit_plugin.evaluation.crosstask.tasks import TaskItem
from wit_plugin.evaluation.engine import Prompt
from wit_plugin.evaluation.posix.evaluate import POSIXResult, evaluate_posix
from wit_plugin.evaluation.posix.prompts import PromptSet, prompt_text

EXEMPLAR_CONDITIONS: tuple[str, ...] = ("none", "cross", "in-task")


@dataclass
class ExemplarPOSIX:
    """POSIX per exemplar condition, the demos each set got, and what was skipped."""

    results: dict[str, POSIXResult]
    demos: dict[str, list[list[dict[str, str]]]]  # condition -> per evaluated set: [{task, id}]
    evaluated: dict[str, list[int]]  # condition -> indices of the sets evaluated
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditions": {
                name: {**result.to_dict(), "set_indices": self.evaluated[name], "demos": self.demos[name]}
                for name, result in self.results.items()
            },
            "notes": self.notes,
        }


def parse_conditions(spec: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in spec.split(",") if name.strip()))
    unknown = [name for name in names if name not in EXEMPLAR_CONDITIONS]
    if unknown or not names:
        raise ValueError(f"exemplar conditions must be among {', '.join(EXEMPLAR_CONDITIONS)}; got {spec!r}")
    return names


def with_block(prompt: Prompt, block: str) -> Prompt:
    """``prompt`` with the demo block in front (inside the first user message of a chat prompt)."""
    if isinstance(prompt, str):
        return block + prompt
    messages = copy.deepcopy(prompt)
    for message in messages:
        if message["role"] == "user":
            message["content"] = block + message["content"]
            return messages
    return [{"role": "user", "content": block.rstrip("\n")}, *messages]


def evaluate_posix_with_exemplars(
    model: Any,
    tokenizer: Any,
    prompt_sets: Sequence[PromptSet],
    tasks: Sequence[str | None],
    pool: Sequence[TaskItem],
    conditions: Sequence[str],
    shots: int,
    select: str,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    psi_definition: str = "paper",
) -> ExemplarPOSIX:
    """POSIX of ``prompt_sets`` under each exemplar condition (see the module docstring)."""
    queries = [prompt_text(prompts[0]) for prompts in prompt_sets]
    states = None
    if select == "similar":
        states = (
            embed_inputs(model, tokenizer, queries, batch_size).layer(-1),
            embed_inputs(model, tokenizer, [p.input for p in pool], batch_size).layer(-1),
        )
    scores = selection_scores(select, queries, [p.input for p in pool], seed, states=states)
    pool_tasks = np.array([p.task for p in pool], dtype=object)
    outcome = ExemplarPOSIX({}, {}, {})
    for condition in conditions:
        sets, demos, indices = [], [], []
        for index, (prompts, task) in enumerate(zip(prompt_sets, tasks)):
            if condition == "none":
                chosen: list[TaskItem] = []
            else:
                if condition == "in-task" and (task is None or not (pool_tasks == task).any()):
                    continue
                allowed = pool_tasks == task if condition == "in-task" else pool_tasks != task
                same = np.array([p.input == queries[index] for p in pool])  # a set is never its own demo
                chosen = [pool[i] for i in top_k(scores[index], allowed & ~same, shots)]
            block = demo_block([Demo(item, item.label) for item in chosen])
            sets.append([with_block(prompt, block) for prompt in prompts])
            demos.append([{"task": item.task, "id": item.id} for item in chosen])
            indices.append(index)
        skipped = len(prompt_sets) - len(indices)
        if skipped:
            outcome.notes.append(f"{condition}: {skipped} set(s) without a task that has pool rows were skipped")
        if not sets:
            continue
        outcome.results[condition] = evaluate_posix(
            model, sets, tokenizer, max_new_tokens, batch_size, psi_definition=psi_definition
        )
        outcome.demos[condition], outcome.evaluated[condition] = demos, indices
    return outcome
