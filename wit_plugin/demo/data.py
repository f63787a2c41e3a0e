"""A small instruction dataset the project generates itself, for the demo and the tests.

Long, varied instructions with short, checkable answers: the shape where the prompt weight matters most
(most tokens are instruction tokens). Deterministic for a seed; no external data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

DATA_NAME = "demo_instructions.jsonl"
Task = Callable[[random.Random], tuple[str, str]]

_OPENERS = (
    "Please read the following request carefully before answering.",
    "I have a small task for you, and I would like a short, exact answer.",
    "Here is a quick exercise. Take your time, but keep the reply brief.",
    "Could you help me with something? Only the final answer is needed.",
    "Consider the problem described below and respond concisely.",
)
_CLOSERS = (
    "Reply with the answer only.",
    "Do not explain your reasoning; just give the result.",
    "Answer in as few words as possible.",
    "A single word or number is enough.",
    "",
)
_WORDS = (
    "river",
    "planet",
    "garden",
    "window",
    "silver",
    "forest",
    "candle",
    "bridge",
    "rocket",
    "pencil",
    "harbor",
    "meadow",
    "orange",
    "violin",
    "castle",
    "marble",
    "thunder",
    "lantern",
    "compass",
    "glacier",
)
_CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Germany", "Berlin"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
)


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    phrasing = rng.choice(
        (
            f"What do you get when you add {a} and {b} together?",
            f"Compute the sum of the two numbers {a} and {b}.",
            f"If I have {a} apples and someone gives me {b} more, how many apples do I have?",
        )
    )
    return phrasing, str(a + b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    phrasing = rng.choice(
        (
            f"Write the word '{word}' backwards, letter by letter.",
            f"Reverse the order of the letters in the word {word}.",
            f"Spell {word} in reverse.",
        )
    )
    return phrasing, word[::-1]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(_WORDS)
    phrasing = rng.choice(
        (
            f"Convert the word '{word}' to capital letters.",
            f"Rewrite {word} using only uppercase letters.",
        )
    )
    return phrasing, word.upper()


def _capital(rng: random.Random) -> tuple[str, str]:
    country, city = rng.choice(_CAPITALS)
    phrasing = rng.choice(
        (
            f"What is the capital city of {country}?",
            f"Name the capital of {country}.",
            f"Which city serves as the seat of government of {country}?",
        )
    )
    return phrasing, city


def _largest(rng: random.Random) -> tuple[str, str]:
    numbers = rng.sample(range(1, 100), 5)
    listed = ", ".join(map(str, numbers))
    phrasing = rng.choice(
        (
            f"Which is the largest number in this list: {listed}?",
            f"From the numbers {listed}, pick the biggest one.",
        )
    )
    return phrasing, str(max(numbers))


TASKS: tuple[Task, ...] = (_addition, _reverse, _uppercase, _capital, _largest)


def generate_rows(count: int, seed: int = 0) -> Iterator[dict]:
    """``count`` chat rows ``{"messages": [user, assistant]}``; some carry a system message."""
    rng = random.Random(seed)
    for _ in range(count):
        question, answer = rng.choice(TASKS)(rng)
        instruction = " ".join(part for part in (rng.choice(_OPENERS), question, rng.choice(_CLOSERS)) if part)
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.25:
            messages.insert(0, {"role": "system", "content": "You are a precise assistant."})
        yield {"messages": messages}


def write_dataset(path: Path, count: int = 400, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in generate_rows(count, seed):
            handle.write(json.dumps(row) + "\n")
    return path
