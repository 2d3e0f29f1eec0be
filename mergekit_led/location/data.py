"""Location data: a task's rows read as (prompt, answer) pairs and tokenised for scoring.

``LED_SPEC.md`` section 1 fixes the tokenisation: without a chat template the
prompt is ``tokenizer(prompt).input_ids`` (with the tokenizer's own special
tokens), the answer is ``tokenizer(answer, add_special_tokens=False).input_ids``
followed by eos; with a chat template the prompt is the templated conversation
with the generation prompt and the answer is the assistant text followed by the
template's end-of-turn token. The loss covers the answer tokens only. An
over-long sample loses prompt tokens from the left; the answer is kept whole.

Loading (``load_rows``, in ``location.data_loading``) is I/O; ``tokenize_example``
and ``select_samples`` are pure functions of rows and a tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from mergekit_led.errors import LocateError
from mergekit_led.location.data_loading import LocationRows

LOG = logging.getLogger(__name__)

# Why a sample was left out (counted in the store's manifest).
SKIP_ANSWER_TOO_LONG = "answer_longer_than_max_length"
SKIP_NO_CONTEXT = "no_prompt_token_to_predict_the_answer_from"
SKIP_NONFINITE = "nonfinite_loss_or_gradient"

# A conversation whose rendering reveals what the template writes after an
# assistant turn (its end-of-turn marker).
_PROBE_USER = "led probe question"
_PROBE_ANSWER = "led probe answer"


# --------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class Fields:
    """Which columns hold the pairs: ``prompt``/``response`` or chat ``messages``."""

    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"


def data_format(columns: Sequence[str], fields: Fields, name: str) -> str:
    """``"pair"`` when the prompt field exists, ``"messages"`` when only the
    messages field does; an error naming the fields and columns otherwise."""
    available = ", ".join(repr(c) for c in columns) or "none"
    if fields.prompt in columns:
        if fields.response not in columns:
            raise LocateError(
                f"Location data {name} has the prompt field {fields.prompt!r} but no "
                f"response field {fields.response!r} (columns: {available}); "
                "set --response-field."
            )
        return "pair"
    if fields.messages in columns:
        return "messages"
    raise LocateError(
        f"Location data {name} has no field {fields.prompt!r} (nor a chat field "
        f"{fields.messages!r}); columns: {available}. Set --prompt-field and "
        "--response-field, or --messages-field."
    )


def conversation(row: Dict[str, Any], fmt: str, fields: Fields, index: int, name: str):
    """``(prompt_messages, answer_text)`` of one row.

    For ``messages`` rows the last assistant turn is the answer and the turns
    before it the prompt (turns after it are not part of the pair).
    """
    where = f"sample {index} of location data {name}"
    if fmt == "pair":
        prompt, answer = row.get(fields.prompt), row.get(fields.response)
        for field_name, value in ((fields.prompt, prompt), (fields.response, answer)):
            if not isinstance(value, str):
                raise LocateError(
                    f"Field {field_name!r} of {where} must be a string, got {type(value).__name__}."
                )
        return [{"role": "user", "content": prompt}], answer
    messages = row.get(fields.messages)
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LocateError(
            f"Field {fields.messages!r} of {where} must be a non-empty list of "
            f"{{role, content}} turns, got {type(messages).__name__}."
        )
    for turn_number, turn in enumerate(messages):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise LocateError(
                f"Turn {turn_number} of field {fields.messages!r} of {where} must be "
                f"a dict with string 'role' and 'content', got {turn!r}."
            )
    answer_turn = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"),
        None,
    )
    if answer_turn is None:
        raise LocateError(
            f"Field {fields.messages!r} of {where} has no assistant turn to use as the answer."
        )
    prompt_turns = [{"role": t["role"], "content": t["content"]} for t in messages[:answer_turn]]
    return prompt_turns, messages[answer_turn]["content"]


def content_digest_update(digest, prompt_messages, answer: str) -> None:
    """Feed one sample's text into the dataset fingerprint (order matters)."""
    payload = json.dumps(
        {"prompt": prompt_messages, "answer": answer}, sort_keys=True, ensure_ascii=False
    )
    digest.update(payload.encode("utf-8"))
    digest.update(b"\x00")


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Tokenization:
    """How prompts and answers become token ids (recorded in the manifest)."""

    use_chat_template: bool
    eos_token_id: Optional[int]
    end_of_turn_id: Optional[int]  # chat template path: what closes the answer
    max_length: Optional[int]

    def describe(self, tokenizer) -> Dict[str, Any]:
        def token(token_id):
            return None if token_id is None else tokenizer.convert_ids_to_tokens(token_id)

        return {
            "chat_template": self.use_chat_template,
            "eos_token": token(self.eos_token_id),
            "end_of_turn_token": token(self.end_of_turn_id) if self.use_chat_template else None,
            "max_length": self.max_length,
        }


def make_tokenization(tokenizer, chat_template: str, max_length: Optional[int]) -> Tokenization:
    """Resolve ``--chat-template auto|none`` against the tokenizer."""
    if chat_template not in ("auto", "none"):
        raise LocateError(f"--chat-template must be 'auto' or 'none', not {chat_template!r}.")
    if max_length is not None and max_length < 2:
        raise LocateError(f"--max-length must be at least 2 tokens, not {max_length}.")
    use_template = chat_template == "auto" and bool(getattr(tokenizer, "chat_template", None))
    eos = tokenizer.eos_token_id
    end_of_turn = template_end_of_turn_id(tokenizer) if use_template else None
    if use_template and end_of_turn is None:
        end_of_turn = eos
    return Tokenization(use_template, eos, end_of_turn, max_length)


def template_end_of_turn_id(tokenizer) -> Optional[int]:
    """The first token the chat template writes after an assistant's text.

    Rendered on a probe conversation: whatever follows the answer text (e.g.
    ``<|eot_id|>``, ``<|im_end|>\\n``, ``</s>``) is the end-of-turn marker;
    its first token is what the model emits to end its turn. ``None`` when the
    template writes nothing after the answer.
    """
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": _PROBE_USER},
            {"role": "assistant", "content": _PROBE_ANSWER},
        ],
        tokenize=False,
    )
    position = rendered.rfind(_PROBE_ANSWER)
    if position < 0:
        return None
    tail = rendered[position + len(_PROBE_ANSWER) :].strip()
    if not tail:
        return None
    ids = tokenizer(tail, add_special_tokens=False).input_ids
    return ids[0] if ids else None


# A long prompt is tokenised from a window of its last characters, wide enough
# for the tokens wanted at a generous CHARS_PER_TOKEN; never narrower than
# MIN_WINDOW_CHARS, so ordinary prompts are tokenised whole, as before.
CHARS_PER_TOKEN = 16
MIN_WINDOW_CHARS = 8192
# Tokens at a window's left edge may be cut mid-word (or be the tokenizer's
# leading specials); the tail compared between windows stays this far from it.
WINDOW_EDGE_TOKENS = 8


def last_tokens(encode, text: str, count: int) -> Tuple[List[int], bool]:
    """``(encode(text), True)`` for a text short enough to tokenise whole;
    otherwise ``(encode(text)[-count:], False)`` computed from windows of the
    text's end, where the whole text has more than ``count`` tokens.

    The window is doubled until two successive windows give the same last
    ``count`` tokens, both well away from the windows' cut edges: the cut no
    longer reaches the tail, so it is the whole text's tail. A text that never
    yields that many tokens ends up tokenised whole (at most twice its length
    tokenised in all).
    """
    window = max(MIN_WINDOW_CHARS, CHARS_PER_TOKEN * count)
    previous: Optional[List[int]] = None
    while window < len(text):
        ids = encode(text[-window:])
        if (
            previous is not None
            and len(previous) > count + WINDOW_EDGE_TOKENS
            and ids[-count:] == previous[-count:]
        ):
            return ids[-count:], False
        previous = ids
        window *= 2
    return encode(text), True


@dataclass(frozen=True)
class TokenizedSample:
    index: int  # row number in the dataset
    input_ids: Tuple[int, ...]
    answer_length: int  # the last answer_length tokens are the loss targets

    @property
    def prompt_length(self) -> int:
        return len(self.input_ids) - self.answer_length


def prompt_encoding(
    tokenizer, prompt_messages, tokenization: Tokenization
) -> Tuple[str, Callable[[str], List[int]]]:
    """The prompt as text and the function that encodes it, as section 1 of the
    spec fixes them: the templated conversation with the generation prompt
    (encoded without adding special tokens), or, without a template, the turns'
    contents joined by newlines (encoded with the tokenizer's own special tokens).
    Evaluation generates from the same prompt ids."""
    if tokenization.use_chat_template:
        text = tokenizer.apply_chat_template(
            list(prompt_messages), tokenize=False, add_generation_prompt=True
        )
        return text, lambda t: list(tokenizer(t, add_special_tokens=False).input_ids)
    text = "\n".join(turn["content"] for turn in prompt_messages)
    return text, lambda t: list(tokenizer(t).input_ids)


def tokenize_example(
    tokenizer, prompt_messages, answer: str, tokenization: Tokenization, index: int
) -> Union[TokenizedSample, str]:
    """The sample's ids, or the reason (``SKIP_*``) it cannot be scored."""
    prompt_text, encode_prompt = prompt_encoding(tokenizer, prompt_messages, tokenization)
    closing = (
        tokenization.end_of_turn_id if tokenization.use_chat_template else tokenization.eos_token_id
    )
    answer_ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    if closing is not None:
        answer_ids.append(closing)
    if not answer_ids:
        raise LocateError(
            f"Sample {index} has an empty answer and the tokenizer has no eos token; "
            "there is nothing to score."
        )
    limit = tokenization.max_length
    if limit is None:
        prompt_ids = encode_prompt(prompt_text)
    else:
        # Only the last (limit - answer) prompt tokens can be kept: tokenise no more
        # of a long prompt than it takes to find them.
        prompt_ids, whole = last_tokens(encode_prompt, prompt_text, max(limit - len(answer_ids), 1))
        if not whole or len(prompt_ids) + len(answer_ids) > limit:
            if len(answer_ids) > limit - 1:  # at least one prompt token must precede it
                return SKIP_ANSWER_TOO_LONG
            prompt_ids = prompt_ids[len(prompt_ids) + len(answer_ids) - limit :]
    if not prompt_ids:  # the first answer token would have nothing to be predicted from
        return SKIP_NO_CONTEXT
    return TokenizedSample(index, tuple(prompt_ids + answer_ids), len(answer_ids))


# --------------------------------------------------------------------------- select


@dataclass
class SelectedSamples:
    """The samples a run scores, in order, and what was left out."""

    samples: List[TokenizedSample]
    fingerprint: str  # sha256 over the text of the samples used, in order
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_indices: Dict[str, List[int]] = field(default_factory=dict)
    data_format: str = "pair"

    @property
    def answer_tokens(self) -> int:
        return sum(s.answer_length for s in self.samples)


def selection_order(count: int, max_samples: Optional[int], seed: int) -> List[int]:
    """Dataset order, or a ``seed``-shuffled order when a subset is taken."""
    order = list(range(count))
    if max_samples is not None:
        random.Random(seed).shuffle(order)
    return order


def select_samples(
    rows: LocationRows,
    tokenizer,
    tokenization: Tokenization,
    fields: Fields,
    *,
    max_samples: Optional[int] = None,
    seed: int = 0,
) -> SelectedSamples:
    """Tokenise rows in selection order until ``max_samples`` usable ones are found."""
    if max_samples is not None and max_samples < 1:
        raise LocateError(f"--max-samples must be at least 1, not {max_samples}.")
    fmt = data_format(rows.columns, fields, rows.name)
    digest = hashlib.sha256()
    chosen: List[TokenizedSample] = []
    texts: List[Tuple[Any, str]] = []
    skipped: Counter = Counter()
    skipped_indices: Dict[str, List[int]] = {}
    for index in selection_order(len(rows.rows), max_samples, seed):
        if max_samples is not None and len(chosen) >= max_samples:
            break
        prompt_messages, answer = conversation(rows.rows[index], fmt, fields, index, rows.name)
        result = tokenize_example(tokenizer, prompt_messages, answer, tokenization, index)
        if isinstance(result, str):
            skipped[result] += 1
            skipped_indices.setdefault(result, []).append(index)
            continue
        chosen.append(result)
        texts.append((prompt_messages, answer))
    if not chosen:
        reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.items())
        raise LocateError(
            f"No sample of location data {rows.name} can be scored: all "
            f"{sum(skipped.values())} were skipped ({reasons}). Raise --max-length "
            f"(now {tokenization.max_length}) or shorten the answers."
        )
    for prompt_messages, answer in texts:
        content_digest_update(digest, prompt_messages, answer)
    return SelectedSamples(chosen, "sha256:" + digest.hexdigest(), skipped, skipped_indices, fmt)


def fingerprint_of(rows: LocationRows, fields: Fields, fmt: str, indices: Iterable[int]) -> str:
    """The dataset fingerprint over the given row indices, in order."""
    digest = hashlib.sha256()
    for index in indices:
        prompt_messages, answer = conversation(rows.rows[index], fmt, fields, index, rows.name)
        content_digest_update(digest, prompt_messages, answer)
    return "sha256:" + digest.hexdigest()
