"""The ``led_merging`` ``MergeMethod`` that ``register()`` hands to mergekit.

``easy_define.merge_method`` derives a spec from ``led_merging_kernel``'s
signature; mergekit binds only the parameters a spec declares and drops any
other config key. Each ``locate_*`` option a config may set per model
(``core.locate_options.LOCATE_CONFIG_OPTIONS``) is therefore declared here as
its own optional per-model parameter, and gathered back into the kernel's one
``locate_options`` argument when mergekit calls it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Hashable, Optional, Sequence

import torch
from mergekit.merge_methods.base import (
    FunctionalGroupMergeMethod,
    ParameterScope,
    ParameterSpec,
    TensorGroup,
)

from mergekit_led.core.locate_options import LOCATE_CONFIG_OPTIONS
from mergekit_led.core.parameters import BASE_REQUIRED, LOCATE_PREFIX
from mergekit_led.errors import ConfigError
from mergekit_led.method.led_merging import led_merging_kernel

LOCATE_PARAMETERS = tuple(LOCATE_PREFIX + name for name in LOCATE_CONFIG_OPTIONS)


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


def _implementation(group: TensorGroup, **parameters: Any) -> torch.Tensor:
    """The kernel, with the ``locate_*`` parameters mergekit binds gathered into one."""
    locate_options = {key: parameters.pop(key) for key in LOCATE_PARAMETERS}
    return led_merging_kernel.implementation(group, locate_options=locate_options, **parameters)


# The spec easy_define derives from the kernel's signature, with ``locate_options``
# replaced by one optional per-model parameter per locate option a config may set.
_LOCATE_SPECS = tuple(
    ParameterSpec(
        name=LOCATE_PREFIX + option,
        value_type=Optional[kind],
        scope=ParameterScope.NON_BASE,
        default=None,
    )
    for option, kind in LOCATE_CONFIG_OPTIONS.items()
)
_SPEC = dataclasses.replace(
    led_merging_kernel.spec,
    parameters=tuple(p for p in led_merging_kernel.spec.parameters if p.name != "locate_options")
    + _LOCATE_SPECS,
)
led_merging = LEDMergeMethod(_SPEC, _implementation)
