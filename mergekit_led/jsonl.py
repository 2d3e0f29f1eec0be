"""JSON Lines files: one JSON object per line (the demo's and the studies' data)."""

from __future__ import annotations

import json
import os
from typing import Iterable, List


def read_jsonl(path: str) -> List[dict]:
    """Every row of ``path``; blank lines are skipped."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str, rows: Iterable[dict]) -> str:
    """``rows`` into ``path`` (its folder made if needed), UTF-8 as is; returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
