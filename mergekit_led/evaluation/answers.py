"""Utility tasks: the answer extractors and the exact-match rule.

An extractor takes the part of a text that is the answer; it is applied to the
model's answer and to the reference alike (so a GSM8K reference ``... #### 18``
and an answer ``... so the total is 18.`` both give ``18`` under
``last_number``). Both are then normalised (``normalize_answer``) and compared
for equality. An answer the extractor finds nothing in is wrong.

* ``full``: the whole text;
* ``first_line``: the first non-empty line;
* ``last_number``: the last number (``-1,234.50`` -> ``-1234.5``);
* ``regex``: the first match of ``pattern``, its group 1 when it has groups.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Callable, Dict, Optional

from mergekit_led.evaluation.refusal import normalize_text

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# Punctuation around an answer that does not change it ("Paris." == "paris").
_OUTER_PUNCTUATION = " .,;:!?\"'()[]{}"


def _full(text: str) -> Optional[str]:
    return text


def _first_line(text: str) -> Optional[str]:
    return next((line for line in text.splitlines() if line.strip()), None)


def _last_number(text: str) -> Optional[str]:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        value = Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None
    # 18, 18.0 and 18.00 are one answer; -0 is 0.
    value = value.normalize() + 0
    return f"{value:f}"


EXTRACTORS: Dict[str, Callable[[str], Optional[str]]] = {
    "full": _full,
    "first_line": _first_line,
    "last_number": _last_number,
}


def extract(text: str, extractor: str, pattern: Optional[str] = None) -> Optional[str]:
    """The answer part of ``text``, or None when there is none."""
    if extractor == "regex":
        match = re.search(pattern or "", text)
        if match is None:
            return None
        return match.group(1) if match.re.groups else match.group(0)
    return EXTRACTORS[extractor](text)


def normalize_answer(text: str) -> str:
    """Case, whitespace and outer punctuation do not count."""
    return normalize_text(text).strip(_OUTER_PUNCTUATION)


def is_correct(
    answer: str,
    reference: str,
    extractor: str,
    pattern: Optional[str] = None,
    *,
    normalize: bool = True,
) -> tuple[bool, Optional[str], Optional[str]]:
    """``(correct, extracted answer, extracted reference)``; without ``normalize``
    the two extracted strings must be equal once stripped of outer whitespace."""
    got = extract(answer, extractor, pattern)
    want = extract(reference, extractor, pattern)
    if got is None or want is None:
        return False, got, want
    clean = normalize_answer if normalize else str.strip
    return clean(got) == clean(want), got, want
