"""Election, Disjoint and Merge of LED-Merging as pure tensor functions.

Sections 2-4 of ``LED_SPEC.md``. No I/O here: the merge method feeds these from
importance stores, the tests from plain tensors.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import List, Optional, Sequence

import torch


class Election(str, Enum):
    """Which weights count as important to a task (the paper's ablation names)."""

    both = "both"  # "11": important in the fine-tuned and in the base model
    model_only = "model_only"  # "01": important in the fine-tuned model only
    base_only = "base_only"  # "10": important in the base model only


def elected_count(numel: int, ratio: float) -> int:
    """``k = floor(r * N)``, in the float arithmetic the authors' code uses."""
    return int(math.floor(ratio * numel))


def top_mask_from_threshold(
    scores: torch.Tensor, threshold: Optional[float]
) -> torch.Tensor:
    """``{e : S[e] > 0 and S[e] >= t}``; ``threshold=None`` is the empty set (k = 0)."""
    if threshold is None:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if threshold > 0:
        return scores >= threshold
    # Zero scores are never elected, whatever the ratio.
    return scores > 0


def kth_largest(scores: torch.Tensor, k: int) -> float:
    """The k-th largest value of ``scores`` (1-based, counting duplicates)."""
    flat = scores.reshape(-1)
    return float(torch.kthvalue(flat, flat.numel() - k + 1).values)


def top_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``top(S, r)``: elements above zero and at least the k-th largest score.

    Elements tied at the threshold are all included.
    """
    k = elected_count(scores.numel(), ratio)
    return top_mask_from_threshold(scores, kth_largest(scores, k) if k else None)


def elect(
    model_top: torch.Tensor, base_top: torch.Tensor, election: Election
) -> torch.Tensor:
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
