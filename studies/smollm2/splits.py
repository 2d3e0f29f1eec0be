"""Seeded train / val / test splits by prompt.

A prompt lands in exactly one split: rows are deduplicated by their normalised prompt first
(Do-Not-Answer repeats a few prompts across categories), so no near-copy can sit on both sides
of a split. The assignment depends only on the seed and the set of prompts, not on the order
the rows were read in; with ``stratify`` each group (a harm category, look-alike or general)
is split on its own, so every split holds every group in proportion.
"""

from __future__ import annotations

import random
import re
import unicodedata
from typing import Dict, List, Mapping, Optional, Sequence

Row = Dict[str, str]


def prompt_key(prompt: str) -> str:
    """What makes two prompts the same: Unicode NFKC, case and whitespace ignored."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", prompt)).strip().casefold()


def distinct_rows(rows: Sequence[Row]) -> List[Row]:
    """The rows with a prompt not seen before (the first of each kept), in order."""
    seen, kept = set(), []
    for row in rows:
        key = prompt_key(row["prompt"])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def split_by_prompt(
    rows: Sequence[Row],
    fractions: Mapping[str, float],
    seed: int,
    *,
    stratify: Optional[str] = None,
) -> Dict[str, List[Row]]:
    """Split distinct ``rows`` into the named parts (``fractions`` sum to 1; the last part
    takes the rounding remainder). Each part is in a seeded random order, so its first N rows
    (``limit: N`` in an EVAL.yml) are a random sample too."""
    if abs(sum(fractions.values()) - 1.0) > 1e-9 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum to 1: {dict(fractions)}")
    groups: Dict[str, List[Row]] = {}
    for row in distinct_rows(rows):
        groups.setdefault(row.get(stratify, "") if stratify else "", []).append(row)
    parts: Dict[str, List[Row]] = {name: [] for name in fractions}
    names = list(fractions)
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda row: prompt_key(row["prompt"]))
        random.Random(f"{seed}/{group}").shuffle(members)
        start = 0
        for index, name in enumerate(names):
            end = (
                len(members)
                if index == len(names) - 1
                else start + round(fractions[name] * len(members))
            )
            parts[name].extend(members[start:end])
            start = end
    for name in names:
        random.Random(f"{seed}/order/{name}").shuffle(parts[name])
    return parts
