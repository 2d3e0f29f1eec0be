"""Election, Disjoint and Merge of LED-Merging as pure tensor functions.

Sections 2-4 of ``LED_SPEC.md``. No I/O here: the merge method feeds these from
importance stores, the tests from plain tensors.
"""

from __future__ import annotations

from enum import Enum
from typing import List, Optional, Sequence, Tuple

import torch

from mergekit_led.core import chunked

# Section 2's top(S, r), exact and without a sorted copy (re-exported: this module
# is where the rest of the package and the tests look for the election's math).
from mergekit_led.core.kth_largest import (  # noqa: F401
    BITS_VIEW,
    elected_count,
    kth_largest,
    top_mask,
    top_mask_from_threshold,
)
from mergekit_led.core.statistics import WeightStats, weight_stats


class Election(str, Enum):
    """Which weights count as important to a task (the paper's ablation names)."""

    both = "both"  # "11": important in the fine-tuned and in the base model
    model_only = "model_only"  # "01": important in the fine-tuned model only
    base_only = "base_only"  # "10": important in the base model only


def merge_chunk_size() -> int:
    """Elements per chunk of ``elect_and_merge`` on CPU.

    At most ``chunked.SERIAL_NUMEL``, so torch runs every operation on a chunk
    in the worker thread that called it (no parallel region, nothing to wait
    for on a busy machine), and the chunk's intermediates stay in the core's
    cache. Measured against larger chunks on torch's threads: docs/benchmarks.md.
    """
    return chunked.SERIAL_NUMEL


def merge_workers(numel: int) -> int:
    """Worker threads for one weight of ``numel`` elements (1: the calling thread)."""
    return chunked.worker_count(numel, merge_chunk_size(), _PARALLEL_MIN_NUMEL)


# Below this many elements a weight is merged in the calling thread alone: the
# hand-over to a worker costs more than its share of the work.
_PARALLEL_MIN_NUMEL = 1 << 18


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
        alone = first ^ second  # elected by exactly one of the two
        return [first & alone, second & alone]
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
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``base + sum_i weight_i * (1[T_i] * (theta_i - base))``.

    Arithmetic runs in float32 (or wider, for float64 inputs); the result has
    ``base``'s dtype. Outside every mask the result is ``base`` bit for bit.
    ``masks_disjoint=True`` promises that no element is in two masks (what the
    disjoint step guarantees), which allows a cheaper path with the same result.
    ``out`` (``base``'s shape and dtype) receives the result instead of a new tensor.
    """
    compute = torch.promote_types(base.dtype, torch.float32)
    base_c = base.to(compute)
    if masks_disjoint:
        # Each element takes at most one task vector: select, don't accumulate.
        merged = base_c
        for tensor, mask, weight in zip(finetuned, masks, weights):
            candidate = _task_vector(tensor, base_c)
            if weight != 1.0:
                candidate.mul_(weight)
            candidate.add_(base_c)
            merged = _where(mask, candidate, merged)
            del candidate
    else:
        delta = torch.zeros_like(base_c)
        touched = torch.zeros(base.shape, dtype=torch.bool, device=base.device)
        for tensor, mask, weight in zip(finetuned, masks, weights):
            task_vector = torch.where(mask, _task_vector(tensor, base_c), 0.0)
            if weight != 1.0:
                task_vector.mul_(weight)
            delta.add_(task_vector)
            touched |= mask
            del task_vector
        merged = _where(touched, base_c + delta, base_c)
    if out is None:
        return merged.to(base.dtype)
    return out.copy_(merged)  # the same rounding to base's dtype as ``.to``


def _where(mask: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, chosen, other)``, bit for bit.

    On CPU as a blend of the bit patterns, ``other ^ ((other ^ chosen) & -mask)``:
    ``torch.where`` there is scalar code, 2-3x slower than these three
    vectorised integer operations, and it was the largest cost of a merge.
    """
    bits = BITS_VIEW.get(chosen.dtype)
    if chosen.device.type != "cpu" or bits is None or other.dtype != chosen.dtype:
        return torch.where(mask, chosen, other)
    other_bits = other.view(bits)
    blended = torch.bitwise_xor(other_bits, chosen.view(bits))
    blended &= mask.to(bits).neg_()  # all ones where the mask holds
    blended ^= other_bits
    return blended.view(chosen.dtype)


def _task_vector(tensor: torch.Tensor, base_c: torch.Tensor) -> torch.Tensor:
    """``tensor - base_c`` in ``base_c``'s (compute) dtype."""
    if torch.promote_types(tensor.dtype, base_c.dtype) == base_c.dtype:
        # Widens ``tensor`` on the fly, exactly as ``tensor.to(dtype)`` would,
        # without a widened copy of it.
        return torch.sub(tensor, base_c)
    return tensor.to(base_c.dtype) - base_c


def elect_and_merge(
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    tops: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    weights: Sequence[float],
    election: Election,
    *,
    disjoint_step: bool = True,
    statistics_name: Optional[str] = None,
) -> Tuple[torch.Tensor, Optional[WeightStats]]:
    """Sections 2-4 for one weight: elect, make disjoint, merge.

    ``tops[i]`` is the pair ``(top(I_i, r_i), top(I_base,i, r_i))`` of model i.
    The result is exactly ``merge_masked(base, finetuned, disjoint(elected),
    weights)`` with ``elected[i] = elect(*tops[i], election)``; every step is
    elementwise, so on CPU it is evaluated chunk by chunk (in cache: a dozen
    whole-tensor operations would each stream the weight through memory and
    allocate a result) with the same bits. With ``statistics_name``, the weight's election
    counts (``weight_stats``) come back too, else ``None``.
    """
    masks_disjoint = disjoint_step or len(tops) == 1

    def combine(
        piece: Optional[slice] = None, into: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[WeightStats]]:
        def part(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if piece is None else tensor[piece]  # whole: 0-d tensors too

        elected = [elect(part(model_top), part(base_top), election) for model_top, base_top in tops]
        kept = disjoint(elected) if disjoint_step else elected
        merged = merge_masked(
            part(base),
            [part(tensor) for tensor in finetuned],
            kept,
            weights,
            masks_disjoint=masks_disjoint,
            out=into,
        )
        stats = weight_stats(statistics_name, elected, kept) if statistics_name else None
        return merged, stats

    chunk = merge_chunk_size()
    if base.device.type != "cpu" or base.numel() <= chunk:
        return combine()

    shape = base.shape
    base = base.reshape(-1)
    finetuned = [tensor.reshape(-1) for tensor in finetuned]
    tops = [(model_top.reshape(-1), base_top.reshape(-1)) for model_top, base_top in tops]
    out = torch.empty_like(base, memory_format=torch.contiguous_format)

    def merge_piece(piece: chunked.Span) -> Optional[WeightStats]:
        start, stop = piece
        return combine(slice(start, stop), out[start:stop])[1]

    pieces = list(chunked.chunks_of((0, base.numel()), chunk))
    counts = chunked.map_chunks(merge_piece, pieces, merge_workers(base.numel()))
    stats = None
    for piece_counts in counts:
        stats = piece_counts if stats is None else stats.plus(piece_counts)
    if stats is not None:
        stats.tensors = 1  # one weight, counted in chunks
    return out.view(shape), stats
