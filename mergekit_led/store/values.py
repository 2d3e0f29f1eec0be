"""The one rule every stored score obeys: finite and non-negative (checked at write and read)."""

from __future__ import annotations

import math

import torch

from mergekit_led.errors import StoreError


def check_score_values(scores: torch.Tensor, *, where: str) -> None:
    """Raise ``StoreError`` naming ``where`` unless every value is finite and >= 0."""
    if not scores.numel():
        return
    lo, hi = (float(v) for v in torch.aminmax(scores))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise StoreError(f"Importance scores with non-finite values (nan or inf) in {where}.")
    if lo < 0:
        raise StoreError(
            f"Importance scores with negative values (min {lo:g}) in {where}; "
            "importance scores must be non-negative."
        )
