"""The real-model study's protocol, fixed before the reported seeds: the
recipes (full and ``--quick``), the grids, the evaluation sizes, the EVAL.yml
files of a split and the location sets (docs/real_model_results.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import yaml

from mergekit_led.jsonl import read_jsonl
from studies.common import merging
from studies.common.sample import Sample
from studies.smollm2.finetune import (
    FULL_FAMILY,
    QUICK_FAMILY,
    FamilyRecipe,
    refused,
)

WORLD = "smollm2"
METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "model_stock", "led_merging")
MODEL_ROWS = (
    ("Instruct (SmolLM2-135M-Instruct, the merge base)", "instruct", ()),
    ("Safety (Instruct + alignment)", "safety", ("safety",)),
    ("Math", "math", ("math",)),
    ("Code", "code", ("code",)),
)
# Merges are computed in float32 and written, loaded and evaluated in bfloat16
# (as SmolLM2 is shipped); the fine-tuned models are kept in float32 (exact task
# vectors) and evaluated in bfloat16 too, so every row is evaluated alike.
EVAL_DTYPE = "bfloat16"

# The grids (GRID.yml syntax, docs/sweep.md), fixed before the reported seeds:
# each method's own knobs at two or three published values.
FULL_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": [0.5, 1.0]},
    "ties": {"density": [0.2, 0.5], "weight": 1.0},
    "dare_ties": {"density": [0.2, 0.5], "weight": 1.0},
    "breadcrumbs": {"density": [0.5, 0.9], "weight": 1.0, "gamma": merging.BREADCRUMBS_GAMMA},
    "model_stock": {},
    "led_merging": {"density": {"safety": [0.5, 0.9], "math, code": [0.1, 0.3]}},
}
QUICK_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": 1.0},
    "ties": {"density": 0.5, "weight": 1.0},
    "dare_ties": {"density": 0.5, "weight": 1.0},
    "breadcrumbs": {"density": 0.9, "weight": 1.0, "gamma": merging.BREADCRUMBS_GAMMA},
    "model_stock": {},
    "led_merging": {"density": {"safety": 0.9, "math, code": 0.3}},
}


@dataclass(frozen=True)
class EvalSizes:
    """How many prompts of each set, and how many new tokens each answer gets."""

    val_limit: Optional[int]  # every val set
    harmful_test_limit: Optional[int]  # HarmBench (None: all 200)
    benign_test_limit: Optional[int]
    task_test_limit: Optional[int]  # math and code test
    refusal_tokens: int = 16  # a refusal shows in the first words (greedy decoding)
    math_tokens: int = 40  # "53 + 27 = 80. The answer is 80."
    code_tokens: int = 24  # the printed output (a sorted list of six numbers is ~18 tokens)
    batch_size: int = 32


@dataclass(frozen=True)
class RealRecipe:
    family: FamilyRecipe
    location_samples: int  # per task, from the train split
    sizes: EvalSizes
    grid: Dict[str, dict]
    layers: Optional[int] = None  # keep only the first N decoder layers (--quick)


FULL = RealRecipe(
    FULL_FAMILY,
    location_samples=16,
    sizes=EvalSizes(
        val_limit=24, harmful_test_limit=None, benign_test_limit=None, task_test_limit=50
    ),
    grid=FULL_GRID,
)
QUICK = RealRecipe(
    QUICK_FAMILY,
    location_samples=2,
    sizes=EvalSizes(
        val_limit=4,
        harmful_test_limit=4,
        benign_test_limit=4,
        task_test_limit=4,
        refusal_tokens=4,
        math_tokens=4,
        code_tokens=4,
    ),
    grid=QUICK_GRID,
    layers=4,
)


# --------------------------------------------------------------------------- data


def eval_spec_data(split_dir: str, split: str, sizes: EvalSizes) -> dict:
    """The EVAL.yml of ``split``: val = Do-Not-Answer val, test = HarmBench."""

    def path(name: str) -> str:
        return os.path.join(split_dir, f"{name}.jsonl")

    test = split == "test"
    limits = {
        "harmful": sizes.harmful_test_limit if test else sizes.val_limit,
        "benign": sizes.benign_test_limit if test else sizes.val_limit,
        "task": sizes.task_test_limit if test else sizes.val_limit,
    }

    def limited(entry: dict, limit: Optional[int]) -> dict:
        return {**entry, "limit": limit} if limit is not None else entry

    return {
        "harmful": limited(
            {
                "data": path("harmbench_test" if test else "donotanswer_val"),
                "max_new_tokens": sizes.refusal_tokens,
            },
            limits["harmful"],
        ),
        "benign": limited(
            {"data": path(f"benign_{split}"), "max_new_tokens": sizes.refusal_tokens},
            limits["benign"],
        ),
        "tasks": {
            "math": limited(
                {
                    "data": path(f"math_{split}"),
                    "answer": "last_number",
                    "max_new_tokens": sizes.math_tokens,
                },
                limits["task"],
            ),
            "code": limited(
                {
                    "data": path(f"code_{split}"),
                    "answer": "first_line",
                    "normalize": False,
                    "max_new_tokens": sizes.code_tokens,
                },
                limits["task"],
            ),
        },
        **({"more_sets": _more_sets(split_dir, sizes)} if test else {}),
        "generation": {"batch_size": sizes.batch_size, "chat_template": "auto"},
    }


def _more_sets(split_dir: str, sizes: EvalSizes) -> dict:
    """StrongREJECT (when the assets have it) and XSTest's safe prompts, at the test limits."""
    from studies.smollm2.evalsets import test_more_sets

    strongreject = os.path.isfile(os.path.join(split_dir, "strongreject_test.jsonl"))
    limits = {"harmful": sizes.harmful_test_limit, "benign": sizes.benign_test_limit}
    more = {}
    for name, (kind, file) in test_more_sets(strongreject).items():
        entry = {
            "kind": kind,
            "data": os.path.join(split_dir, f"{file}.jsonl"),
            "max_new_tokens": sizes.refusal_tokens,
        }
        more[name] = {**entry, "limit": limits[kind]} if limits[kind] is not None else entry
    return more


def write_real_eval_spec(folder: str, split_dir: str, split: str, sizes: EvalSizes):
    from mergekit_led.evaluation import parse_eval_spec

    data = eval_spec_data(split_dir, split, sizes)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{split}_eval.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return parse_eval_spec(data, where=f"the smollm2 world's {split} evaluation")


def location_sets(
    split_dir: str, benign_file: str, samples: int, seed: int
) -> Dict[str, List[Sample]]:
    """Per task, ``samples`` rows of its train split: safety = half refused
    Do-Not-Answer prompts, half benign prompts with the instruct model's own
    answers (as the toy demo mixes them); math / code = task rows."""
    import random

    rng = random.Random(f"{seed}-location")
    harmful = [r["prompt"] for r in read_jsonl(os.path.join(split_dir, "donotanswer_train.jsonl"))]
    benign = read_jsonl(benign_file)
    half = samples // 2
    safety = [Sample(p, r) for p, r in refused(rng.sample(harmful, half), rng)]
    safety += [Sample(r["prompt"], r["response"]) for r in rng.sample(benign, samples - half)]
    out = {"safety": safety}
    for task in ("math", "code"):
        rows = read_jsonl(os.path.join(split_dir, f"{task}_train.jsonl"))
        out[task] = [Sample(r["prompt"], r["response"]) for r in rng.sample(rows, samples)]
    return out
