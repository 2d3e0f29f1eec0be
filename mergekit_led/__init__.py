"""mergekit-led: LED-Merging (Locate, Elect, Disjoint) as a mergekit plugin.

``import mergekit_led`` registers the ``led_merging`` merge method with
mergekit (installing the package already does so for every interpreter).
"""

from mergekit_led._version import __version__
from mergekit_led.errors import (
    CheckpointError,
    ConfigError,
    EvalError,
    FingerprintMismatch,
    LEDError,
    LocateError,
    StoreError,
    SweepError,
)
from mergekit_led.location import locate
from mergekit_led.method import register, set_cached_store_resolver
from mergekit_led.store import ImportanceStore, load_importance, save_importance

__all__ = [
    "__version__",
    "CheckpointError",
    "ConfigError",
    "EvalError",
    "FingerprintMismatch",
    "ImportanceStore",
    "LEDError",
    "LocateError",
    "StoreError",
    "SweepError",
    "load_importance",
    "locate",
    "register",
    "save_importance",
]


def _stores_from_cache(model, base, parameters):
    """``prepare.resolve.task_store_paths``, imported only when a config asks
    for its stores by ``importance_data`` (it pulls in the location package)."""
    from mergekit_led.prepare.resolve import task_store_paths

    return task_store_paths(model, base, parameters)


set_cached_store_resolver(_stores_from_cache)
register()
