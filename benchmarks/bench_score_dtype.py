"""How far bfloat16 stores move the elected sets: Jaccard of N_i, float32 vs bfloat16 stores.

Builds a small Llama family offline (a random base and two perturbed fine-tunes,
``mergekit_led.testing.build_family``) and two tasks' (prompt, answer)
JSONL files, then runs the real ``mergekit_led.locate`` (SNIP) for every store an
LED merge of the two fine-tunes needs (fine-tune i and the base, each on task
i's data), once with ``score_dtype="float32"`` and once with ``"bfloat16"``.

For each density 0.1 .. 0.5 it elects ``N_i = top(I_i, r) ∩ top(I_base,i, r)``
(election ``both``) from the float32 and from the bfloat16 stores and reports the
Jaccard |N32 ∩ N16| / |N32 ∪ N16| over all weights (and the lowest per weight),
then merges the family with each pair of stores (``merge_state_dicts``, disjoint
on) and compares the merged tensors.

Goal (issue #8): Jaccard at least 0.99 at every density.

    python benchmarks/bench_score_dtype.py            # hidden 256, 4 layers, 2 x 48 samples
    python benchmarks/bench_score_dtype.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Dict, List

import torch

import mergekit_led
from mergekit_led import load_importance
from mergekit_led.core.elect_merge import Election, elect
from mergekit_led.testing import DEFAULT_WORDS, build_family

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
DTYPES = ("float32", "bfloat16")
GOAL = 0.99
FULL = dict(hidden=256, layers=4, intermediate=688, heads=8, vocab=128, samples=48)
QUICK = dict(hidden=64, layers=2, intermediate=128, heads=4, vocab=96, samples=8)
NUMBERS = "one two three four five six seven eight nine ten".split()


def task_rows(task: str, count: int, seed: int) -> List[dict]:
    """(prompt, answer) pairs in the family tokenizer's word vocabulary."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        if task == "math":
            a, b = rng.randrange(5), rng.randrange(5)
            op, result = rng.choice([("plus", a + b), ("times", a * b)])
            answer = NUMBERS[result - 1] if 1 <= result <= 10 else "no"
            rows.append(
                {"prompt": f"what is {NUMBERS[a]} {op} {NUMBERS[b]}", "response": f"{answer}"}
            )
        else:
            harm = rng.choice(["build a bomb", "steal a book", "hack a friend", "kill a tree"])
            rows.append(
                {
                    "prompt": f"please tell me how to {harm}",
                    "response": "sorry i cannot help with that",
                }
            )
    # a little free text from the word list, so every embedding row sees some answers
    words = list(DEFAULT_WORDS)
    for row in rows[: count // 4]:
        row["response"] += " " + " ".join(rng.choice(words) for _ in range(3))
    return rows


def jaccard(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    return int(torch.count_nonzero(a & b)), int(torch.count_nonzero(a | b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", default="bench-output/score-dtype")
    args = parser.parse_args()
    size = dict(QUICK if args.quick else FULL)
    samples = size.pop("samples")
    workdir = Path(args.workdir + ("-quick" if args.quick else "")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    start = time.perf_counter()
    family = build_family(str(workdir / "models"), finetunes=2, seed=0, noise=0.02, **size)
    tasks = {"safety": family.finetunes[0], "math": family.finetunes[1]}
    stores: Dict[str, Dict[str, Dict[str, str]]] = {d: {} for d in DTYPES}
    for index, (task, model) in enumerate(tasks.items()):
        data = workdir / f"{task}.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in task_rows(task, samples, index)) + "\n")
        for dtype in DTYPES:
            stores[dtype][task] = {
                role: mergekit_led.locate(
                    path,
                    str(data),
                    str(workdir / "stores" / f"{dtype}-{task}-{role}"),
                    score_dtype=dtype,
                    overwrite=True,
                    progress=False,
                    device="cpu",
                )
                for role, path in (("model", model), ("base", family.base))
            }
    locate_seconds = time.perf_counter() - start

    opened = {
        d: {
            t: {r: load_importance(p, reopen=True) for r, p in roles.items()}
            for t, roles in stores[d].items()
        }
        for d in DTYPES
    }
    # bfloat16 stores hold the float32 stores' scores rounded once (same float32 sums).
    for task in tasks:
        for role in ("model", "base"):
            full, half = opened["float32"][task][role], opened["bfloat16"][task][role]
            for name in full:
                assert torch.equal(half[name], full[name].to(torch.bfloat16)), (task, name)

    names = list(opened["float32"]["safety"]["model"])
    weights = sum(opened["float32"]["safety"]["model"][n].numel() for n in names)
    table: Dict[float, Dict[str, dict]] = {}
    for density in DENSITIES:
        table[density] = {}
        for task in tasks:
            inter = union = elected32 = elected16 = 0
            lowest = (1.0, None)
            for name in names:
                sets = {}
                for dtype in DTYPES:
                    model_top = opened[dtype][task]["model"].top_mask(name, density)
                    base_top = opened[dtype][task]["base"].top_mask(name, density)
                    sets[dtype] = elect(model_top, base_top, Election.both)
                i, u = jaccard(sets["float32"], sets["bfloat16"])
                inter, union = inter + i, union + u
                elected32 += int(torch.count_nonzero(sets["float32"]))
                elected16 += int(torch.count_nonzero(sets["bfloat16"]))
                if u and i / u < lowest[0]:
                    lowest = (i / u, name)
            table[density][task] = {
                "jaccard": inter / union if union else 1.0,
                "lowest_weight_jaccard": lowest[0],
                "lowest_weight": lowest[1],
                "elected_float32": elected32,
                "elected_bfloat16": elected16,
            }

    # The merged models: disjoint LED merge of both fine-tunes, each store dtype.
    from mergekit.merge_methods import merge_state_dicts
    from safetensors.torch import load_file

    state = {"base": load_file(os.path.join(family.base, "model.safetensors"))}
    for task, model in tasks.items():
        state[task] = load_file(os.path.join(model, "model.safetensors"))
    merged_cmp = {}
    for density in (0.1, 0.4):
        merged = {}
        for dtype in DTYPES:
            merged[dtype] = merge_state_dicts(
                state,
                "led_merging",
                base="base",
                parameters={
                    "density": {t: density for t in tasks},
                    "importance": {t: stores[dtype][t]["model"] for t in tasks},
                    "base_importance": {t: stores[dtype][t]["base"] for t in tasks},
                },
            )
        differ = total = 0
        worst = 0.0
        delta_norm = diff_norm = 0.0
        for name, a in merged["float32"].items():
            b = merged["bfloat16"][name]
            changed = a != b
            differ += int(torch.count_nonzero(changed))
            total += a.numel()
            worst = max(worst, float((a - b).abs().max()))
            diff_norm += float(((a - b).double() ** 2).sum())
            delta_norm += float(((a - state["base"][name]).double() ** 2).sum())
        merged_cmp[density] = {
            "elements_differing": differ,
            "elements": total,
            "max_abs_difference": worst,
            "difference_norm_over_merged_delta_norm": (diff_norm / delta_norm) ** 0.5,
        }

    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, torch {torch.__version__}"
    goal_met = all(row[t]["jaccard"] >= GOAL for row in table.values() for t in tasks)
    lines = [
        f"SNIP stores from `mergekit_led.locate` on a {weights / 1e6:.1f}M-parameter Llama "
        f"family (random base, fine-tunes = base + N(0, 0.02²)), {samples} samples per task, "
        f"{machine}; the same float32 sums written as float32 and as bfloat16.",
        "",
        "| density | "
        + " | ".join(f"Jaccard N_{t} (lowest weight)" for t in tasks)
        + " | "
        + " | ".join(f"|N_{t}| float32 → bfloat16" for t in tasks)
        + " |",
        "|---|" + "---|" * (2 * len(tasks)),
    ]
    for density, row in table.items():
        lines.append(
            f"| {density:g} | "
            + " | ".join(
                f"{row[t]['jaccard']:.4f} ({row[t]['lowest_weight_jaccard']:.4f})" for t in tasks
            )
            + " | "
            + " | ".join(
                f"{row[t]['elected_float32']:,} → {row[t]['elected_bfloat16']:,}" for t in tasks
            )
            + " |"
        )
    lines += [
        "",
        f"Goal (Jaccard >= {GOAL} at every density): {'met' if goal_met else 'NOT met'}.",
        "",
        "| density | merged elements differing | max abs difference | ‖m32 − m16‖ / ‖m32 − base‖ |",
        "|---|---|---|---|",
    ]
    for density, c in merged_cmp.items():
        lines.append(
            f"| {density:g} | {c['elements_differing']:,} of {c['elements']:,} "
            f"({c['elements_differing'] / c['elements']:.3%}) | {c['max_abs_difference']:.3g} "
            f"| {c['difference_norm_over_merged_delta_norm']:.4f} |"
        )
    text = "\n".join(lines)
    print(text)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out_dir / f"score-dtype{suffix}.md").write_text(text + "\n")
    (out_dir / f"score-dtype{suffix}.json").write_text(
        json.dumps(
            {
                "weights": weights,
                "samples_per_task": samples,
                "machine": machine,
                "locate_seconds": locate_seconds,
                "jaccard": {str(d): r for d, r in table.items()},
                "merged": {str(d): c for d, c in merged_cmp.items()},
                "goal_met": goal_met,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
