"""Evaluation sets: rows read the way ``locate`` reads location data, as prompts
(and, for utility tasks, reference answers).

A row is ``{prompt, response}`` (the response is optional for the harmful and
benign sets) or chat ``{messages}``: the turns before the last assistant turn
are the prompt and that turn is the reference; a conversation with no
assistant turn is all prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from mergekit_led.errors import EvalError, LocateError
from mergekit_led.evaluation.spec import SetSpec, TaskSpec

Turns = Tuple[Dict[str, str], ...]


@dataclass(frozen=True)
class EvalItem:
    index: int  # row number in the source
    prompt: Turns  # the conversation to answer
    reference: Optional[str]  # the reference answer, when the row has one

    @property
    def prompt_text(self) -> str:
        """The last user turn: what ``answers.jsonl`` shows as the prompt."""
        return next((t["content"] for t in reversed(self.prompt) if t["role"] == "user"), "")


@dataclass(frozen=True)
class EvalSet:
    name: str  # "harmful", "benign" or "task:<name>"
    spec: SetSpec
    source: str  # the path or Hub name the rows came from
    items: Tuple[EvalItem, ...]

    @property
    def is_task(self) -> bool:
        return isinstance(self.spec, TaskSpec)


def load_set(name: str, spec: SetSpec) -> EvalSet:
    """The items of one set, checked: present fields, strings, not empty, and a
    reference on every row of a utility task."""
    from mergekit_led.location.data_loading import load_rows

    where = f"evaluation set {name} ({spec.data})"
    try:
        rows = load_rows(spec.data, split=spec.split)
    except LocateError as error:
        raise EvalError(f"{where}: {error}") from error
    needs_reference = isinstance(spec, TaskSpec)
    if spec.prompt_field in rows.columns:
        has_response = spec.response_field in rows.columns
        if needs_reference and not has_response:
            raise EvalError(
                f"{where} has no reference answers: no field {spec.response_field!r} "
                f"(columns: {', '.join(rows.columns)}); set response_field."
            )
        read = _pair_reader(spec, has_response)
    elif spec.messages_field in rows.columns:
        read = _messages_reader(spec)
    else:
        raise EvalError(
            f"{where} has no field {spec.prompt_field!r} nor a chat field "
            f"{spec.messages_field!r} (columns: {', '.join(rows.columns) or 'none'}); "
            "set prompt_field or messages_field."
        )
    count = len(rows.rows) if spec.limit is None else min(spec.limit, len(rows.rows))
    items = []
    for index in range(count):
        try:
            items.append(read(rows.rows[index], index))
        except ValueError as error:
            raise EvalError(f"Row {index} of {where}: {error}") from error
    if not items:
        raise EvalError(f"{where} is empty.")
    if needs_reference:
        missing = [item.index for item in items if item.reference is None]
        if missing:
            raise EvalError(
                f"{where} has no reference answer in {len(missing)} rows (first: row "
                f"{missing[0]}); every task prompt needs one."
            )
    return EvalSet(name, spec, rows.name, tuple(items))


def _pair_reader(spec: SetSpec, has_response: bool):
    def read(row, index: int) -> EvalItem:
        prompt = row.get(spec.prompt_field)
        if not isinstance(prompt, str):
            raise ValueError(
                f"field {spec.prompt_field!r} must be a string, got {type(prompt).__name__}"
            )
        reference = row.get(spec.response_field) if has_response else None
        if reference is not None and not isinstance(reference, str):
            raise ValueError(
                f"field {spec.response_field!r} must be a string, got {type(reference).__name__}"
            )
        return EvalItem(index, ({"role": "user", "content": prompt},), reference)

    return read


def _messages_reader(spec: SetSpec):
    def read(row, index: int) -> EvalItem:
        messages = row.get(spec.messages_field)
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError(f"field {spec.messages_field!r} must be a non-empty list of turns")
        turns = []
        for turn in messages:
            if not (
                isinstance(turn, dict)
                and isinstance(turn.get("role"), str)
                and isinstance(turn.get("content"), str)
            ):
                raise ValueError(
                    f"every turn of {spec.messages_field!r} needs string 'role' and 'content'"
                )
            turns.append({"role": turn["role"], "content": turn["content"]})
        last = next(
            (i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None
        )
        if last is None:
            return EvalItem(index, tuple(turns), None)
        if last == 0:
            raise ValueError("the assistant turn has no prompt before it")
        return EvalItem(index, tuple(turns[:last]), turns[last]["content"])

    return read
