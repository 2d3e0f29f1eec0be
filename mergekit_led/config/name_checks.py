"""The names a config uses, checked when it is read: parameter keys and input models.

mergekit hands a merge method only the parameters it declares and drops any
other key without a word, so a misspelt ``disjont: false`` would silently run
the merge without the user's ablation. For an ``led_merging`` config, every key
of every ``parameters:`` mapping (config, module, output slice, model or slice
source) must be a parameter some merge method registered with mergekit
declares (``MergeMethod.spec.parameters``): ``led_merging``'s own are used; the
parameters of mergekit's other methods (``normalize``, ``int8_mask``, ...) are
accepted with a warning that ``led_merging`` ignores them (a config switched
from another method keeps working); any other key is refused, with the nearest
``led_merging`` parameter as a suggestion.

mergekit also refuses the same model twice in one model list or output slice,
but only when the merge reaches it; checked here before any store is computed.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from mergekit.config import MergeConfiguration

from mergekit_led.core.parameters import METHOD_NAME
from mergekit_led.errors import ConfigError

LOG = logging.getLogger(__name__)


def method_parameters() -> Tuple[Set[str], Set[str]]:
    """(``led_merging``'s parameter names, every registered method's parameter names)."""
    from mergekit.merge_methods.registry import registered_methods

    from mergekit_led.method import register

    register()  # a no-op when already registered
    ours: Set[str] = set()
    everyone: Set[str] = set()
    for method in registered_methods():
        names = {parameter.name for parameter in method.spec.parameters}
        everyone |= names
        if method.spec.name == METHOD_NAME:
            ours = names
    return ours, everyone


def _parameter_scopes(config: MergeConfiguration) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    """(where, parameters) of every ``parameters:`` mapping of the config."""
    yield "parameters", config.parameters or {}
    modules: List[Tuple[str, Any]] = [("", None)]
    modules += [(f"module {name!r} ", module) for name, module in (config.modules or {}).items()]
    for prefix, module in modules:
        if module is not None:
            yield f"{prefix}parameters", module.parameters or {}
        models = module.models if module is not None else config.models
        slices = module.slices if module is not None else config.slices
        for index, model in enumerate(models or []):
            yield f"{prefix}models[{index}] ({model.model})", model.parameters or {}
        for index, output_slice in enumerate(slices or []):
            yield f"{prefix}slices[{index}] parameters", output_slice.parameters or {}
            for number, source in enumerate(output_slice.sources):
                where = f"{prefix}slices[{index}].sources[{number}] ({source.model})"
                yield where, source.parameters or {}


def check_parameter_names(config: MergeConfiguration) -> None:
    """Refuse a key of an ``led_merging`` config that no merge method takes; warn
    about keys of other methods, which ``led_merging`` ignores."""
    if config.merge_method != METHOD_NAME:
        return  # other methods' keys are mergekit's business
    ours, everyone = method_parameters()
    ignored: Dict[str, str] = {}
    for where, parameters in _parameter_scopes(config):
        for key in parameters:
            if key in ours:
                continue
            if key in everyone:
                ignored.setdefault(str(key), where)
                continue
            raise ConfigError(
                f"Unknown parameter `{key}` in {where}: no merge method takes it, so it "
                f"would be ignored.{_suggestion(str(key), ours)} led_merging takes: "
                f"{', '.join(sorted(ours))}."
            )
    for key, where in ignored.items():
        LOG.warning(
            "Parameter `%s` (in %s) belongs to other merge methods; led_merging ignores it.",
            key,
            where,
        )


def _suggestion(key: str, names: Set[str]) -> str:
    close: Optional[List[str]] = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def check_duplicate_inputs(config: MergeConfiguration) -> None:
    """The same model twice in one model list or output slice (mergekit refuses it
    with a traceback once the merge reaches it, after any store was computed)."""
    groups: List[Tuple[str, List[Any]]] = []
    modules: List[Tuple[str, Any]] = [("", None)]
    modules += [(f"module {name!r} ", module) for name, module in (config.modules or {}).items()]
    for prefix, module in modules:
        models = module.models if module is not None else config.models
        slices = module.slices if module is not None else config.slices
        if models:
            groups.append((f"{prefix}models", [m.model for m in models]))
        for index, output_slice in enumerate(slices or []):
            groups.append((f"{prefix}slices[{index}]", [s.model for s in output_slice.sources]))
    for where, references in groups:
        seen: Dict[Any, int] = {}
        for number, reference in enumerate(references):
            if reference in seen:
                raise ConfigError(
                    f"Model {reference} is listed twice in {where} (entries {seen[reference]} "
                    f"and {number}); mergekit merges each model once per slice. Remove one."
                )
            seen[reference] = number
