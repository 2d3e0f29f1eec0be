"""Answers generated elsewhere, read for ``mergekit-led judge``.

One JSON object a line: ``{"set", "prompt", "answer"}`` and, for a utility
task, ``"reference"`` (``index``, ``verdict`` and the other fields of an
``answers.jsonl`` that ``evaluate`` wrote are allowed; old verdicts are
ignored and judged again). ``set`` is ``harmful``, ``benign``,
``harmful:<name>`` / ``benign:<name>`` (more safety sets), or a task:
``task:<name>`` or a bare ``<name>``. A row without ``index`` gets its
position within its set. Every bad row is a one-line error naming
``file:line``.
"""

from __future__ import annotations

import json
from typing import Dict, List

from mergekit_led.errors import EvalError
from mergekit_led.evaluation.judging import AnswerItem, set_kind


def set_name(raw: str) -> str:
    """The ``answers.jsonl`` name of a row's ``set``: a bare name is a task."""
    head = raw.split(":", 1)[0]
    if head in ("harmful", "benign", "task"):
        return raw
    return f"task:{raw}"


def read_answer_rows(path: str) -> Dict[str, List[AnswerItem]]:
    """The answers of ``path`` by set name, each set in file order."""
    sets: Dict[str, List[AnswerItem]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as error:
        raise EvalError(f"{path} is not UTF-8 text: {error.reason}.") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise EvalError(f"{where}: not JSON ({error.msg}).") from None
        if not isinstance(row, dict):
            raise EvalError(f"{where}: a row must be a JSON object, not {type(row).__name__}.")
        for key in ("set", "prompt", "answer"):
            if not isinstance(row.get(key), str):
                got = "missing" if key not in row else type(row[key]).__name__
                raise EvalError(f'{where}: "{key}" must be a string ({got}).')
        raw = row["set"].strip()
        name = set_name(raw)
        if not raw or name.endswith(":"):
            raise EvalError(f'{where}: "set" {row["set"]!r} names no set.')
        reference = row.get("reference")
        if set_kind(name) == "task" and not isinstance(reference, str):
            raise EvalError(
                f'{where}: a row of task set {name!r} needs a "reference" string (the answer '
                "it is compared with)."
            )
        if reference is not None and not isinstance(reference, str):
            raise EvalError(f'{where}: "reference" must be a string.')
        index = row.get("index", len(sets.get(name, ())))
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise EvalError(f'{where}: "index" must be a non-negative integer, got {index!r}.')
        sets.setdefault(name, []).append(AnswerItem(index, row["prompt"], row["answer"], reference))
    if not sets:
        raise EvalError(f"{path} has no answer rows.")
    return sets
