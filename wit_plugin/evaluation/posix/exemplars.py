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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wit_plugin.evaluation.crosstask.prompts import Demo, demo_block
from wit_plugin.evaluation.crosstask.select import embed_inputs, selection_scores, top_k
from wit_plugin.evaluation.crosstask.tasks import TaskItem, usable_rows
from wit_plugin.evaluation.engine import Prompt
from wit_plugin.evaluation.posix.evaluate import POSIXResult, POSIXSettings, Progress, evaluate_posix
from wit_plugin.evaluation.posix.prompts import PromptSet, prompt_text

EXEMPLAR_CONDITIONS: tuple[str, ...] = ("none", "cross", "in-task")


@dataclass
class ExemplarPOSIX:
    """POSIX per exemplar condition, the demos each set got, and what was skipped.

    ``to_dict`` is the trace of an exemplar run (docs/posix.md): ``conditions`` maps each evaluated condition to
    the plain POSIX trace (:meth:`POSIXResult.to_dict`) of the sets it evaluated, plus ``set_indices`` (which
    sets of the prompts file, in order) and ``demos`` (per set, the demos' ``{task, id}``); ``exemplars`` holds
    the settings, ``notes`` what was skipped or changed.
    """

    results: dict[str, POSIXResult]
    demos: dict[str, list[list[dict[str, str]]]]  # condition -> per evaluated set: [{task, id}]
    evaluated: dict[str, list[int]]  # condition -> indices of the sets evaluated
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # conditions asked for, shots, select, seed

    def to_dict(self) -> dict[str, Any]:
        return {
            "exemplars": self.settings,
            "conditions": {
                name: {**result.to_dict(), "set_indices": self.evaluated[name], "demos": self.demos[name]}
                for name, result in self.results.items()
            },
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExemplarPOSIX:
        """What :meth:`to_dict` wrote: the conditions a saved trace holds, reused when the command runs again."""
        conditions = data.get("conditions", {})
        return cls(
            {name: POSIXResult.from_dict(entry) for name, entry in conditions.items()},
            {name: entry["demos"] for name, entry in conditions.items()},
            {name: entry["set_indices"] for name, entry in conditions.items()},
            list(data.get("notes", [])),
            dict(data.get("exemplars", {})),
        )


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
    posix: POSIXSettings,
    done: ExemplarPOSIX | None = None,
    checkpoint: Callable[[ExemplarPOSIX], None] | None = None,
    progress: Progress | None = None,
) -> ExemplarPOSIX:
    """POSIX of ``prompt_sets`` under each exemplar condition (see the module docstring); pool rows that list an
    option twice are resolved as :func:`~wit_plugin.evaluation.crosstask.tasks.usable_rows` says, with a note.
    A condition ``done`` holds for the same sets and demos (a saved trace of the same command) is taken from it,
    not evaluated; ``checkpoint`` gets the outcome after each condition; ``progress(done, total)`` counts
    (condition, set) pairs, a skipped or reused set as done."""
    pool, notes = usable_rows(pool, "pool")
    queries = [prompt_text(prompts[0]) for prompts in prompt_sets]
    states = None
    if select == "similar":
        states = (
            embed_inputs(model, tokenizer, queries, posix.batch_size).layer(-1),
            embed_inputs(model, tokenizer, [p.input for p in pool], posix.batch_size).layer(-1),
        )
    scores = selection_scores(select, queries, [p.input for p in pool], seed, states=states)
    pool_tasks = np.array([p.task for p in pool], dtype=object)
    settings = {"conditions": list(conditions), "shots": shots, "select": select, "seed": seed}
    outcome = ExemplarPOSIX({}, {}, {}, notes, settings)
    total, offset = len(conditions) * len(prompt_sets), 0
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
        offset += skipped
        if not sets:
            continue
        reused = (
            done is not None
            and done.evaluated.get(condition) == indices
            and done.demos.get(condition) == demos
            and [item.prompts for item in done.results[condition].sets] == sets
            and done.results[condition].psi_definition == posix.psi_definition
        )

        def counted(finished: int, _: int, start: int = offset) -> None:
            if progress is not None:
                progress(start + finished, total)

        if reused:
            outcome.results[condition] = done.results[condition]
            counted(len(sets), len(sets))
        else:
            outcome.results[condition] = evaluate_posix(model, sets, tokenizer, progress=counted, **posix.arguments())
        offset += len(sets)
        outcome.demos[condition], outcome.evaluated[condition] = demos, indices
        if checkpoint is not None:
            checkpoint(outcome)
    return outcome
