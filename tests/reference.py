"""An independent plain-torch reference of LED-Merging, sections 2-4 of LED_SPEC.md.

Written from the specification only; nothing here imports ``mergekit_led``. It is
deliberately naive (a full sort per top set, explicit loops over models) so that
it is easy to check by eye against the spec:

    k = floor(r * N)
    top(S, r) = { e : S[e] > 0 and S[e] >= t },  t = the k-th largest value of S
    k = 0 -> empty set
    both:       N_i = top(I_i, r_i) & top(I_base_i, r_i)
    model_only: N_i = top(I_i, r_i) minus top(I_base_i, r_i)
    base_only:  N_i = top(I_base_i, r_i) minus top(I_i, r_i)
    T_i = N_i minus union_{j != i} N_j        (disjoint; T_i = N_i when off)
    merged = base + sum_i w_i * (1[T_i] * (theta_i - base)),  float32 (or wider),
             then cast to the output dtype; equal to base outside every T_i.
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import torch

ELECTIONS = ("both", "model_only", "base_only")


# --------------------------------------------------------------------------- section 2


def elected_k(numel: int, ratio: float) -> int:
    """k = floor(r * N) (computed in Python floats)."""
    return math.floor(ratio * numel)


def top_set(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """top(S, r) as a boolean tensor of S's shape."""
    flat = scores.detach().reshape(-1).to(torch.float64)
    k = elected_k(flat.numel(), ratio)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    ordered = torch.sort(flat, descending=True).values
    t = ordered[k - 1]  # k-th largest, duplicates counted
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    for index in range(flat.numel()):
        value = flat[index]
        chosen[index] = bool(value > 0) and bool(value >= t)
    return chosen.reshape(scores.shape)


def top_set_fast(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The same set as ``top_set``, vectorised (for large random sweeps)."""
    flat = scores.detach().reshape(-1).to(torch.float64)
    k = elected_k(flat.numel(), ratio)
    if k <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    t = torch.sort(flat, descending=True).values[k - 1]
    return ((flat > 0) & (flat >= t)).reshape(scores.shape)


def elect_set(
    model_scores: torch.Tensor,
    base_scores: torch.Tensor,
    ratio: float,
    election: str = "both",
) -> torch.Tensor:
    """N_i from the fine-tuned model's and the base model's scores on task i."""
    model_top = top_set_fast(model_scores, ratio)
    base_top = top_set_fast(base_scores, ratio)
    if election == "both":
        return model_top & base_top
    if election == "model_only":
        return model_top & ~base_top
    if election == "base_only":
        return base_top & ~model_top
    raise ValueError(f"unknown election {election!r}")


# --------------------------------------------------------------------------- section 3


def disjoint_sets(sets: Sequence[torch.Tensor], enabled: bool = True) -> List[torch.Tensor]:
    """T_i = N_i minus the union of every other N_j."""
    sets = [s.clone() for s in sets]
    if not enabled:
        return sets
    result = []
    for i, own in enumerate(sets):
        others = torch.zeros_like(own)
        for j, other in enumerate(sets):
            if j != i:
                others = others | other
        result.append(own & ~others)
    return result


# --------------------------------------------------------------------------- section 4


def merge_tensor(
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    sets: Sequence[torch.Tensor],
    weights: Sequence[float],
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """base + sum_i w_i * 1[T_i] * (theta_i - base), in ``compute_dtype``, then cast.

    Elements outside every T_i are copied from ``base`` untouched.
    """
    out_dtype = out_dtype or base.dtype
    b = base.to(compute_dtype)
    total = b.clone()
    for theta, chosen, w in zip(finetuned, sets, weights):
        tau = theta.to(compute_dtype) - b
        contribution = torch.where(chosen, tau * w, torch.zeros_like(tau))
        total = torch.where(chosen, total + contribution, total)
    union = torch.zeros(base.shape, dtype=torch.bool)
    for chosen in sets:
        union = union | chosen
    result = total.to(out_dtype)
    return torch.where(union, result, base.to(out_dtype))


def led_merge_tensor(
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    model_scores: Sequence[torch.Tensor],
    base_scores: Sequence[torch.Tensor],
    densities: Sequence[float],
    weights: Optional[Sequence[float]] = None,
    election: str = "both",
    disjoint: bool = True,
):
    """Full reference for one weight: returns (merged float32-arithmetic result, T sets)."""
    weights = list(weights) if weights is not None else [1.0] * len(finetuned)
    sets = [
        elect_set(ms, bs, r, election) for ms, bs, r in zip(model_scores, base_scores, densities)
    ]
    sets = disjoint_sets(sets, disjoint)
    return merge_tensor(base, finetuned, sets, weights), sets


def led_merge_state_dict(
    base: Mapping[str, torch.Tensor],
    finetuned: Sequence[Mapping[str, torch.Tensor]],
    model_scores: Sequence[Mapping[str, torch.Tensor]],
    base_scores: Sequence[Mapping[str, torch.Tensor]],
    densities: Sequence[float],
    weights: Optional[Sequence[float]] = None,
    election: str = "both",
    disjoint: bool = True,
) -> Dict[str, tuple]:
    """name -> (reference merged tensor, T sets) for every weight of ``base``."""
    result = {}
    for name, b in base.items():
        result[name] = led_merge_tensor(
            b,
            [ft[name] for ft in finetuned],
            [s[name] for s in model_scores],
            [s[name] for s in base_scores],
            densities,
            weights,
            election,
            disjoint,
        )
    return result


# --------------------------------------------------------------------------- checks


def assert_matches_reference(
    out: torch.Tensor,
    base: torch.Tensor,
    finetuned: Sequence[torch.Tensor],
    sets: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    exact: bool,
    name: str = "",
) -> None:
    """Check a merged tensor against the reference.

    Always exact: shape, dtype (the base's) and bit equality with ``base`` outside
    every T_i. Inside: with ``exact`` (each element receives at most one task
    vector) every element must equal the float32 *or* the float64 evaluation of
    ``base + w * (theta - base)`` after the cast (the spec allows float32 or wider);
    otherwise ``allclose`` to the float64 evaluation.
    """
    where = f" (weight {name})" if name else ""
    assert out.shape == base.shape, f"shape {tuple(out.shape)} != {tuple(base.shape)}{where}"
    assert out.dtype == base.dtype, f"dtype {out.dtype} != {base.dtype}{where}"
    union = torch.zeros(base.shape, dtype=torch.bool)
    for chosen in sets:
        union = union | chosen
    outside_equal = torch.equal(out[~union], base[~union])
    assert outside_equal, f"output differs from base outside every T_i{where}"
    ref32 = merge_tensor(base, finetuned, sets, weights, torch.float32)
    ref64 = merge_tensor(base, finetuned, sets, weights, torch.float64)
    if exact:
        ok = (out == ref32) | (out == ref64)
        bad = int((~ok).sum())
        assert bad == 0, (
            f"{bad} of {out.numel()} elements differ from base + w*(theta-base)"
            f"{where}; max |diff| {float((out.double() - ref64.double()).abs().max()):g}"
        )
    else:
        if out.dtype == torch.bfloat16:
            rtol, atol = 1.6e-2, 1e-3
        elif out.dtype == torch.float16:
            rtol, atol = 2e-3, 1e-4
        else:
            rtol, atol = 1e-5, 1e-6
        close = torch.allclose(out.double(), ref64.double(), rtol=rtol, atol=atol)
        assert close, (
            f"output not close to the reference{where}; max |diff| "
            f"{float((out.double() - ref64.double()).abs().max()):g}"
        )
