"""mergekit-led: LED-Merging (Locate, Elect, Disjoint) as a mergekit plugin.

``import mergekit_led`` registers the ``led_merging`` merge method with
mergekit (installing the package already does so for every interpreter).
"""

from mergekit_led._version import __version__
from mergekit_led.errors import ConfigError, FingerprintMismatch, LEDError, StoreError
from mergekit_led.store import ImportanceStore, load_importance, save_importance

__all__ = [
    "__version__",
    "ConfigError",
    "FingerprintMismatch",
    "ImportanceStore",
    "LEDError",
    "StoreError",
    "load_importance",
    "locate",
    "register",
    "save_importance",
]


def register() -> None:
    """Register ``led_merging`` with mergekit's registry (idempotent)."""
    from mergekit_led.led_merging import register_led_merging

    register_led_merging()


def locate(*args, **kwargs):
    """Compute and write an importance store; see ``mergekit_led.location.locate``."""
    from mergekit_led.location import locate as _locate

    return _locate(*args, **kwargs)


try:
    register()
except ImportError:  # mergekit missing: the store API still works
    pass
