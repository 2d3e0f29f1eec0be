"""The ``led_merging`` parameters and their validation (``LED_SPEC.md`` section 5).

One place for every rule about a config's values, used by the merge method
itself, by the whole-config checks before a merge, and by inspect and the card.
"""

from __future__ import annotations

from typing import Any, Mapping

from mergekit_led.core.election import Election
from mergekit_led.errors import ConfigError

METHOD_NAME = "led_merging"
PRETTY_NAME = "LED-Merging"
REFERENCE_URL = "https://arxiv.org/abs/2502.16770"
STORE_PARAMETERS = ("importance", "base_importance")
REQUIRED_PARAMETERS = ("density", *STORE_PARAMETERS)
BASE_REQUIRED = (
    "led_merging requires a base model: set `base_model:` in the config "
    "(or base=... for merge_state_dicts) to the model the fine-tuned models were "
    "trained from"
)


def parse_election(value: Any) -> Election:
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
            f"density for model {model} must be in (0, 1], got {value!r} (weight {weight!r})."
        )
    return value


def require_parameters(parameters: Mapping[str, Any], *, model: str) -> None:
    """Every fine-tuned model needs a density and its two stores."""
    for required in REQUIRED_PARAMETERS:
        if required not in parameters:
            raise ConfigError(
                f"Model {model} has no `{required}` parameter; led_merging needs "
                "density, importance and base_importance for every fine-tuned model."
            )


def is_scalar(value: Any) -> bool:
    """Whether a parameter is one value (not a per-tensor gradient or filter list)."""
    return isinstance(value, (str, int, float, bool))
