"""Reading locate's options from a config's ``locate_*`` parameters, and the cache key's share.

``LocateOptions`` (``core/locate_options.py``) is the one list of locate's
options; its field metadata marks the ones that change the stored scores
(``SCORE_OPTIONS``, the cache key's share). Those are the ones a config can set
as ``locate_<option>`` (``LOCATE_CONFIG_OPTIONS``); the others are chosen per
machine on the command line (``RUN_OPTIONS``).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from pydantic import TypeAdapter, ValidationError

from mergekit_led.core.locate_options import (
    LOCATE_CONFIG_OPTIONS,
    MODEL_DTYPES,
    SCORE_OPTIONS,
    LocateOptions,
)
from mergekit_led.core.parameters import DATA_PARAMETER, LOCATE_PREFIX, is_scalar
from mergekit_led.errors import ConfigError
from mergekit_led.location.score_kinds import SCORE_KINDS, data_scores

_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false"}
_ADAPTERS = {name: TypeAdapter(Optional[kind]) for name, kind in LOCATE_CONFIG_OPTIONS.items()}


def score_options(opts: LocateOptions) -> Dict[str, Any]:
    """The options of ``opts`` that change the scores (the cache key's share)."""
    return {name: getattr(opts, name) for name in SCORE_OPTIONS}


def locate_options_from(
    parameters: Mapping[str, Any], *, model: str, run: Optional[Mapping[str, Any]] = None
) -> LocateOptions:
    """The ``LocateOptions`` a model's ``locate_*`` parameters ask for.

    ``parameters`` are the model's merged parameters (mergekit's precedence:
    source > slice > module > config), as written in the YAML or as mergekit
    hands them to the merge method. ``run`` adds execution options.
    """
    values: Dict[str, Any] = {}
    for key, value in parameters.items():
        if not key.startswith(LOCATE_PREFIX) or value is None:
            continue
        name = key[len(LOCATE_PREFIX) :]
        if name not in LOCATE_CONFIG_OPTIONS:
            known = ", ".join(LOCATE_PREFIX + n for n in LOCATE_CONFIG_OPTIONS)
            raise ConfigError(
                f"Unknown parameter `{key}` for model {model}; the locate options a config "
                f"can set are: {known}."
            )
        if not is_scalar(value):
            raise ConfigError(
                f"Parameter `{key}` of model {model} must be one value, not a per-tensor "
                "list or filter: one store is computed per model and dataset."
            )
        try:
            # Strict: a bool is not a number (`locate_max_samples: true` is not 1), as
            # for `density`; YAML already gives ints, strings and bools their types.
            values[name] = _ADAPTERS[name].validate_python(value, strict=True)
        except ValidationError:
            raise ConfigError(
                f"Parameter `{key}` of model {model} must be "
                f"{_KIND_NAMES[LOCATE_CONFIG_OPTIONS[name]]}, not {value!r}."
            ) from None  # cause: the message says what is expected
    opts = LocateOptions(**values, **dict(run or {}))
    _check(opts, model)
    return opts


def _check(opts: LocateOptions, model: str) -> None:
    """The checks ``locate`` would make only after loading the model, made up front."""
    where = f"for model {model}"
    if opts.score not in SCORE_KINDS:
        raise ConfigError(
            f"`{LOCATE_PREFIX}score: {opts.score}` {where} is unknown; choose one of "
            f"{', '.join(data_scores())}."
        )
    if not SCORE_KINDS[opts.score].needs_data:
        raise ConfigError(
            f"`{LOCATE_PREFIX}score: {opts.score}` {where} needs no data, so "
            f"`{DATA_PARAMETER}` cannot compute it; use one of {', '.join(data_scores())}, "
            f"or compute the stores with `mergekit-led locate --score {opts.score}` and "
            "give them as importance/base_importance."
        )
    if opts.dtype not in MODEL_DTYPES:
        raise ConfigError(
            f"`{LOCATE_PREFIX}dtype: {opts.dtype}` {where} is unknown; choose one of "
            f"{', '.join(MODEL_DTYPES)}."
        )
    if opts.chat_template not in ("auto", "none"):
        raise ConfigError(
            f"`{LOCATE_PREFIX}chat_template: {opts.chat_template}` {where} must be auto or none."
        )
    if opts.max_samples is not None and opts.max_samples < 1:
        raise ConfigError(
            f"`{LOCATE_PREFIX}max_samples` {where} must be at least 1, not {opts.max_samples}."
        )
    if opts.max_length is not None and opts.max_length < 2:
        raise ConfigError(
            f"`{LOCATE_PREFIX}max_length` {where} must be at least 2 tokens, not {opts.max_length}."
        )
