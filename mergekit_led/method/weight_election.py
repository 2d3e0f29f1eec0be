"""Election of one weight from its importance stores: the step the merge method,
``inspect`` and the model card share, so they can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from mergekit_led.core.elect_merge import Election, elect
from mergekit_led.store import ImportanceStore


@dataclass(frozen=True)
class TaskStorePair:
    """One fine-tuned model of a merge: its ratio and the two stores of its task."""

    label: str  # the model, as the config names it
    density: float
    importance: ImportanceStore  # the fine-tuned model's scores on its task data
    base_importance: ImportanceStore  # the base model's scores on the same data
    base_label: str = "base"

    @property
    def base_role(self) -> str:
        return f"{self.base_label} (base, scored on the data of {self.label})"


def top_sets(
    name: str,
    tasks: Sequence[TaskStorePair],
    *,
    device: Optional[torch.device] = None,
    finetuned: Optional[Sequence[torch.Tensor]] = None,
    base: Optional[torch.Tensor] = None,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(top(I_i, r_i), top(I_base,i, r_i))`` of weight ``name`` for each task.

    With the weights themselves (``finetuned``, one per task, and ``base``),
    each store is first checked to have been computed on that weight (shape and
    fingerprint): what the merge does. Without them only the scores are read:
    what inspect and the card do.
    """
    tops = []
    for index, task in enumerate(tasks):
        if finetuned is not None:
            task.importance.check_weight(name, finetuned[index], model=task.label)
        if base is not None:
            task.base_importance.check_weight(name, base, model=task.base_role)
        model_top = task.importance.top_mask(name, task.density, model=task.label, device=device)
        base_top = task.base_importance.top_mask(
            name, task.density, model=task.base_role, device=device
        )
        tops.append((model_top, base_top))
    return tops


def elect_weight(
    name: str,
    tasks: Sequence[TaskStorePair],
    election: Election,
    *,
    device: Optional[torch.device] = None,
) -> List[torch.Tensor]:
    """The elected sets ``N_i`` of weight ``name``, one boolean mask per task
    (from the scores alone: what inspect and the card show)."""
    return [
        elect(model_top, base_top, election)
        for model_top, base_top in top_sets(name, tasks, device=device)
    ]
