"""The ``led_merging`` merge method for mergekit.

Per weight: read each model's two score tensors (fine-tuned and base, on that
task's data) from their importance stores, elect, make the elected sets
disjoint, and add the masked task vectors to the base (``LED_SPEC.md`` 2-4).
Registration with mergekit is ``mergekit_led.method.register``.
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

from mergekit_led.core.election import Election, merge_masked
from mergekit_led.core.election import disjoint as make_disjoint
from mergekit_led.core.parameters import (
    BASE_REQUIRED,
    METHOD_NAME,
    PRETTY_NAME,
    REFERENCE_URL,
    check_density,
    check_weight,
    parse_election,
)
from mergekit_led.core.statistics import weight_stats
from mergekit_led.errors import ConfigError
from mergekit_led.method import recording
from mergekit_led.method.election import TaskScores, elect_weight
from mergekit_led.store import load_importance


@merge_method(
    name=METHOD_NAME,
    pretty_name=PRETTY_NAME,
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
    entries = group.non_base
    if not entries:
        return base

    tasks = [
        TaskScores(
            label=str(entry.id),
            density=check_density(density[entry.id], model=str(entry.id), weight=name),
            importance=load_importance(importance[entry.id]),
            base_importance=load_importance(base_importance[entry.id]),
            base_label=str(group.base.id),
        )
        for entry in entries
    ]
    finetuned = [entry.tensor for entry in entries]
    elected = elect_weight(
        name, tasks, election, device=base.device, finetuned=finetuned, base=base
    )
    kept = make_disjoint(elected) if disjoint else elected
    if recording.is_recording():
        recording.record(weight_stats(name, elected, kept), [task.label for task in tasks])
    return merge_masked(
        base,
        finetuned,
        kept,
        [check_weight(weight[entry.id], model=str(entry.id), weight=name) for entry in entries],
        masks_disjoint=disjoint or len(kept) == 1,
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
            raise ConfigError(f"{BASE_REQUIRED}{where}.")
        super().validate_inputs(input_ids, base_id, group_name=group_name)


led_merging = LEDMergeMethod(_led_merging_kernel.spec, _led_merging_kernel.implementation)
