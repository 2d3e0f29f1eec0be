"""One YAML, one command: the stores an ``led_merging`` config asks for by
``importance_data``, computed on demand and kept in a content-addressed cache.

``prepare_config(config)`` computes what is missing and returns the config with
the store paths filled in (``mergekit-led prepare``, and ``mergekit-led merge``
before it merges); ``StoreCache`` is the cache (``mergekit-led cache``); the
merge method finds cached stores itself (``prepare.resolve``), so plain
``mergekit-yaml`` merges such a config once its stores are computed.
Submodules are imported on first use: the merge method imports ``store.hub``
at start-up, which must not pull in the location package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PreparedConfig": "mergekit_led.prepare.config_prepare",
    "StoresNotComputed": "mergekit_led.errors",
    "prepare_config": "mergekit_led.prepare.config_prepare",
    "StoreCache": "mergekit_led.prepare.cache",
    "default_store_cache_dir": "mergekit_led.prepare.cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
