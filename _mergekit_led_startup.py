"""Registers mergekit-led's ``led_merging`` method when mergekit's registry is imported.

mergekit has no plugin entry points, so ``pip install mergekit-led`` ships a
``.pth`` file that imports this module at interpreter start. It only installs an
import hook: torch and mergekit are not imported here, and an interpreter where
mergekit is missing, broken or never imported is left exactly as it was.
"""

import sys

_REGISTRY_MODULE = "mergekit.merge_methods.registry"


def _register() -> None:
    if "mergekit_led" in sys.modules and not hasattr(sys.modules["mergekit_led"], "register"):
        return  # mid-import (it imported mergekit): it registers when it finishes
    try:
        from mergekit_led.method import register

        register()
    except Exception as error:  # never break mergekit because of the plugin
        import warnings

        warnings.warn(
            f"mergekit-led: could not register the led_merging merge method: {error!r}",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisteringLoader:
    """Delegates to mergekit's own loader, then registers led_merging."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _RegistryImportHook:
    """A meta-path finder that only ever answers for mergekit's registry module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY_MODULE:
            return None
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None
            spec.loader = _RegisteringLoader(spec.loader)
            return spec
        except Exception:
            return None


def install() -> None:
    if any(isinstance(finder, _RegistryImportHook) for finder in sys.meta_path):
        return
    if _REGISTRY_MODULE in sys.modules:  # installed late: register right away
        _register()
        return
    sys.meta_path.insert(0, _RegistryImportHook())


try:
    install()
except Exception:
    pass
