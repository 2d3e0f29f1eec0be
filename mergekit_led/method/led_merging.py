"""The ``led_merging`` merge method for mergekit.

Per weight: read each model's two score tensors (fine-tuned and base, on that
task's data) from their importance stores, elect, make the elected sets
disjoint, and add the masked task vectors to the base (``LED_SPEC.md`` 2-4).
The ``MergeMethod`` object mergekit registers (this function's spec plus the
``locate_*`` parameters) is built in ``method.mergekit_method``; registration
is ``mergekit_led.method.register``.

A model may give ``importance_data`` (and ``locate_*`` options) instead of its
store paths; the stores are then taken from the store cache, and a missing one
stops the merge with the command that computes it (``mergekit_led.prepare``).
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Optional, Tuple

import torch
from mergekit.merge_methods.base import BasePolicy, InputContract, PerNonBase, TensorGroup
from mergekit.merge_methods.easy_define import merge_method

from mergekit_led.core.elect_merge import Election, elect_and_merge
from mergekit_led.core.parameters import (
    DATA_PARAMETER,
    METHOD_NAME,
    PRETTY_NAME,
    REFERENCE_URL,
    STORE_PARAMETERS,
    check_density,
    check_weight,
    parse_election,
)
from mergekit_led.errors import ConfigError
from mergekit_led.method import cached_store_paths, recording
from mergekit_led.method.weight_election import TaskStorePair, top_sets
from mergekit_led.store import load_importance
from mergekit_led.store.hub import store_path


# mergekit calls this (through ``method.mergekit_method.led_merging``) once per output
# weight: ``group`` holds the base model's tensor of that weight and each fine-tuned
# model's, and every ``PerNonBase`` parameter arrives as a mapping from model to its
# value (the config's parameters merged in mergekit's precedence). It returns the
# merged weight.
@merge_method(
    name=METHOD_NAME,
    pretty_name=PRETTY_NAME,
    reference_url=REFERENCE_URL,
    contract=InputContract(base=BasePolicy.REQUIRED),
)
def led_merging_kernel(
    group: TensorGroup,
    *,
    density: PerNonBase[float],
    # Optional for mergekit: a model may give importance_data instead; the
    # kernel refuses a model with neither (``_task_stores``).
    importance: PerNonBase[Optional[str]] = None,
    base_importance: PerNonBase[Optional[str]] = None,
    importance_data: PerNonBase[Optional[str]] = None,
    weight: PerNonBase[float] = 1.0,
    election: str = Election.both.value,
    disjoint: bool = True,
    locate_options: Optional[Dict[str, Any]] = None,
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

    tasks = []
    for entry in entries:
        given = {
            "importance": importance[entry.id],
            "base_importance": base_importance[entry.id],
            DATA_PARAMETER: importance_data[entry.id],
            **{key: values[entry.id] for key, values in (locate_options or {}).items()},
        }
        model_store, base_store = _task_stores(entry.id, group.base.id, given)
        tasks.append(
            TaskStorePair(
                label=str(entry.id),
                density=check_density(density[entry.id], model=str(entry.id), weight=name),
                importance=load_importance(model_store),
                base_importance=load_importance(base_store),
                base_label=str(group.base.id),
            )
        )
    finetuned = [entry.tensor for entry in entries]
    tops = top_sets(name, tasks, device=base.device, finetuned=finetuned, base=base)
    recording_now = recording.is_recording()
    merged, stats = elect_and_merge(
        base,
        finetuned,
        tops,
        [check_weight(weight[entry.id], model=str(entry.id), weight=name) for entry in entries],
        election,
        disjoint_step=disjoint,
        statistics_name=name if recording_now else None,
    )
    if recording_now:
        recording.record(stats, [task.label for task in tasks])
    return merged


def _task_stores(model: Hashable, base: Hashable, given: Dict[str, Any]) -> Tuple[str, str]:
    """The local folders of one model's two stores: as given (a path or a Hub
    reference), or found in the store cache by ``importance_data``."""
    if all(given.get(role) is not None for role in STORE_PARAMETERS):
        return store_path(given["importance"]), store_path(given["base_importance"])
    paths = cached_store_paths(model, base, given)
    return paths["importance"], paths["base_importance"]
