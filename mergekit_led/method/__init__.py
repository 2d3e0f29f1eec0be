"""The ``led_merging`` merge method for mergekit, and its registration."""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Mapping, Optional

from mergekit_led.errors import ConfigError

# ``(model, base, parameters) -> {"importance": path, "base_importance": path}``
CachedStoreResolver = Callable[[Hashable, Optional[Hashable], Mapping[str, Any]], Dict[str, str]]
_cached_store_resolver: Optional[CachedStoreResolver] = None


def register() -> None:
    """Register ``led_merging`` with mergekit's registry; a second call does nothing.

    The one place registration happens: ``import mergekit_led`` and the
    interpreter start-up hook (``_mergekit_led_startup``) both call it.
    """
    from mergekit.merge_methods.registry import register as register_method
    from mergekit.merge_methods.registry import registered_methods

    from mergekit_led.core.parameters import METHOD_NAME
    from mergekit_led.method.mergekit_method import led_merging

    if any(method.spec.name == METHOD_NAME for method in registered_methods()):
        return
    register_method(led_merging)


def set_cached_store_resolver(resolver: CachedStoreResolver) -> None:
    """Install how the kernel finds the stores of a model given by ``importance_data``.

    Finding cached stores plans them with the location package (tokenizer,
    data), which sits above this layer, so the layer that owns the store cache
    installs its lookup here: ``mergekit_led/__init__.py`` installs
    ``prepare.resolve.task_store_paths``, next to ``register()``.
    """
    global _cached_store_resolver
    _cached_store_resolver = resolver


def cached_store_paths(
    model: Hashable, base: Optional[Hashable], parameters: Mapping[str, Any]
) -> Dict[str, str]:
    """``importance`` and ``base_importance`` of ``model`` by the installed resolver."""
    if _cached_store_resolver is None:
        raise ConfigError(
            f"Model {model} gives no importance/base_importance stores, and no store cache "
            "is set up to find them by importance_data (import mergekit_led first)."
        )
    return _cached_store_resolver(model, base, parameters)
