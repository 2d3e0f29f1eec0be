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
from mergekit_led.method import register
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

register()
