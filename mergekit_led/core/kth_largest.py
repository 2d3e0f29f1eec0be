"""Exact k-th largest score and ``top(S, r)`` masks without a sorted copy.

``LED_SPEC.md`` section 2 elects ``{e : S[e] > 0 and S[e] >= t}`` where ``t`` is
the k-th largest score, ``k = floor(r * N)``. Stores used to keep a sorted copy of
every score tensor so that ``t`` was a one-element read; this module finds ``t``
exactly at merge time in about one pass over the scores instead.

Why the integer view is exact: scores reach this module validated finite and
non-negative, and non-negative IEEE floats order exactly like their bit patterns
read as signed integers. The one other value allowed, ``-0.0``, reads as the most
negative integer, below ``+0.0``; that only matters when the k-th largest score is
a zero, and then the mask is "every score above zero" whichever zero it is.

CPU algorithm (``_cpu_select``), all on the integer view:

1. Sample a few thousand scores (fixed seed) and take from the sorted sample a
   bracket ``[lo, hi]`` that holds the k-th largest with overwhelming probability.
2. One pass in cache-sized chunks, split over worker threads (numpy releases the
   GIL): write ``S >= lo`` straight into the output mask, count it, and collect the
   few scores inside the bracket with their positions.
3. The counts prove whether the bracket holds rank k. If it does, ``t`` is an exact
   selection among the collected scores, and the mask is fixed up at the collected
   positions below ``t``. If not (a sample can be unlucky, a tensor hostile), an
   exact selection over the whole tensor runs instead: correctness never depends
   on the sample, only speed does.

CUDA (and any other device) uses ``torch.topk`` on the smaller side, a radix
selection there that is far faster than ``torch.kthvalue``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from mergekit_led.core import chunked
from mergekit_led.errors import ScoreDomainError

# Float dtype -> the signed integer dtype of the same width (the bit-pattern view;
# the merge's bit blend in ``election`` uses it too).
BITS_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.bfloat16: torch.int16,
    torch.float16: torch.int16,
}
# Up to this many elements numpy's vectorised introselect over the whole tensor
# beats sampling plus the chunked pass (measured on 1-16 threads).
_DIRECT_MAX_NUMEL = 1 << 20
# Elements per chunk of the pass (``_chunk_size``; a number here overrides it).
# Each numpy call releases the GIL, but the hand-over costs more than a call on a
# small chunk: on a 16-core machine 1M-element chunks scaled best (256K: 2x
# slower at 8-16 threads), while with 1-4 threads 256K is faster (35% for float32
# scores on 2 cores: the chunk's repeated passes stay in the core's cache).
_CHUNK: int | None = None
# Below this many elements the pass runs in the calling thread.
_PARALLEL_MIN_NUMEL = 1 << 19
# Sample size (N / 64, within these bounds) and bracket half-width in binomial
# standard deviations: at 5 sigma an honest sample misses the bracket with
# probability about 1e-6 per call, and the bracket holds about
# 10 * sqrt(r * (1 - r) / sample) of the tensor (1.2% at density 0.1, full sample).
_SAMPLE = 1 << 16
_SAMPLE_MIN = 1 << 12
_SIGMAS = 5.0
_SAMPLE_SEED = 0x5E1EC7
_NO_INDEX = np.empty(0, dtype=np.intp)
# Float dtype -> (the pattern of -0.0, the largest finite pattern) on its signed view.
_VALID_BITS = {
    torch.float64: (-(1 << 63), 0x7FEFFFFFFFFFFFFF),
    torch.float32: (-(1 << 31), 0x7F7FFFFF),
    torch.bfloat16: (-(1 << 15), 0x7F7F),
    torch.float16: (-(1 << 15), 0x7BFF),
}


def check_score_domain(scores: torch.Tensor) -> None:
    """Raise ``ScoreDomainError`` unless every score is finite and ``>= 0``."""
    if not scores.numel():
        return
    lo, hi = (float(v) for v in torch.aminmax(scores.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ScoreDomainError("scores include non-finite values (nan or inf)")
    if lo < 0:
        raise ScoreDomainError(f"scores include negative values (min {lo:g})", lowest=lo)


def elected_count(numel: int, ratio: float) -> int:
    """``k = floor(r * N)``, in the float arithmetic the authors' code uses."""
    return math.floor(ratio * numel)


def kth_largest(scores: torch.Tensor, k: int) -> float:
    """The k-th largest value of ``scores`` (1-based, counting duplicates).

    Exact for every dtype; the returned Python float is one of the tensor's own
    values (so ``scores >= t`` compares exactly in the tensor's dtype), except
    that a zero k-th largest may come back as ``0.0`` for a ``-0.0`` element.
    float32/float64/bfloat16/float16 scores must be finite and non-negative
    (``-0.0`` allowed); that is what makes the fast bit-pattern path exact.
    """
    numel = scores.numel()
    k = int(k)
    if not 1 <= k <= numel:
        raise ValueError(f"kth_largest needs 1 <= k <= {numel} (the element count), got k={k}.")
    flat = scores.detach().reshape(-1)
    if flat.device.type != "cpu":
        return _topk_kth_largest(flat, k)
    if flat.dtype not in BITS_VIEW:
        return float(torch.kthvalue(flat, numel - k + 1).values)
    bits = _bits(flat)
    if _direct(numel, flat.dtype):
        return _as_float(_partition_kth(bits, k), flat.dtype)
    threshold_bits, _ = _cpu_select(bits, k, mask_out=None)
    return _as_float(threshold_bits, flat.dtype)


def top_mask_from_threshold(scores: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """``{e : S[e] > 0 and S[e] >= t}``; ``threshold=None`` is the empty set (k = 0)."""
    if threshold is None:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if threshold > 0:
        return scores >= threshold
    # Zero scores are never elected, whatever the ratio.
    return scores > 0


def top_mask(scores: torch.Tensor, ratio: float, *, validate: bool = False) -> torch.Tensor:
    """``top(S, r)``: elements above zero and at least the k-th largest score.

    Elements tied at the threshold are all included; ``k = 0`` is the empty set.
    Same preconditions as :func:`kth_largest`; ``validate=True`` checks them
    (raising ``ScoreDomainError``) instead of assuming them. On CPU the
    threshold search, the mask and that check share one pass over the scores.
    """
    numel = scores.numel()
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"top_mask needs a ratio in [0, 1], got {ratio!r}.")
    k = elected_count(numel, ratio)
    flat = scores.detach().reshape(-1)
    fused = (
        k > 0
        and flat.device.type == "cpu"
        and flat.dtype in BITS_VIEW
        and not _direct(numel, flat.dtype)
    )
    if validate and not fused:
        check_score_domain(flat)
    if k == 0:
        return top_mask_from_threshold(scores, None)
    if not fused:
        return top_mask_from_threshold(scores, kth_largest(scores, k))
    bits = _bits(flat)
    mask = np.empty(numel, dtype=np.bool_)
    threshold_bits, mask_done = _cpu_select(
        bits, k, mask_out=mask, limits=_VALID_BITS[flat.dtype] if validate else None
    )
    if not mask_done:  # the exact fallback ran: build the mask from the threshold
        return top_mask_from_threshold(scores, _as_float(threshold_bits, flat.dtype))
    return torch.from_numpy(mask).reshape(scores.shape)


# --------------------------------------------------------------------------- CPU


def _direct(numel: int, dtype: torch.dtype) -> bool:
    """Whether a whole-tensor introselect beats the sampled bracket: up to
    ``_DIRECT_MAX_NUMEL`` elements, a quarter of that for 16-bit scores (which
    must be widened first; measured on 2 cores: bfloat16 at 1M, 2.0 ms bracketed
    against 6.0 ms direct)."""
    limit = _DIRECT_MAX_NUMEL if dtype.itemsize >= 4 else _DIRECT_MAX_NUMEL >> 2
    return numel <= limit


def _bits(flat: torch.Tensor) -> np.ndarray:
    """The 1-d tensor's bit patterns as a numpy signed-integer array (no copy)."""
    return flat.contiguous().view(BITS_VIEW[flat.dtype]).numpy()


def _as_float(threshold_bits: int, dtype: torch.dtype) -> float:
    return float(torch.tensor(threshold_bits, dtype=BITS_VIEW[dtype]).view(dtype))


def _partition_kth(values: np.ndarray, k: int) -> int:
    """Exact k-th largest of a 1-d integer array (introselect; copies the array)."""
    if values.itemsize < 4:
        # numpy's vectorised selection covers 32- and 64-bit integers only; the
        # 16-bit one is several times slower than widening first.
        values = values.astype(np.int32)
    position = values.size - k
    return int(np.partition(values, position)[position])


def _bracket(bits: np.ndarray, k: int) -> tuple[int, int]:
    """Bit patterns ``lo <= hi`` likely to enclose the k-th largest (a guess only)."""
    numel = bits.size
    size = min(_SAMPLE, max(_SAMPLE_MIN, numel >> 6))
    sample = bits[_sample_positions(numel, size)]
    if sample.itemsize < 4:
        sample = sample.astype(np.int32)  # numpy's fast selection: 32- and 64-bit only
    share = k / numel
    centre = size * (1.0 - share)  # the k-th largest's position in the sorted sample
    half_width = _SIGMAS * math.sqrt(size * share * (1.0 - share)) + 2.0
    low_index = math.floor(centre - half_width)
    high_index = math.ceil(centre + half_width)
    # Two order statistics, one selection each: numpy's vectorised selection
    # takes one index at a time (with two it falls back to a slower one).
    lo = int(np.partition(sample, low_index)[low_index]) if low_index >= 0 else 1
    hi = (
        int(np.partition(sample, high_index)[high_index])
        if high_index < size
        else int(np.iinfo(bits.dtype).max)
    )
    # Only positive scores can be elected: the mask is never below the smallest
    # positive pattern (1), and a bracket that ends up empty is fine (see below).
    lo = max(lo, 1)
    return lo, max(hi, lo - 1)


@functools.lru_cache(maxsize=32)
def _sample_positions(numel: int, size: int) -> np.ndarray:
    """``size`` positions drawn with a fixed seed (the same for every tensor of
    ``numel`` elements, so a merge's many same-shaped weights draw them once)."""
    positions = np.random.default_rng(_SAMPLE_SEED).integers(0, numel, size)
    positions.flags.writeable = False
    return positions


def _cpu_select(
    bits: np.ndarray,
    k: int,
    mask_out: np.ndarray | None,
    limits: tuple[int, int] | None = None,
) -> tuple[int, bool]:
    """The k-th largest bit pattern of ``bits``; with ``mask_out``, also its mask.

    Returns ``(threshold_bits, mask_done)``. ``mask_done`` says whether
    ``mask_out`` now holds ``top(S, r)``; it is False only after the exact
    fallback, whose caller builds the mask from the threshold. With ``limits``
    (``_VALID_BITS`` of the float dtype), bits that are not finite scores >= 0
    raise ``ScoreDomainError``.
    """
    lo, hi = _bracket(bits, k)
    above_lo, in_band, band_positions, band_values, valid = _bracket_pass(
        bits, lo, hi, mask_out, limits
    )
    if not valid:
        raise ScoreDomainError("scores include negative, infinite or NaN values")
    above_hi = above_lo - in_band
    if above_hi < k <= above_lo:
        # Proven: rank k lies among the scores in [lo, hi].
        if lo == hi:  # one value there (ties): nothing to select, nothing to fix up
            return lo, mask_out is not None
        threshold_bits = _partition_kth(band_values, k - above_hi)
        if mask_out is not None:
            mask_out[band_positions[band_values < threshold_bits]] = False
        return threshold_bits, mask_out is not None
    if above_lo < k and lo == 1:
        # Fewer than k scores are positive: the k-th largest is a zero, and the
        # mask ``S >= smallest positive`` already written is ``S > 0``.
        return 0, mask_out is not None
    # The sample misled us: exact selection over the whole tensor.
    return _partition_kth(bits, k), False


def _bracket_pass(
    bits: np.ndarray,
    lo: int,
    hi: int,
    mask_out: np.ndarray | None,
    limits: tuple[int, int] | None,
) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
    """One chunked pass over ``bits``.

    Counts ``bits >= lo`` (writing that mask to ``mask_out`` when given) and
    ``lo <= bits <= hi``, and collects the positions and values of the latter
    (not when ``lo >= hi``: a single tied value needs no selection). With
    ``limits``, also tells whether every value is a finite non-negative score
    (the last item), while the chunk is in cache: a separate check would be
    one more pass over the whole tensor.
    """

    chunk_size = _chunk_size()

    def scan(span: tuple[int, int]) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
        span_start, span_stop = span
        scratch_size = min(chunk_size, span_stop - span_start)
        scratch_at_least = np.empty(scratch_size, dtype=np.bool_) if mask_out is None else None
        scratch_band = np.empty(scratch_size, dtype=np.bool_)
        above_lo = in_band = 0
        valid = True
        positions_found, values_found = [], []
        for start, stop in chunked.chunks_of(span, chunk_size):
            chunk = bits[start:stop]
            if limits is not None and valid:
                valid = _chunk_valid(chunk, *limits)
            at_least_lo = np.greater_equal(
                chunk,
                lo,
                out=mask_out[start:stop]
                if mask_out is not None
                else scratch_at_least[: stop - start],
            )
            above_lo += int(np.count_nonzero(at_least_lo))
            if lo > hi:  # an empty bracket: nothing in it
                continue
            band = np.equal(chunk, lo, out=scratch_band[: stop - start]) if lo == hi else None
            if band is not None:  # one value: counting it is all the proof needs
                in_band += int(np.count_nonzero(band))
                continue
            band = np.less_equal(chunk, hi, out=scratch_band[: stop - start])
            np.logical_and(band, at_least_lo, out=band)
            positions = np.flatnonzero(band)
            values_found.append(chunk[positions])
            positions += start
            positions_found.append(positions)
            in_band += positions.size
        return (
            above_lo,
            in_band,
            np.concatenate(positions_found) if positions_found else _NO_INDEX,
            np.concatenate(values_found) if values_found else bits[:0],
            valid,
        )

    parts = chunked.map_spans(
        scan, bits.size, chunk=chunk_size, parallel_min_numel=_PARALLEL_MIN_NUMEL
    )
    return (
        sum(part[0] for part in parts),
        sum(part[1] for part in parts),
        np.concatenate([part[2] for part in parts]),
        np.concatenate([part[3] for part in parts]),
        all(part[4] for part in parts),
    )


def _chunk_size() -> int:
    if _CHUNK is not None:
        return _CHUNK
    return 1 << 18 if torch.get_num_threads() <= 4 else 1 << 20


def _chunk_valid(chunk: np.ndarray, negative_zero: int, largest_finite: int) -> bool:
    """Whether every bit pattern of ``chunk`` is a finite score >= 0 (``-0.0`` allowed).

    On the signed view, finite non-negative floats are ``0 .. largest_finite``;
    ``+inf`` and NaN lie above, every negative float (and negative NaN) below
    zero, ``-0.0`` at the very bottom.
    """
    lowest, highest = int(chunk.min()), int(chunk.max())
    if highest > largest_finite:
        return False
    if lowest >= 0:
        return True
    # Something below zero: fine only if every such pattern is -0.0 (rare).
    return lowest == negative_zero and int(np.count_nonzero(chunk < 0)) == int(
        np.count_nonzero(chunk == negative_zero)
    )


# --------------------------------------------------------------------------- other devices


def _topk_kth_largest(flat: torch.Tensor, k: int) -> float:
    """Exact k-th largest with ``torch.topk`` on the smaller side (radix select on CUDA)."""
    numel = flat.numel()
    if k <= numel - k + 1:
        return float(torch.topk(flat, k, largest=True, sorted=False).values.min())
    return float(torch.topk(flat, numel - k + 1, largest=False, sorted=False).values.max())
