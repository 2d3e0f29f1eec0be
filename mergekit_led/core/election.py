"""Election, Disjoint and Merge of LED-Merging as pure tensor functions.

Sections 2-4 of ``LED_SPEC.md``. No I/O here: the merge method feeds these from
importance stores, the tests from plain tensors.
"""

from __future__ import annotations

from enum import Enum
from typing import List, Sequence

import torch

# Section 2's top(S, r), exact and without a sorted copy (re-exported: this module
# is where the rest of the package and the tests look for the election's math).
from mergekit_led.core.selection import (  # noqa: F401
    elected_count,
    kth_largest,
    top_mask,
    top_mask_from_threshold,
)


class Election(str, Enum):
    """Which weights count as important to a task (the paper's ablation names)."""

    both = "both"  # "11": important in the fine-tuned and in the base model
    model_only = "model_only"  # "01": important in the fine-tuned model only
    base_only = "base_only"  # "10": important in the base model only


def elect(model_top: torch.Tensor, base_top: torch.Tensor, election: Election) -> torch.Tensor:
    """The important set ``N_i`` of one model from its two top sets."""
    election = Election(election)
    if election == Election.both:
        return model_top & base_top
    if election == Election.model_only:
        return model_top & ~base_top
    return base_top & ~model_top


def disjoint(masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """``T_i = N_i \\ U_{j != i} N_j``: drop every element elected by two or more models."""
    if len(masks) < 2:
        return list(masks)
    if len(masks) == 2:
        first, second = masks
        return [first & ~second, second & ~first]
    votes = torch.zeros(masks[0].shape, dtype=torch.uint8, device=masks[0].device)
    for mask in masks:
        votes += mask
    unique = votes == 1
    return [mask & unique for mask in masks]


def merge_masked(
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    masks_disjoint: bool = False,
) -> torch.Tensor:
    """``base + sum_i weight_i * (1[T_i] * (theta_i - base))``.

    Arithmetic runs in float32 (or wider, for float64 inputs); the result has
    ``base``'s dtype. Outside every mask the result is ``base`` bit for bit.
    ``masks_disjoint=True`` promises that no element is in two masks (what the
    disjoint step guarantees), which allows a cheaper path with the same result.
    """
    compute = torch.promote_types(base.dtype, torch.float32)
    base_c = base.to(compute)
    if masks_disjoint:
        # Each element takes at most one task vector: select, don't accumulate.
        merged = base_c
        for tensor, mask, weight in zip(finetuned, masks, weights):
            candidate = tensor.to(compute) - base_c
            if weight != 1.0:
                candidate.mul_(weight)
            candidate.add_(base_c)
            merged = torch.where(mask, candidate, merged)
            del candidate
        return merged.to(base.dtype)

    delta = torch.zeros_like(base_c)
    touched = torch.zeros(base.shape, dtype=torch.bool, device=base.device)
    for tensor, mask, weight in zip(finetuned, masks, weights):
        task_vector = torch.where(mask, tensor.to(compute) - base_c, 0.0)
        if weight != 1.0:
            task_vector.mul_(weight)
        delta.add_(task_vector)
        touched |= mask
        del task_vector
    merged = torch.where(touched, base_c + delta, base_c)
    return merged.to(base.dtype)
