"""The merge method's side of ``importance_data``: find the stores in the cache, never compute.

Under plain ``mergekit-yaml`` the merge method sees a model's ``importance_data``
and ``locate_*`` parameters but no store path. It plans the stores exactly as
``mergekit-led prepare`` does (same key) and uses the cached ones; when one is
missing it stops with the command that computes it: a merge never runs
without its scores. Resolved once per process and model.
"""

from __future__ import annotations

import os
import shlex
import sys
import threading
from typing import Any, Dict, Hashable, Mapping, Optional, Tuple

from mergekit_led.core.parameters import DATA_PARAMETER, STORE_PARAMETERS
from mergekit_led.errors import ConfigError, StoresNotComputed
from mergekit_led.prepare.cache import StoreCache
from mergekit_led.prepare.models import model_reference
from mergekit_led.prepare.preparer import Preparer
from mergekit_led.store.hub import store_path

_LOCK = threading.Lock()
_PREPARERS: Dict[str, Preparer] = {}
_RESOLVED: Dict[Tuple, Dict[str, str]] = {}


def task_store_paths(
    model: Hashable, base: Optional[Hashable], parameters: Mapping[str, Any]
) -> Dict[str, str]:
    """``importance`` and ``base_importance`` of one fine-tuned model as local
    folders: explicit ones (paths or Hub references) as given, missing ones from
    the cache by ``importance_data``."""
    given = {k: v for k, v in parameters.items() if v is not None}
    missing = tuple(role for role in STORE_PARAMETERS if role not in given)
    paths = {role: store_path(given[role]) for role in STORE_PARAMETERS if role in given}
    if not missing:
        return paths
    label = str(model)
    if DATA_PARAMETER not in given:
        raise ConfigError(
            f"Model {label} has no `{missing[0]}` parameter (nor `{DATA_PARAMETER}` to compute "
            "it from); led_merging needs, for every fine-tuned model, a density and its "
            "two stores, importance and base_importance, or the task data to compute them."
        )
    cache = StoreCache()
    memo = (cache.root, str(model), str(base), tuple(sorted((k, str(v)) for k, v in given.items())))
    with _LOCK:
        found = _RESOLVED.get(memo)
        if found is None or not all(os.path.isdir(p) for p in found.values()):
            found = _from_cache(cache, model, base, given, missing)
            _RESOLVED[memo] = found
    return {**paths, **found}


def _from_cache(cache, model, base, given, missing) -> Dict[str, str]:
    preparer = _PREPARERS.setdefault(cache.root, Preparer(cache, progress=False))
    planned = preparer.plan_input(
        model_reference(model), model_reference(base) if base is not None else None, given, missing
    )
    found = {}
    for role, store in planned.items():
        entry = cache.lookup(store.key)
        if entry is None:
            raise StoresNotComputed(
                f"led_merging cannot merge model {model}: its `{role}` store, the "
                f"{store.describe()}, is not in the store cache {cache.root} yet (key "
                f"{store.key}). {_what_to_run()}"
            )
        found[role] = entry.path
    return found


def _what_to_run() -> str:
    """The commands that compute the stores, with this run's own arguments when
    it is a ``mergekit-yaml`` run."""
    config, merge = "CONFIG", "mergekit-led merge CONFIG OUT"
    try:
        import click

        context = click.get_current_context(silent=True)
    except ImportError:
        context = None
    root = context.find_root() if context is not None else None
    if root is not None and root.command.name == "mergekit-yaml" and root.params.get("config_file"):
        config = shlex.quote(str(root.params["config_file"]))
        merge = "mergekit-led merge " + shlex.join(sys.argv[1:])
    return (
        f"Compute the stores with `mergekit-led prepare {config}` and run this again, or "
        f"merge with `{merge}`, which computes them first (it takes every mergekit-yaml option)."
    )
