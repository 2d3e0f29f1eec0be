"""The ``led_merging`` merge method for mergekit.

Per weight: read each model's two score tensors (fine-tuned and base, on that
task's data) from their importance stores, elect, make the elected sets
disjoint, and add the masked task vectors to the base (``LED_SPEC.md`` 2-4).
Importing this module registers the method with mergekit (idempotently).
"""

from __future__ import annotations

from typing import Hashable, Optional, Sequence

import torch

from mergekit.merge_methods.base import (
    BasePolicy,
    FunctionalGroupMergeMethod,
    InputContract,
    PerNonBase,
    TensorGroup,
)
from mergekit.merge_methods.easy_define import merge_method
from mergekit.merge_methods.registry import register, registered_methods
from mergekit_led.election import Election, disjoint as make_disjoint, elect, merge_masked
from mergekit_led.errors import ConfigError
from mergekit_led.store import load_importance

METHOD_NAME = "led_merging"
REFERENCE_URL = "https://arxiv.org/abs/2502.16770"


@merge_method(
    name=METHOD_NAME,
    pretty_name="LED-Merging",
    reference_url=REFERENCE_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
)
def _led_merging_kernel(
    group: TensorGroup,
    *,
    density: PerNonBase[float],
    importance: PerNonBase[str],
    base_importance: PerNonBase[str],
    weight: PerNonBase[float] = 1.0,
    election: str = Election.both.value,
    disjoint: bool = True,
) -> torch.Tensor:
    name = group.metadata.name
    if not name:
        raise ConfigError(
            "led_merging reads scores by weight name; this tensor group has none "
            "(pass name=... to merge_tensors)."
        )
    election = parse_election(election)
    base = group.base.tensor
    base_label = model_label(group.base.id)
    entries = group.non_base
    if not entries:
        return base

    masks = []
    for entry in entries:
        label = model_label(entry.id)
        ratio = check_density(density[entry.id], model=label, weight=name)
        fine_store = load_importance(importance[entry.id])
        base_store = load_importance(base_importance[entry.id])
        base_role = f"{base_label} (base, scored on the data of {label})"
        fine_store.check_weight(name, entry.tensor, model=label)
        base_store.check_weight(name, base, model=base_role)
        model_top = fine_store.top_mask(name, ratio, model=label, device=base.device)
        base_top = base_store.top_mask(name, ratio, model=base_role, device=base.device)
        masks.append(elect(model_top, base_top, election))
        del model_top, base_top

    if disjoint:
        masks = make_disjoint(masks)
    return merge_masked(
        base,
        [entry.tensor for entry in entries],
        masks,
        [weight[entry.id] for entry in entries],
        masks_disjoint=disjoint or len(masks) == 1,
    )


class LEDMergeMethod(FunctionalGroupMergeMethod):
    """mergekit's functional group method, with a clearer error without a base."""

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Optional[Hashable] = None,
        *,
        group_name: Optional[str] = None,
    ) -> None:
        if base_id is None or base_id not in input_ids:
            where = f" (merging {group_name})" if group_name else ""
            raise ConfigError(
                "led_merging requires a base model: set `base_model:` in the config "
                "(or base=... for merge_state_dicts) to the model the fine-tuned "
                f"models were trained from{where}."
            )
        super().validate_inputs(input_ids, base_id, group_name=group_name)


led_merging = LEDMergeMethod(_led_merging_kernel.spec, _led_merging_kernel.implementation)


def parse_election(value) -> Election:
    try:
        return Election(value)
    except ValueError:
        choices = ", ".join(e.value for e in Election)
        raise ConfigError(
            f"Unknown election {value!r} for led_merging; choose one of: {choices}."
        ) from None


def check_density(value: float, *, model: str, weight: str) -> float:
    if not (0.0 < value <= 1.0):
        raise ConfigError(
            f"density for model {model} must be in (0, 1], got {value!r} "
            f"(weight {weight!r})."
        )
    return value


def model_label(model_id: Hashable) -> str:
    """A readable name for a merge input: a model path, or a state-dict key."""
    return str(model_id)


def register_led_merging() -> None:
    """Register ``led_merging`` with mergekit; a second call does nothing."""
    if any(method.spec.name == METHOD_NAME for method in registered_methods()):
        return
    register(led_merging)


register_led_merging()
