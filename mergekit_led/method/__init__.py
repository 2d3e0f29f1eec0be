"""The ``led_merging`` merge method for mergekit, and its registration."""

from __future__ import annotations


def register() -> None:
    """Register ``led_merging`` with mergekit's registry; a second call does nothing.

    The one place registration happens: ``import mergekit_led`` and the
    interpreter start-up hook (``_mergekit_led_startup``) both call it.
    """
    from mergekit.merge_methods.registry import register as register_method
    from mergekit.merge_methods.registry import registered_methods

    from mergekit_led.core.parameters import METHOD_NAME
    from mergekit_led.method.led_merging import led_merging

    if any(method.spec.name == METHOD_NAME for method in registered_methods()):
        return
    register_method(led_merging)
