"""``prepare_config``: compute the stores an ``led_merging`` config asks for by
``importance_data``, and fill their paths in.

For every fine-tuned model that names ``importance_data`` and lacks an explicit
``importance``/``base_importance``: the fine-tuned model's store on that data
and the base model's store on the same data, each planned (``prepare.plan``),
looked up in the store cache and computed with ``locate`` when missing (by a
``Preparer``, ``prepare.preparer``). Two models on one dataset with the same
options share the base store. Explicit store paths always win, and Hub store
references are checked and fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from mergekit.common import ModelReference
from mergekit.config import MergeConfiguration

from mergekit_led.config.walker import ConfigSource, InputDefinition, read_config
from mergekit_led.core.parameters import (
    DATA_PARAMETER,
    METHOD_NAME,
    STORE_PARAMETERS,
)
from mergekit_led.errors import (
    ConfigError,
    FingerprintMismatch,
    LEDError,
    LocateError,
    StoresNotComputed,
)
from mergekit_led.location import memory
from mergekit_led.location.memory_budget import device_budget, planned_device_type
from mergekit_led.location.memory_shape import ModelShape
from mergekit_led.location.steps import RunHooks
from mergekit_led.prepare.cache import StoreCache
from mergekit_led.prepare.plan import PlannedStore
from mergekit_led.prepare.preparer import PreparedStore, Preparer
from mergekit_led.store.hub import open_store, parse_hub_reference, store_path


@dataclass
class PreparedConfig:
    """A config with every store path filled in."""

    config: MergeConfiguration  # as written, plus the computed stores' paths (portable)
    merge_config: MergeConfiguration  # the same, with Hub store references as local folders
    stores: List[PreparedStore] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(store.computed for store in self.stores)


def needs_preparing(config: ConfigSource) -> bool:
    """Whether ``config`` asks for stores by ``importance_data`` or names Hub stores."""
    view = read_config(config)
    if view.merge_method != METHOD_NAME:
        return False
    for item in view.fine_tuned:
        params = item.parameters
        if DATA_PARAMETER in params and any(k not in params for k in STORE_PARAMETERS):
            return True
        if any(_is_hub_store(params.get(k)) for k in STORE_PARAMETERS):
            return True
    return False


def prepare_config(
    config: MergeConfiguration,
    *,
    cache: Optional[StoreCache] = None,
    run: Optional[Mapping[str, Any]] = None,
    compute: bool = True,
    report: Optional[Callable[[str], None]] = None,
    progress: bool = True,
    hooks: Optional[RunHooks] = None,
    command: Optional[str] = None,
) -> PreparedConfig:
    """Compute (or find in the cache) every store ``config`` asks for by
    ``importance_data``, fetch its Hub stores, and return it with the paths filled in.

    Args:
        config: a mergekit config; other merge methods are returned unchanged.
        cache: the store cache (default: ``StoreCache()``, see ``prepare.cache``).
        run: execution options of the locate runs (``RUN_OPTIONS``: device,
            device_map, offload_accumulators, gradient_checkpointing,
            checkpoint_every, trust_remote_code).
        compute: False to only look up (``StoresNotComputed`` for a missing store).
        report: called with one line per step (default: logging).
        progress: show locate's progress bars.
        hooks: ``locate``'s seams (tests).
        command: the command that runs this, for error messages (``Fix it and
            run `COMMAND` again.``).
    """
    preparer = Preparer(cache, run=run, report=report, progress=progress, hooks=hooks)
    portable = config.model_copy(deep=True)
    if config.merge_method != METHOD_NAME:
        return PreparedConfig(portable, config.model_copy(deep=True))
    _check_world_size()

    try:
        wanted = _plan_config(preparer, portable)
    except LEDError as error:
        if command is None:
            raise
        raise type(error)(
            f"{error} Fix it and run `{command}` again."
        ) from None  # cause: the same error, extended

    unique: Dict[str, PlannedStore] = {}
    for _, planned in wanted:
        for store in planned.values():
            unique.setdefault(store.key, store)
    report = preparer.report
    if unique:
        report(f"importance stores: {len(unique)} (cache {preparer.cache.root})")
    prepared: Dict[str, PreparedStore] = {}
    for number, (key, planned) in enumerate(unique.items(), start=1):
        cached = preparer.cache.lookup(key) is not None
        state = "cached" if cached else ("computing" if compute else "missing")
        report(f"[{number}/{len(unique)}] {planned.describe()}: {state} ({key[:12]})")
        if cached or compute:
            prepared[key] = preparer.ensure(planned, compute=compute)
    missing_keys = [key for key in unique if key not in prepared]
    if missing_keys:
        raise StoresNotComputed(
            f"{len(missing_keys)} of {len(unique)} importance stores are not computed yet "
            f"({', '.join(unique[k].describe() for k in missing_keys)})."
        )

    for definition, planned in wanted:
        for role, store in planned.items():
            _set_parameter(definition, role, prepared[store.key].path)
    local = portable.model_copy(deep=True)
    for item in read_config(local).fine_tuned:
        for role in STORE_PARAMETERS:
            if _is_hub_store(item.parameters.get(role)):
                _set_parameter(item.definition, role, store_path(item.parameters[role]))
    return PreparedConfig(portable, local, list(prepared.values()))


@dataclass(frozen=True)
class StoreMemory:
    """One store's memory plan, and its time when a rate was measured on this device."""

    planned: PlannedStore
    cached: bool
    verdict: memory.Verdict
    seconds_per_sample: Optional[float]

    @property
    def seconds(self) -> Optional[float]:
        if self.seconds_per_sample is None:
            return None
        return self.seconds_per_sample * self.planned.samples


def plan_config_memory(
    config: MergeConfiguration,
    *,
    cache: Optional[StoreCache] = None,
    run: Optional[Mapping[str, Any]] = None,
) -> List[StoreMemory]:
    """The memory plan of every store ``config`` asks for by ``importance_data``
    (cached ones included, marked): models' configs, tokenizers and data are
    read, weights are not. ``run``: the execution options, ``memory`` included."""
    from mergekit_led.location.rates import estimate_seconds_per_sample

    if config.merge_method != METHOD_NAME:
        return []
    preparer = Preparer(cache, run=run, report=lambda line: None, progress=False)
    wanted = _plan_config(preparer, config.model_copy(deep=True))
    unique: Dict[str, PlannedStore] = {}
    for _, planned in wanted:
        for store in planned.values():
            unique.setdefault(store.key, store)
    options = preparer.run
    device_type = planned_device_type(options.get("device") or "auto", options.get("memory"))
    budget = device_budget(device_type, options.get("memory"), options.get("device_map"))
    shapes: Dict[str, ModelShape] = {}
    plans = []
    for key, planned in unique.items():
        request = planned.request
        path = request.model.path
        if path not in shapes:
            shapes[path] = memory.model_shape(
                path, trust_remote_code=request.options.trust_remote_code
            )
        shape = replace(shapes[path], model=request.model.label)
        setup = memory.setup_for(
            shape,
            request.options,
            device_type,
            tokens=planned.longest_sample,
            answer_tokens=planned.longest_answer,
        )
        verdict = memory.judge(shape, setup, budget)
        cached = preparer.cache.lookup(key) is not None
        plans.append(StoreMemory(planned, cached, verdict, estimate_seconds_per_sample(verdict)))
    return plans


# --------------------------------------------------------------------------- the stores a config asks for


def _plan_config(preparer: Preparer, config: MergeConfiguration):
    """[(definition, role -> planned store)] for every input that needs stores by
    ``importance_data``; Hub stores are fetched and checked on the way."""
    wanted: List[Tuple[InputDefinition, Dict[str, PlannedStore]]] = []
    for item in read_config(config).fine_tuned:
        params = item.parameters
        for role in STORE_PARAMETERS:
            if _is_hub_store(params.get(role)):
                scored = item.model if role == "importance" else item.base
                _check_hub_store(preparer, params[role], role, scored, item.label)
        missing = tuple(role for role in STORE_PARAMETERS if role not in params)
        if not missing or DATA_PARAMETER not in params:
            continue  # explicit stores win; a model with neither is preflight's to report
        wanted.append(
            (item.definition, preparer.plan_input(item.model, item.base, params, missing))
        )
    return wanted


def _set_parameter(definition: InputDefinition, name: str, value: str) -> None:
    definition.parameters = {**(definition.parameters or {}), name: value}


# --------------------------------------------------------------------------- checks


def _is_hub_store(value: Any) -> bool:
    return (
        isinstance(value, str)
        and not os.path.exists(value)
        and parse_hub_reference(value) is not None
    )


def _check_hub_store(
    preparer: Preparer, reference: str, role: str, scored: Optional[ModelReference], label: str
) -> None:
    """Fetch a Hub store and refuse it when it was computed on another model."""
    store = open_store(reference)
    recorded = store.manifest.model_fingerprint
    if scored is None or recorded is None or not os.path.exists(scored.model.path):
        return  # Hub models: the merge method checks every weight against the store
    actual = preparer.model(scored).identity
    if actual != recorded:
        whose = "" if role == "importance" else f" (the base of model {label})"
        raise FingerprintMismatch(
            f"Importance store {reference} (`{role}` of model {label}) was computed on model "
            f"{store.manifest.model} (fingerprint {recorded}), but model {scored}{whose} has "
            f"fingerprint {actual}. Point `{role}` at the store computed for this model, or "
            f"give `{DATA_PARAMETER}` instead and run `mergekit-led prepare CONFIG`."
        )


def check_resolved_output(config: ConfigSource, config_file: str, output: str) -> None:
    """``prepare -o`` never writes over its own inputs: the config it reads or a
    data file the config names."""
    real = os.path.realpath(output)
    inputs = [("the config", config_file)]
    for item in read_config(config).inputs:
        data = item.parameters.get(DATA_PARAMETER)
        if isinstance(data, str):
            inputs.append((f"importance_data of model {item.label}", data))
    for role, path in inputs:
        if os.path.exists(path) and os.path.realpath(path) == real:
            raise ConfigError(
                f"-o {output} is {role} {path}: prepare never writes over its inputs. "
                "Write the resolved config to another file."
            )
    if os.path.isdir(output):
        raise ConfigError(f"-o {output} is a folder; give the path of the resolved config file.")


def _check_world_size() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LocateError(
            "mergekit-led prepare/merge runs one process; under torchrun/accelerate use "
            "`mergekit-led locate` for each store instead."
        )
