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
from typing import Any, Dict, List, Optional, Set, Tuple

from mergekit_led.config.walker import ConfigView
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


def check_parameter_names(view: ConfigView) -> None:
    """Refuse a key of an ``led_merging`` config that no merge method takes; warn
    about keys of other methods, which ``led_merging`` ignores."""
    if view.merge_method != METHOD_NAME:
        return  # other methods' keys are mergekit's business
    ours, everyone = method_parameters()
    ignored: Dict[str, str] = {}
    for scope in view.scopes:
        where = scope.where
        for key in scope.parameters:
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


def check_duplicate_inputs(view: ConfigView) -> None:
    """The same model twice in one model list or output slice (mergekit refuses it
    with a traceback once the merge reaches it, after any store was computed)."""
    for group in view.groups:
        seen: Dict[Any, int] = {}
        for number, reference in enumerate(group.models):
            if reference in seen:
                raise ConfigError(
                    f"Model {reference} is listed twice in {group.where} (entries "
                    f"{seen[reference]} and {number}); mergekit merges each model once per "
                    "slice. Remove one."
                )
            seen[reference] = number
