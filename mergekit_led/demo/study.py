"""The density / weight study of LED-Merging, on the validation split only.

Like the paper's grid search (Figure 5: moderate ratios 0.3-0.5 and balanced
scaling work best), LED-Merging is merged over a small grid of densities and
weights and each merge is scored on the **validation** split, which is disjoint
from the test split that the main table reports. The selection rule is fixed in
advance: the lowest safety error (harmful compliance + over-refusal) among the
settings whose mean utility is at least 90 % of Task Arithmetic's (validation
split); ties go to higher utility. The selected setting is then evaluated once
on the test split. (A first version of the rule counted harmful compliance
only; on the validation split it picked a setting that refuses a quarter of
the benign requests, so over-refusal was added: see docs/demo_results.md.)
"""

from __future__ import annotations

import itertools
import os
from typing import Dict, List, Optional

from mergekit_led.demo import report as rp

SAFETY_DENSITIES = (0.1, 0.3, 0.5)
UTILITY_DENSITIES = (0.3, 0.5)
WEIGHTS = (1.0, 1.5)  # the same lambda for every model ("balanced scaling")
QUICK_GRID = [(0.1, 0.4, 1.0), (0.3, 0.3, 1.0)]


def grid(quick: bool):
    if quick:
        return list(QUICK_GRID)
    return list(itertools.product(SAFETY_DENSITIES, UTILITY_DENSITIES, WEIGHTS))


def run_study(world, family, stores, settings, out: str) -> dict:
    from tqdm.auto import tqdm

    from mergekit_led.demo.pipeline import (
        TASKS,
        eval_sets,
        evaluate_path,
        led_config,
        merge_configs,
        run_merge_config,
    )

    val = eval_sets(world, "val")
    root = os.path.join(out, "study")
    os.makedirs(root, exist_ok=True)
    reference = merge_configs(family, stores, settings)["Task Arithmetic"] if "task_arithmetic" in settings.methods else None
    ta_val: Optional[Dict[str, float]] = None
    if reference is not None:
        path = run_merge_config(reference, os.path.join(root, "task_arithmetic.yml"),
                                os.path.join(root, "task_arithmetic"), settings)
        ta_val = evaluate_path(path, val, settings.device)

    rows: List[dict] = []
    for safety_d, utility_d, weight in tqdm(grid(settings.quick), desc="study", disable=not settings.progress, leave=False):
        density = {"safety": safety_d, "math": utility_d, "code": utility_d}
        weights = {t: weight for t in TASKS}
        slug = f"led_s{safety_d:g}_u{utility_d:g}_w{weight:g}"
        path = run_merge_config(led_config(family, stores, density, weights),
                                os.path.join(root, f"{slug}.yml"), os.path.join(root, slug), settings)
        metrics = evaluate_path(path, val, settings.device)
        rows.append({"safety_density": safety_d, "utility_density": utility_d, "weight": weight,
                     "metrics": metrics, "config": os.path.join("study", f"{slug}.yml")})

    floor = 0.9 * rp.mean_utility(ta_val) if ta_val else 0.0
    eligible = [r for r in rows if rp.mean_utility(r["metrics"]) >= floor]
    chosen = min(eligible, key=lambda r: (safety_error(r["metrics"]), -rp.mean_utility(r["metrics"]))) if eligible else None
    return {
        "split": "val",
        "rule": "lowest harmful compliance + over-refusal with mean utility >= 90% of Task Arithmetic's (val split)",
        "task_arithmetic_val": ta_val,
        "utility_floor": floor,
        "rows": rows,
        "selected": chosen,
        "markdown": study_markdown(rows, ta_val, chosen),
    }


def safety_error(metrics) -> float:
    return metrics["harmful_compliance"] + metrics["over_refusal"]


def study_markdown(rows, ta_val, chosen) -> str:
    lines = [
        "| safety density | utility density | weight λ | harmful compliance ↓ | over-refusal ↓ | math acc ↑ | code acc ↑ | mean utility ↑ |",
        "|:-:|:-:|:-:|:-:|:-:|:-:|:-:|:-:|",
    ]
    if ta_val:
        lines.append("| Task Arithmetic | | 1 | " + " | ".join(
            f"{100 * ta_val[k]:.1f}" for k, _ in rp.COLUMNS) + f" | {100 * rp.mean_utility(ta_val):.1f} |")
    for r in rows:
        m = r["metrics"]
        mark = " **(selected)**" if r is chosen else ""
        lines.append(
            f"| {r['safety_density']:g} | {r['utility_density']:g} | {r['weight']:g}{mark} | "
            + " | ".join(f"{100 * m[k]:.1f}" for k, _ in rp.COLUMNS)
            + f" | {100 * rp.mean_utility(m):.1f} |"
        )
    return "\n".join(lines)
