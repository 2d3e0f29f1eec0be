"""The ``led_merging`` parameters and their validation (``LED_SPEC.md`` section 5).

One place for every rule about a config's values, used by the merge method
itself, by the whole-config checks before a merge, and by inspect and the card.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

from mergekit_led.core.elect_merge import Election
from mergekit_led.errors import ConfigError

METHOD_NAME = "led_merging"
PRETTY_NAME = "LED-Merging"
REFERENCE_URL = "https://arxiv.org/abs/2502.16770"
STORE_PARAMETERS = ("importance", "base_importance")
REQUIRED_PARAMETERS = ("density", *STORE_PARAMETERS)
# A model may name its task's location data instead of its two stores; the
# stores are then computed (``mergekit-led merge``/``prepare``) and cached.
DATA_PARAMETER = "importance_data"
# A config sets locate's options as ``locate_<option>`` parameters, per model or
# for every model (``core.locate_options.LOCATE_CONFIG_OPTIONS`` lists them).
LOCATE_PREFIX = "locate_"
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
        ) from None  # cause: the message lists the choices


def parse_number(value: Any, *, parameter: str, model: str) -> float:
    """A numeric parameter's value as a float: a number, or text that reads as one
    (YAML reads ``1e-1`` as text; mergekit accepts it). A bool is not a number;
    NaN and infinities are refused."""
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(
            f"`{parameter}` of model {model} must be a number, got {value!r}"
            f" ({type(value).__name__})."
        )
    if not math.isfinite(number):
        raise ConfigError(f"`{parameter}` of model {model} must be finite, got {value!r}.")
    return number


def number_leaves(value: Any) -> Iterator[Any]:
    """The values of a mergekit parameter: itself when scalar, the points of a
    gradient list, the ``value`` of every ``{filter, value}`` entry."""
    if isinstance(value, dict):
        yield from number_leaves(value.get("value"))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from number_leaves(item)
    else:
        yield value


def check_weight(value: float, *, model: str, weight: str) -> float:
    """A task-vector weight (λ) that is finite (an infinite λ writes infinities)."""
    if not math.isfinite(value):
        raise ConfigError(
            f"weight for model {model} must be finite, got {value!r} (weight {weight!r})."
        )
    return value


def check_density(value: float, *, model: str, weight: str) -> float:
    if not (0.0 < value <= 1.0):
        raise ConfigError(
            f"density for model {model} must be in (0, 1], got {value!r} (weight {weight!r})."
        )
    return value


def require_parameters(parameters: Mapping[str, Any], *, model: str) -> None:
    """Every fine-tuned model needs a density and its two stores."""
    for required in REQUIRED_PARAMETERS:
        if (
            required not in parameters
            and required in STORE_PARAMETERS
            and (DATA_PARAMETER in parameters)
        ):
            raise ConfigError(
                f"Model {model} gives `{DATA_PARAMETER}` ({parameters[DATA_PARAMETER]}) "
                f"instead of its `{required}` store path, which this needs: run "
                "`mergekit-led prepare CONFIG -o resolved.yml` (computes the stores, or "
                "finds them in the store cache) and use resolved.yml, or merge with "
                "`mergekit-led merge CONFIG OUT`, which does both."
            )
        if required not in parameters:
            raise ConfigError(
                f"Model {model} has no `{required}` parameter; led_merging needs "
                "density, importance and base_importance for every fine-tuned model."
            )


def is_scalar(value: Any) -> bool:
    """Whether a parameter is one value (not a per-tensor gradient or filter list)."""
    return isinstance(value, (str, int, float, bool))
