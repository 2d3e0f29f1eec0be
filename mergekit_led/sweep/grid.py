"""``GRID.yml``: the settings a sweep merges, and each one's mergekit config.

One block per merge method; in a block, each key is one of the method's
parameters (mergekit's own list for that method) and its value is

* a scalar: fixed;
* a list: swept (every value is tried);
* for a per-model parameter, a mapping from models to a scalar or a list:
  a key names a model of CONFIG (its ``model:`` string, or the last part of
  its path) or several, comma-separated, which then take the same value
  together; ``"*"`` stands for every model not named.

A block's settings are the product of its lists (keys in the order written);
the grid is the blocks one after another (docs/sweep.md)::

    led_merging:
      density: {safety: [0.5, 0.7], "math, code": [0.1, 0.2]}
    task_arithmetic:
      weight: [0.3, 0.5, 1.0]
    model_stock: {}
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mergekit_led.core.parameters import (
    DATA_PARAMETER,
    LOCATE_PREFIX,
    METHOD_NAME,
    STORE_PARAMETERS,
)
from mergekit_led.errors import SweepError, did_you_mean

ALL_MODELS = "*"
# What a setting of another method than CONFIG's keeps of CONFIG's parameters.
CARRIED_OVER = frozenset({"weight"})
# LED parameters that decide which stores a merge reads: a sweep computes its
# stores once, so these come from CONFIG and are never swept.
_STORE_KEYS = (*STORE_PARAMETERS, DATA_PARAMETER)


@dataclass(frozen=True)
class Setting:
    """One point of the grid: a method, its shared parameters and, per model
    (by its ``model:`` string in CONFIG), its own parameters."""

    method: str
    shared: Tuple[Tuple[str, Any], ...] = ()
    per_model: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()

    def as_dict(self) -> Dict[str, Any]:
        return {
            "method": self.method,
            "shared": dict(self.shared),
            "models": {model: dict(values) for model, values in self.per_model},
        }

    @property
    def key(self) -> str:
        """A stable identity (the resume key of ``sweep.jsonl``)."""
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self, short_names: Mapping[str, str]) -> str:
        """The swept values in words, e.g. ``density safety 0.5, math 0.1; weight 1``."""
        parts = [f"{k} {_fmt(v)}" for k, v in self.shared]
        by_parameter: Dict[str, List[str]] = {}
        for model, values in self.per_model:
            for name, value in values:
                by_parameter.setdefault(name, []).append(
                    f"{short_names.get(model, model)} {_fmt(value)}"
                )
        for name, entries in by_parameter.items():
            values = {entry.rsplit(" ", 1)[1] for entry in entries}
            text = next(iter(values)) if len(values) == 1 else ", ".join(entries)
            parts.append(f"{name} {text}")
        return "; ".join(parts) or "defaults"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- parsing


def load_grid(
    path: str, models: Sequence[str], *, max_settings: Optional[int] = None
) -> List[Setting]:
    """Every setting of the GRID.yml file at ``path``."""
    from mergekit_led.config.yaml_file import read_yaml

    data = read_yaml(path, what="Grid", error=SweepError)
    return parse_grid(data, models, where=f"Grid {path}", max_settings=max_settings)


def parse_grid(
    data: Any,
    models: Sequence[str],
    *,
    where: str = "The grid",
    max_settings: Optional[int] = None,
) -> List[Setting]:
    """Every setting of ``data`` (a parsed GRID.yml) for CONFIG's ``models``;
    more than ``max_settings`` is refused from the lengths of the lists, before
    any setting is built (a few lines of YAML can ask for 10^12)."""
    from mergekit.merge_methods import registry

    if data is None or data == {}:
        raise SweepError(
            f"{where} is empty: give at least one method block, e.g. `model_stock: {{}}`."
        )
    if not isinstance(data, dict):
        raise SweepError(
            f"{where} must map merge methods to their parameters, not {type(data).__name__}."
        )
    known = {m.spec.name: m for m in registry.registered_methods()}
    resolver = ModelNames(models)
    settings: List[Setting] = []
    total = 0
    for method, block in data.items():
        if method not in known:
            raise SweepError(
                f"{where}: unknown merge method {method!r}{did_you_mean(str(method), known)}."
            )
        block = {} if block is None else block
        if not isinstance(block, dict):
            raise SweepError(
                f"{where}: {method} must map parameters to values, not {type(block).__name__}."
            )
        axes = _block_axes(method, block, known[method].spec, resolver, f"{where}: {method}")
        total += math.prod(len(axis) for axis in axes)
        if max_settings is not None and total > max_settings:
            raise SweepError(
                f"{where} has {total:,} settings or more (the product of its lists), more than "
                f"--max-settings {max_settings}; shorten its lists or raise --max-settings."
            )
        found = _block_settings(method, axes, resolver)
        if not found:
            raise SweepError(f"{where}: {method} has no setting (an empty list).")
        settings.extend(found)
    duplicates = len(settings) - len({s.key for s in settings})
    if duplicates:
        raise SweepError(f"{where} lists {duplicates} setting(s) twice.")
    return settings


class ModelNames:
    """CONFIG's models, and the names a grid may call them by."""

    def __init__(self, models: Sequence[str]):
        self.models = list(models)
        self.short = {m: _short(m) for m in self.models}

    def resolve(self, name: str, where: str) -> str:
        name = name.strip()
        if name in self.models:
            return name
        matches = [m for m, short in self.short.items() if short == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SweepError(
                f"{where}: {name!r} names several models ({', '.join(matches)}); use the full name."
            )
        raise SweepError(
            f"{where}: {name!r} is not a model of the config "
            f"(models: {', '.join(self.short.values())}){did_you_mean(name, self.short.values())}."
        )


def _short(model: str) -> str:
    return os.path.basename(model.rstrip("/\\")) or model


_Axis = List[Tuple[str, Optional[Tuple[str, ...]], Any]]  # [(parameter, models|None, value)]


def _block_axes(method: str, block: dict, spec, names: ModelNames, where: str) -> List[_Axis]:
    """A block's lists, checked: one axis per swept parameter (per model group)."""
    shared_specs = {p.name: p for p in spec.shared_parameters}
    model_specs = {p.name: p for p in spec.input_parameters}
    axes: List[_Axis] = []
    for key, value in block.items():
        key = str(key)
        here = f"{where}.{key}"
        if method == METHOD_NAME and (key in _STORE_KEYS or key.startswith(LOCATE_PREFIX)):
            raise SweepError(
                f"{here}: not a grid key: the importance stores are computed once per sweep from "
                "CONFIG; run one sweep per location setting."
            )
        if key in shared_specs:
            if isinstance(value, dict):
                raise SweepError(
                    f"{here}: a shared parameter takes one value or a list, not a mapping per model."
                )
            axes.append(
                [(key, None, v) for v in _checked(_values(value, here), shared_specs[key], here)]
            )
        elif key in model_specs:
            for models, values in _per_model(value, names, here):
                checked = _checked(values, model_specs[key], here)
                axes.append([(key, models, v) for v in checked])
        else:
            takes = sorted(set(shared_specs) | set(model_specs))
            takes = [
                k
                for k in takes
                if not (method == METHOD_NAME and (k in _STORE_KEYS or k.startswith(LOCATE_PREFIX)))
            ]
            raise SweepError(
                f"{here}: {method} takes no parameter {key!r}{did_you_mean(key, takes)} "
                f"(it takes: {', '.join(takes) or 'none'})."
            )
    return axes


def _block_settings(method: str, axes: List[_Axis], names: ModelNames) -> List[Setting]:
    settings = []
    for combination in itertools.product(*axes):
        shared: Dict[str, Any] = {}
        per_model: Dict[str, Dict[str, Any]] = {}
        for parameter, models, value in combination:
            if models is None:
                shared[parameter] = value
            else:
                for model in models:
                    per_model.setdefault(model, {})[parameter] = value
        settings.append(
            Setting(
                method,
                tuple(shared.items()),
                tuple(
                    (m, tuple(sorted(per_model[m].items()))) for m in names.models if m in per_model
                ),
            )
        )
    return settings


def _values(value: Any, where: str) -> List[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        raise SweepError(f"{where}: expected a value or a list of values, not a mapping.")
    return [value]


def _checked(values: List[Any], parameter, where: str) -> List[Any]:
    """Each value validated as mergekit validates the parameter (its type), then
    as a merge would: numbers finite, a density a share in (0, 1]. Before any
    store is computed or setting merged."""
    from pydantic import ValidationError

    for value in values:
        if isinstance(value, (dict, list)):
            raise SweepError(f"{where}: {value!r} is not a single value.")
        try:
            parameter.validate(value)
        except ValidationError as error:
            reason = error.errors()[0]["msg"]
            raise SweepError(
                f"{where}: {value!r} is not a valid {parameter.name}: {reason}."
            ) from error
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is not None and not math.isfinite(number):
            raise SweepError(f"{where}: {value!r} is not a valid {parameter.name}: not finite.")
        if number is not None and parameter.name == "density" and not 0 < number <= 1:
            raise SweepError(
                f"{where}: {value!r} is not a valid density: a share of the weights, in (0, 1]."
            )
    return values


def _per_model(
    value: Any, names: ModelNames, where: str
) -> List[Tuple[Tuple[str, ...], List[Any]]]:
    """``[(models, values)]`` of a per-model parameter: one axis per key."""
    if not isinstance(value, dict):
        return [(tuple(names.models), _values(value, where))]
    named: Dict[str, str] = {}
    groups: List[Tuple[Tuple[str, ...], List[Any]]] = []
    rest = None
    for key, values in value.items():
        if str(key).strip() == ALL_MODELS:
            rest = _values(values, f"{where}.{key}")
            continue
        members = tuple(names.resolve(part, f"{where}.{key}") for part in str(key).split(","))
        for member in members:
            if member in named:
                raise SweepError(
                    f"{where}: model {names.short[member]!r} is named twice ({named[member]!r} and {key!r})."
                )
            named[member] = str(key)
        groups.append((members, _values(values, f"{where}.{key}")))
    if rest is not None:
        others = tuple(m for m in names.models if m not in named)
        if others:
            groups.append((others, rest))
    return groups


# --------------------------------------------------------------------------- configs


def setting_config(config: Mapping[str, Any], setting: Setting) -> Dict[str, Any]:
    """``config`` (a ``models:`` config as a dict, the user's CONFIG) turned into
    ``setting``: its method, the parameters that method takes from CONFIG, and
    the setting's values over them."""
    from mergekit.merge_methods import registry

    spec = registry.get(setting.method).spec
    shared_names = {p.name for p in spec.shared_parameters}
    model_names = {p.name for p in spec.input_parameters}
    if setting.method != config.get("merge_method"):
        # Another method's parameters of the same name can mean other things
        # (LED's density elects by importance, TIES' keeps by magnitude): only
        # the task vectors' scale carries over; the block sets the rest.
        shared_names = set()
        model_names = model_names & CARRIED_OVER
    out = copy.deepcopy(dict(config))
    out["merge_method"] = setting.method
    shared = {
        k: v for k, v in (out.get("parameters") or {}).items() if k in shared_names | model_names
    }
    shared.update(dict(setting.shared))
    if shared:
        out["parameters"] = shared
    else:
        out.pop("parameters", None)
    values = dict(setting.per_model)
    models = []
    for entry in out.get("models") or []:
        entry = dict(entry)
        parameters = {k: v for k, v in (entry.get("parameters") or {}).items() if k in model_names}
        parameters.update(dict(values.get(entry["model"], ())))
        if parameters:
            entry["parameters"] = parameters
        else:
            entry.pop("parameters", None)
        models.append(entry)
    out["models"] = models
    missing = [
        p.name
        for p in spec.input_parameters
        if p.required
        and any(
            p.name not in (m.get("parameters") or {}) and p.name not in shared
            for m in models
            if m["model"] != out.get("base_model")
        )
    ]
    if missing:
        raise SweepError(
            f"The grid's {setting.method} block must set {missing[0]!r} (CONFIG does not give it "
            f"for every model); add e.g. `{missing[0]}: [1.0]` to the block."
        )
    return out
