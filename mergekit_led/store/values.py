"""The one rule every stored score obeys: finite and non-negative (checked at write and read)."""

from __future__ import annotations

import torch

from mergekit_led.core.kth_largest import check_score_domain
from mergekit_led.errors import ScoreDomainError, StoreError


def check_score_values(scores: torch.Tensor, *, where: str) -> None:
    """Raise ``StoreError`` naming ``where`` unless every value is finite and >= 0."""
    try:
        check_score_domain(scores)
    except ScoreDomainError as error:
        raise score_value_error(error, where=where) from None  # cause: its text is in the message


def score_value_error(error: ScoreDomainError, *, where: str) -> StoreError:
    """The ``StoreError`` for scores outside the domain, naming ``where``."""
    if error.lowest is None:
        return StoreError(f"Importance scores with non-finite values (nan or inf) in {where}.")
    return StoreError(
        f"Importance scores with negative values (min {error.lowest:g}) in {where}; "
        "importance scores must be non-negative."
    )
