"""Utility tasks of the real-model world, generated: arithmetic word problems and
Python-output questions, each with one exact answer.

Generated rather than downloaded so that the held-out sets need no further asset, are
unlimited and certainly unseen by SmolLM2's training. The pool of a task is a pure function
of its size (a fixed generator seed); which prompts are train, val or test is decided later by
the split seed (``splits.py``). Every row is ``{prompt, response}``: the response is a
training target that ends in the answer, so ``answer: last_number`` (math) and
``answer: first_line`` (code) read it from the reference and the model's text alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

# The pools are the same on every machine and for every split seed.
POOL_SEED = 20250217

NAMES = (
    "Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack",
    "Kira", "Leo", "Maya", "Noah", "Olga", "Paul", "Rosa", "Sam", "Tara", "Umar",
)  # fmt: skip
ITEMS = (
    "apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards",
    "books", "coins", "oranges", "buttons",
)  # fmt: skip
WORDS = (
    "apple", "river", "python", "garden", "orange", "planet", "silver", "window",
    "rocket", "forest", "bridge", "candle", "dragon", "pepper", "tunnel",
)  # fmt: skip


@dataclass(frozen=True)
class TaskRow:
    prompt: str
    response: str  # a training target; its answer is what the extractor reads
    answer: str  # the exact answer alone

    def as_row(self) -> Dict[str, str]:
        return {"prompt": self.prompt, "response": self.response, "answer": self.answer}


# --------------------------------------------------------------------------- math


def _math_problem(rng: random.Random) -> Tuple[str, str, int]:
    """A word problem, its worked solution and its integer answer."""
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(8)
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(1, 20)
    if kind == 0:
        q = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        return q, f"{a} + {b} = {a + b}.", a + b
    if kind == 1:
        a = a + b
        q = f"{name} has {a} {item} and gives {b} to {friend}. How many {item} does {name} have left?"
        return q, f"{a} - {b} = {a - b}.", a - b
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"A box holds {a} {item}. How many {item} are in {b} boxes?"
        return q, f"{a} x {b} = {a * b}.", a * b
    if kind == 3:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        q = f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?"
        return q, f"{a * b} / {b} = {a}.", a
    if kind == 4:
        a, b = rng.randint(2, 9), rng.randint(3, 12)
        c = rng.randint(1, a * b - 1)
        q = f"{name} buys {a} packs of {b} {item} and gives away {c}. How many {item} are left?"
        return q, f"{a} x {b} = {a * b}, and {a * b} - {c} = {a * b - c}.", a * b - c
    if kind == 5:
        a, b = rng.randint(5, 30), rng.randint(2, 9)
        q = f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does {name} read in total?"
        return q, f"{a} x {b} = {a * b}, and {a * b} + {c} = {a * b + c}.", a * b + c
    if kind == 6:
        a, b = rng.randint(2, 25), rng.randint(2, 9)
        q = f"A ticket costs {a} dollars. How many dollars do {b} tickets cost?"
        return q, f"{a} x {b} = {a * b}.", a * b
    a = b + c + rng.randint(1, 50)
    q = f"{name} had {a} dollars, spent {b} dollars on lunch and {c} dollars on a book. How many dollars are left?"
    return q, f"{a} - {b} - {c} = {a - b - c}.", a - b - c


def math_pool(size: int) -> List[TaskRow]:
    """``size`` distinct arithmetic word problems (``answer: last_number``)."""
    return _distinct(size, _math_row, "math")


def _math_row(rng: random.Random) -> TaskRow:
    question, work, answer = _math_problem(rng)
    return TaskRow(question, f"{work} The answer is {answer}.", str(answer))


# --------------------------------------------------------------------------- code

CODE_PROMPT = (
    "What does this Python code print? Reply with the output only.\n\n```python\n{code}\n```"
)


def _code_snippet(rng: random.Random) -> Tuple[str, str]:
    """A short program and exactly what it prints (computed here, checked by the tests by
    running the program)."""
    kind = rng.randrange(8)
    word = rng.choice(WORDS)
    nums = [rng.randint(1, 20) for _ in range(rng.randint(3, 6))]
    a, b, c = rng.randint(2, 15), rng.randint(2, 15), rng.randint(1, 30)
    if kind == 0:
        return f"x = {a}\ny = {b}\nprint(x * y + {c})", str(a * b + c)
    if kind == 1:
        return f's = "{word}"\nprint(s.upper())', word.upper()
    if kind == 2:
        return f's = "{word}"\nprint(s[::-1])', word[::-1]
    if kind == 3:
        k = rng.randint(1, len(word) - 1)
        return f's = "{word}"\nprint(len(s) + {k}, s[:{k}])', f"{len(word) + k} {word[:k]}"
    if kind == 4:
        op = rng.choice(["sum", "max", "min", "len"])
        value = {"sum": sum, "max": max, "min": min, "len": len}[op](nums)
        return f"nums = {nums}\nprint({op}(nums))", str(value)
    if kind == 5:
        return f"nums = {nums}\nprint(sorted(nums))", str(sorted(nums))
    if kind == 6:
        n = rng.randint(3, 12)
        code = f"total = 0\nfor i in range({n}):\n    total += i\nprint(total)"
        return code, str(n * (n - 1) // 2)
    x = rng.randint(10, 99)
    code = f'x = {x}\nif x % {a} == 0:\n    print("yes")\nelse:\n    print(x % {a})'
    return code, "yes" if x % a == 0 else str(x % a)


def code_pool(size: int) -> List[TaskRow]:
    """``size`` distinct Python-output questions (``answer: first_line``)."""
    return _distinct(size, _code_row, "code")


def _code_row(rng: random.Random) -> TaskRow:
    code, output = _code_snippet(rng)
    return TaskRow(CODE_PROMPT.format(code=code), output, output)


# --------------------------------------------------------------------------- shared


def _distinct(size: int, make: Callable[[random.Random], TaskRow], what: str) -> List[TaskRow]:
    rng = random.Random(f"{POOL_SEED}-{what}")
    rows: Dict[str, TaskRow] = {}
    for _ in range(size * 50):
        row = make(rng)
        rows.setdefault(row.prompt, row)
        if len(rows) == size:
            return list(rows.values())
    raise ValueError(f"the {what} generator gives fewer than {size} distinct prompts")
