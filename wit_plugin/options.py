"""Every ``wit_*`` option, defined once: name, type, default, help and validation.

The Axolotl schema (:mod:`wit_plugin.integrations.axolotl.args`), TRL's ``WITConfig``, the ``wit`` CLI flags and
README's YAML reference (``python -m wit_plugin.options``) are all derived from :data:`OPTIONS`, so a default
or a check cannot differ between them. Cross-option rules (weights that resolve, evaluation keys that need
their data files) are one function per concern, called by every framework adapter.

Like :mod:`wit_plugin.roles`, this module imports no framework.
"""

from __future__ import annotations

import argparse
import difflib
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wit_plugin.roles import GROUP_KEYS, PRESETS, TRAINABLE_ROLES, WEIGHT_KEYS, Role, RoleSchedules, weight_key
from wit_plugin.schedules import SCHEDULE_KINDS

FUSED_LOSS_IMPLS: tuple[str, ...] = ("chunked", "cce")  # from hidden states, never materialising the logits
LOSS_IMPLS: tuple[str, ...] = ("auto", *FUSED_LOSS_IMPLS, "eager")
ROLE_METRICS: tuple[str, ...] = ("all", "weighted")
CROSSTASK_CONDITIONS: tuple[str, ...] = ("zero", "cross", "mixed", "random", "gold", "pseudo")
DEMO_SELECTIONS: tuple[str, ...] = ("similar", "lexical", "random")
SCORINGS: tuple[str, ...] = ("mean", "sum")
# The loss's denominator N: targets with w > 0 (the WIT paper) or Σ w (LLaMA-Factory v1's per-message loss_weight).
NORMALIZATIONS: tuple[str, ...] = ("tokens", "weights")
PSI_DEFINITIONS: tuple[str, ...] = ("paper", "package")  # POSIX's ψ: the paper's Eq. 1, or its package's 0.0.1


class OptionError(ValueError):
    """An option value that would make training or evaluation silently wrong; the message names the key."""


@dataclass(frozen=True)
class Option:
    """One ``wit_*`` key. ``default=None`` means unset; ``unset`` says what that means (README, help).

    ``multiple`` options hold a comma-separated subset of ``choices``; ``flag`` is the option's name on the
    ``wit`` subcommands that take it (``--shots``).
    """

    name: str
    type: type
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] = ()
    multiple: bool = False
    minimum: float | None = None
    unset: str = "unset"
    flag: str | None = None
    schedulable: bool = False  # a number, or a schedule mapping (:mod:`wit_plugin.schedules`); CLI flags: numbers

    def check(self, value: Any) -> Any:
        """``value`` if valid for this option (``None`` always is: unset), else :class:`OptionError`."""
        if value is None:
            return None
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f"{self.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise OptionError(f"{self.name} must be finite, got {value}")
        elif self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise OptionError(f"{self.name} must be an integer, got {value!r}")
        elif self.type is bool and not isinstance(value, bool):
            raise OptionError(f"{self.name} must be true or false, got {value!r}")
        elif self.type is str and not isinstance(value, str):
            raise OptionError(f"{self.name} must be a string, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(f"{self.name} must be >= {self.minimum:g}, got {value}")
        if self.choices:
            picked = parse_choices(value, self) if self.multiple else [value]
            unknown = [item for item in picked if item not in self.choices]
            if unknown:
                raise OptionError(f"unknown {self.name} {value!r}; choose from {', '.join(self.choices)}")
        return value

    @property
    def annotation(self) -> Any:
        """The type as frameworks declare it: optional unless the option has a non-None default."""
        return self.type if self.default is not None else self.type | None

    def describe_type(self) -> str:
        if self.choices:
            kinds = " \\| ".join(f"`{choice}`" for choice in self.choices)
            return f"comma-separated {kinds}" if self.multiple else kinds
        names = {float: "float", int: "int", bool: "bool", str: "path" if self.name.endswith(_PATH_SUFFIXES) else "str"}
        bound = f" ≥ {self.minimum:g}" if self.minimum is not None else ""
        schedule = " or schedule" if self.schedulable else ""
        return names[self.type] + bound + schedule

    def describe_default(self) -> str:
        if self.default is None:
            return self.unset
        return f"`{str(self.default).lower() if isinstance(self.default, bool) else self.default}`"


_PATH_SUFFIXES = ("_prompts", "_pool", "_targets")


def parse_choices(value: str, option: Option) -> list[str]:
    """``"zero,cross"`` → ``["zero", "cross"]`` (blank items dropped, order and duplicates as written)."""
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise OptionError(f"{option.name} must name at least one of {', '.join(option.choices)}")
    return items


def _weight(key: str, help_text: str, unset: str = "group", flag: str | None = None) -> Option:
    return Option(key, float, None, help_text, "weights", minimum=0.0, unset=unset, flag=flag, schedulable=True)


PROMPT_WEIGHT, RESPONSE_WEIGHT = GROUP_KEYS  # λp and λr (the response role's own key)
ROLE_WEIGHT_HELP: dict[Role, str] = {  # the roles a group key does not already name, in role order
    Role.TEMPLATE: "chat-template text only",
    Role.SYSTEM: "system messages and rendered tool definitions only",
    Role.INSTRUCTION: "user messages and tool results only",
    Role.EOT: "end of turn only",
    Role.REASONING: "reasoning (thinking) text only",
}


OPTIONS: tuple[Option, ...] = (
    Option(
        "wit_preset", str, "wit", "base weights: it, im, wit (λp/λr) or cpt", "weights", choices=PRESETS, flag="preset"
    ),
    _weight(PROMPT_WEIGHT, "λp: template, system and instruction", unset="preset", flag="prompt-weight"),
    _weight(RESPONSE_WEIGHT, "λr: response, end of turn and reasoning", unset="preset", flag="response-weight"),
    *(_weight(weight_key(role), text) for role, text in ROLE_WEIGHT_HELP.items()),
    Option(
        "wit_drop_unrendered",
        bool,
        False,
        "drop the tool calls, tool definitions and message texts that the chat template does not render (and a "
        "tool-call turn left empty) instead of refusing the row; the counts are logged and recorded in wit_run.json, "
        "per dataset. Axolotl: also a key of each dataset, overriding this one",
        "data",
    ),
    Option(
        "wit_message_weight_field",
        str,
        "weight",
        "the message key holding a message's loss weight (multiplies the role weight of every token of its turn; "
        "0 masks it; absent: 1), e.g. loss_weight, loss_scale or loss; in alpaca, prompt/completion and text rows, "
        "the row key weighting the whole row. Axolotl: also a key of each dataset, overriding this one",
        "data",
    ),
    Option(
        "wit_loss_impl",
        str,
        "auto",
        "how the loss is computed: fused from hidden states (chunked; cce: CUDA, least memory, bf16-accumulated "
        "gradients) or from logits (eager); auto is chunked where the model allows, else eager",
        "loss",
        choices=LOSS_IMPLS,
    ),
    Option(
        "wit_normalize",
        str,
        "tokens",
        "the loss's denominator over the global batch (every accumulation step and rank): the number of targets "
        "with weight > 0 (the WIT paper) or the sum of their weights (LLaMA-Factory v1)",
        "loss",
        choices=NORMALIZATIONS,
    ),
    Option(
        "wit_role_metrics",
        str,
        "all",
        "per-role metrics over every scored token, or only over trained ones (weight > 0; cheaper with fused losses)",
        "loss",
        choices=ROLE_METRICS,
    ),
    Option(
        "wit_posix_prompts",
        str,
        None,
        'JSONL of prompt sets ({"prompts": [...]}) or instruction rows: log `posix` during training',
        "posix",
    ),
    Option("wit_posix_steps", int, 100, "POSIX every N optimiser steps", "posix", minimum=1),
    Option("wit_posix_max_new_tokens", int, 32, "POSIX greedy response cap", "posix", minimum=1, flag="max-new-tokens"),
    Option(
        "wit_posix_batch_size",
        int,
        32,
        "prompts decoded together and pairs scored per forward",
        "posix",
        minimum=1,
        flag="batch-size",
    ),
    Option(
        "wit_posix_psi",
        str,
        "paper",
        "ψ as the POSIX paper's Eq. 1 defines it (one response under two prompts, per response token) or as "
        "its package prompt-sensitivity-index 0.0.1 computes it (two responses under one prompt, per max new token)",
        "posix",
        choices=PSI_DEFINITIONS,
        flag="psi",
    ),
    Option(
        "wit_crosstask_pool",
        str,
        None,
        "JSONL of labelled examples of many tasks, where in-context demos come from",
        "crosstask",
    ),
    Option(
        "wit_crosstask_targets",
        str,
        None,
        "JSONL of test items: log cross-task accuracy per task during training",
        "crosstask",
    ),
    Option("wit_crosstask_steps", int, 100, "cross-task evaluation every N optimiser steps", "crosstask", minimum=1),
    Option(
        "wit_crosstask_conditions",
        str,
        "zero,cross",
        "conditions to evaluate (comma-separated)",
        "crosstask",
        choices=CROSSTASK_CONDITIONS,
        multiple=True,
        flag="conditions",
    ),
    Option("wit_crosstask_shots", int, 1, "demos per prompt (K)", "crosstask", minimum=1, flag="shots"),
    Option(
        "wit_crosstask_select",
        str,
        "similar",
        "demo selection: the model's own hidden-state cosine, TF-IDF cosine, or seeded random",
        "crosstask",
        choices=DEMO_SELECTIONS,
        flag="select",
    ),
    Option(
        "wit_crosstask_scoring",
        str,
        "mean",
        "option log-likelihood per token (mean: options of different lengths compete fairly) or summed",
        "crosstask",
        choices=SCORINGS,
        flag="scoring",
    ),
    Option("wit_crosstask_limit", int, None, "targets per task", "crosstask", minimum=1, unset="all", flag="limit"),
    Option(
        "wit_crosstask_pseudo_rows",
        int,
        8,
        "target-task pool rows labelled by cross-task majority vote (gold/pseudo demos)",
        "crosstask",
        minimum=1,
        flag="pseudo-rows",
    ),
    Option("wit_crosstask_seed", int, 0, "seed of random demos, pseudo rows and bootstrap", "crosstask", flag="seed"),
    Option(
        "wit_crosstask_max_new_tokens",
        int,
        16,
        "greedy answer cap for items without options",
        "crosstask",
        minimum=1,
        flag="max-new-tokens",
    ),
    Option(
        "wit_crosstask_chat",
        bool,
        False,
        "render each prompt as one user turn with the chat template",
        "crosstask",
        flag="chat",
    ),
    Option(
        "wit_crosstask_batch_size",
        int,
        32,
        "prompts per forward",
        "crosstask",
        minimum=1,
        flag="batch-size",
    ),
)
OPTION_BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
assert set(WEIGHT_KEYS) | set(map(weight_key, TRAINABLE_ROLES)) <= set(OPTION_BY_NAME)


def group(name: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if option.group == name)


def defaults(names: Iterable[str] | None = None) -> dict[str, Any]:
    return {name: OPTION_BY_NAME[name].default for name in (names or OPTION_BY_NAME)}


def resolved(values: Mapping[str, Any], name: str) -> Any:
    """The value of ``name`` in ``values``, or its default when unset (absent or None)."""
    value = values.get(name)
    return OPTION_BY_NAME[name].default if value is None else value


def check(name: str, value: Any) -> Any:
    """``value`` if option ``name`` takes it, else :class:`OptionError` naming the option: the one check of a value
    that arrives as a function argument rather than a config key (the allowed values and their error text are
    the option's). ``None`` is refused where the option has a default: there it is not a choice."""
    option = OPTION_BY_NAME[name]
    if value is None and option.default is not None:
        allowed = f"; choose from {', '.join(option.choices)}" if option.choices else ""
        raise OptionError(f"{name} must be set, got None{allowed}")
    return option.check(value)


# --- checks: one per concern, shared by every adapter -------------------------------------------------------


def check_known_keys(keys: Iterable[Any]) -> None:
    """A misspelt ``wit_*`` key is an error (Axolotl itself silently drops unknown keys)."""
    unknown = sorted(str(key) for key in keys if str(key).startswith("wit_") and key not in OPTION_BY_NAME)
    if unknown:
        guesses = {key: difflib.get_close_matches(key, OPTION_BY_NAME, n=1) for key in unknown}
        hints = "".join(f"; {key}: did you mean {guess[0]}?" for key, guess in guesses.items() if guess)
        # every key listed only where a key has no close match: with a guess, the list hides it in one long line
        listing = "" if all(guesses.values()) else f"; valid: {sorted(OPTION_BY_NAME)}"
        raise OptionError(f"unknown wit_plugin option(s) {unknown}{hints}{listing}")


DATASET_OPTIONS: tuple[str, ...] = ("wit_drop_unrendered", "wit_message_weight_field")  # Axolotl: also set per dataset


def check_dataset_options(dataset: Mapping[str, Any], where: str) -> None:
    """The ``wit_*`` keys of one Axolotl dataset entry (``datasets[0]``): known and valid, or an error naming it."""
    for key in [str(key) for key in dataset if str(key).startswith("wit_")]:
        if key not in DATASET_OPTIONS:
            guess = difflib.get_close_matches(key, DATASET_OPTIONS, n=1)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            raise OptionError(f"{where}.{key}: unknown per-dataset wit_plugin option{hint}; valid: {DATASET_OPTIONS}")
        try:
            OPTION_BY_NAME[key].check(dataset[key])
        except OptionError as error:
            raise OptionError(f"{where}: {error}") from None


def check_values(values: Mapping[str, Any]) -> None:
    """Type, range and choices of every option present in ``values`` (the weights are :func:`check_weights`'s)."""
    for name, option in OPTION_BY_NAME.items():
        if option.group != "weights":
            option.check(values.get(name))


def check_weights(values: Mapping[str, Any]) -> RoleSchedules:
    """The weights resolve (numbers or schedules, finite, ≥ 0, not all zero at any point of training); returns
    each role's schedule (constant for a number)."""
    return RoleSchedules.from_options(values)


def _set(values: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Options of ``names`` given a value other than their default."""
    return [name for name in names if values.get(name) is not None and values[name] != OPTION_BY_NAME[name].default]


def _needs_file(values: Mapping[str, Any], key: str) -> str | None:
    path = values.get(key)
    return f"`{key}`: no file at {path}" if path and not Path(path).is_file() else None


def check_posix(values: Mapping[str, Any]) -> None:
    """POSIX options need ``wit_posix_prompts``, and that file must exist."""
    problems = [_needs_file(values, "wit_posix_prompts")]
    tuned = _set(values, [option.name for option in group("posix") if option.name != "wit_posix_prompts"])
    if tuned and not values.get("wit_posix_prompts"):
        problems.append(f"{tuned} set without `wit_posix_prompts`: no POSIX would be computed")
    _raise(problems)


def check_crosstask(values: Mapping[str, Any]) -> None:
    """Cross-task evaluation needs both its pool and its targets, and both files must exist."""
    files = ("wit_crosstask_pool", "wit_crosstask_targets")
    problems = [_needs_file(values, key) for key in files]
    given = [key for key in files if values.get(key)]
    if len(given) == 1:
        missing = next(key for key in files if key not in given)
        problems.append(f"`{given[0]}` without `{missing}`: cross-task evaluation needs both")
    tuned = _set(values, [option.name for option in group("crosstask") if option.name not in files])
    if tuned and not given:
        problems.append(f"{tuned} set without `wit_crosstask_pool` / `wit_crosstask_targets`: nothing would run")
    _raise(problems)


def _raise(problems: list[str | None]) -> None:
    found = [problem for problem in problems if problem]
    if found:
        raise OptionError("; ".join(found))


def check_all(values: Mapping[str, Any]) -> RoleSchedules:
    """Every check above, in order; returns the resolved weights."""
    check_known_keys(values)
    check_values(values)
    weights = check_weights(values)
    check_posix(values)
    check_crosstask(values)
    return weights


# --- derived views: CLI flags, README table --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str], unset: str | None = None) -> None:
    """One ``--flag`` per named option, typed, defaulted and documented as the option is; with ``unset`` (what an
    absent flag means, e.g. "the config's"), an absent flag is ``None`` instead of the option's default."""
    for option in (OPTION_BY_NAME[name] for name in names):
        if option.flag is None:
            raise ValueError(f"{option.name} has no CLI flag")
        flag = f"--{option.flag}"
        default = None if unset else option.default
        text = f"{option.help} (default {unset or option.describe_default().strip('`')})"
        if option.type is bool:
            parser.add_argument(flag, dest=option.name, action="store_true", default=default, help=text)
            continue
        metavar = "{" + ",".join(option.choices) + "}" if option.choices and not option.multiple else None
        parser.add_argument(
            flag,
            dest=option.name,
            type=_argument_type(option),
            default=default,
            help=text,
            metavar=metavar or option.flag.upper().replace("-", "_"),
        )


def _argument_type(option: Option) -> Any:
    def convert(text: str) -> Any:
        try:
            value = option.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {option.type.__name__}: {text!r}") from None
        try:
            return option.check(value)
        except OptionError as error:
            raise argparse.ArgumentTypeError(str(error).replace(option.name, f"--{option.flag}")) from None

    convert.__name__ = option.type.__name__
    return convert


def markdown_table(options: Iterable[Option] = OPTIONS) -> str:
    """README's YAML reference."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for option in options:
        lines.append(f"| `{option.name}` | {option.describe_type()} | {option.describe_default()} | {option.help} |")
    kinds = ", ".join(f"`{kind}`" for kind in SCHEDULE_KINDS)
    lines.append(
        f"\nA *schedule* is a mapping `{{start, end, schedule, warmup}}`: `schedule` one of {kinds}, `warmup` a "
        "fraction of training in [0, 1) that holds `start` (see *Schedules and normalisation*)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
