"""How far bfloat16 stores move LED-Merging's elected sets, on the demo's SNIP scores.

On every seed the demo computes the selected LED setting's stores twice, with
``locate_score_dtype: float32`` (the default) and ``bfloat16``: the same locate
runs (float32 sums), written once in each dtype. For each density here, every
task model's elected set ``N_i`` (election ``both``) is elected from each
dtype's stores by ``method.weight_election.elect_weight`` (what the merge runs) and the
two are compared by their Jaccard overlap, pooled over all weights:
``sum |N32 ∩ N16| / sum |N32 ∪ N16|``. The goal of issue 8 is at least
``GOAL`` at every density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence

import torch

from mergekit_led.core.elect_merge import Election
from mergekit_led.method.weight_election import TaskStorePair, elect_weight
from mergekit_led.store import load_importance

DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
GOAL = 0.99

# {task: {"model": store, "base": store}}: a task model's store and the base's on its data
TaskStores = Mapping[str, Mapping[str, str]]


@dataclass
class Overlap:
    """Two elected sets of one task model, counted over all weights."""

    intersection: int = 0
    union: int = 0
    first: int = 0  # |N| elected from the first stores
    second: int = 0

    def add(self, first: torch.Tensor, second: torch.Tensor) -> None:
        self.intersection += int(torch.count_nonzero(first & second))
        self.union += int(torch.count_nonzero(first | second))
        self.first += int(torch.count_nonzero(first))
        self.second += int(torch.count_nonzero(second))

    @property
    def jaccard(self) -> float:
        """``|A ∩ B| / |A ∪ B|``; two empty sets are the same set (1)."""
        return self.intersection / self.union if self.union else 1.0


def _opened(stores: TaskStores, density: float) -> list:
    return [
        TaskStorePair(
            task,
            density,
            load_importance(paths["model"]),
            load_importance(paths["base"]),
        )
        for task, paths in stores.items()
    ]


def elected_overlap(
    first: TaskStores,
    second: TaskStores,
    densities: Sequence[float] = DENSITIES,
    *,
    election: Election = Election.both,
) -> Dict[float, Dict[str, Overlap]]:
    """Per density and task, the overlap of ``N_i`` elected from ``first``'s and
    from ``second``'s stores (the same tasks, the same model family)."""
    if list(first) != list(second):
        raise ValueError(f"different tasks: {list(first)} and {list(second)}")
    tasks = list(first)
    names = list(load_importance(first[tasks[0]]["model"]))
    out: Dict[float, Dict[str, Overlap]] = {}
    for density in densities:
        scores_first, scores_second = _opened(first, density), _opened(second, density)
        counts = {task: Overlap() for task in tasks}
        for name in names:
            masks_first = elect_weight(name, scores_first, election)
            masks_second = elect_weight(name, scores_second, election)
            for task, mask_first, mask_second in zip(tasks, masks_first, masks_second):
                counts[task].add(mask_first, mask_second)
        out[density] = counts
    return out


def rounded_once(float32_stores: TaskStores, bfloat16_stores: TaskStores) -> bool:
    """Whether every bfloat16 score is its float32 twin's score rounded once:
    the two dtypes' stores hold the same run's sums."""
    for task, roles in float32_stores.items():
        for role, path in roles.items():
            full = load_importance(path)
            half = load_importance(bfloat16_stores[task][role])
            if full.dtype != torch.float32 or half.dtype != torch.bfloat16:
                return False
            if set(full) != set(half):
                return False
            for name in full:
                if not torch.equal(half[name], full[name].to(torch.bfloat16)):
                    return False
    return True


def measure(
    float32_stores: TaskStores,
    bfloat16_stores: TaskStores,
    densities: Sequence[float] = DENSITIES,
) -> dict:
    """One seed's agreement, JSON-ready: per density (as text) and task the
    Jaccard and both set sizes, and whether the stores are one run's scores."""
    overlap = elected_overlap(float32_stores, bfloat16_stores, densities)
    return {
        "election": Election.both.value,
        "densities": list(densities),
        "jaccard": {
            f"{d:g}": {task: o.jaccard for task, o in tasks.items()} for d, tasks in overlap.items()
        },
        "elected": {
            f"{d:g}": {
                task: {"float32": o.first, "bfloat16": o.second} for task, o in tasks.items()
            }
            for d, tasks in overlap.items()
        },
        "rounded_once": rounded_once(float32_stores, bfloat16_stores),
    }
