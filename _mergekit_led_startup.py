"""Registers mergekit-led's ``led_merging`` method when mergekit's registry is imported,
and makes mergekit's model card treat an existing local path as local when
``mergekit.card`` is imported (``mergekit_led.local_paths``).

mergekit has no plugin entry points, so ``pip install mergekit-led`` ships a
``.pth`` file that imports this module at interpreter start. It only installs an
import hook: torch and mergekit are not imported here, and an interpreter where
mergekit is missing, broken or never imported is left exactly as it was.
"""

import sys

_REGISTRY_MODULE = "mergekit.merge_methods.registry"
_CARD_MODULE = "mergekit.card"


def _never_breaking_mergekit(action, what: str) -> None:
    """Run ``action``; a failure is a warning: the plugin never breaks mergekit."""
    try:
        action()
    except Exception as error:
        import warnings

        warnings.warn(f"mergekit-led: could not {what}: {error!r}", RuntimeWarning, stacklevel=3)


def _register() -> None:
    if "mergekit_led" in sys.modules and not hasattr(sys.modules["mergekit_led"], "register"):
        return  # mid-import (it imported mergekit): it registers when it finishes

    def register() -> None:
        from mergekit_led.method import register

        register()

    _never_breaking_mergekit(register, "register the led_merging merge method")


def _local_paths() -> None:
    def local_first() -> None:
        from mergekit_led.local_paths import treat_existing_paths_as_local

        treat_existing_paths_as_local()

    _never_breaking_mergekit(local_first, "make mergekit's card treat local paths as local")


# What runs once each hooked mergekit module has been executed.
_AFTER_IMPORT = {_REGISTRY_MODULE: _register, _CARD_MODULE: _local_paths}


class _RegisteringLoader:
    """Delegates to mergekit's own loader, then runs the module's hook."""

    def __init__(self, loader, after=_register):
        self._loader = loader
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._after()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _RegistryImportHook:
    """A meta-path finder that only ever answers for the hooked mergekit modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _AFTER_IMPORT:
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
            spec.loader = _RegisteringLoader(spec.loader, _AFTER_IMPORT[fullname])
            return spec
        except Exception:
            return None


def install() -> None:
    if any(isinstance(finder, _RegistryImportHook) for finder in sys.meta_path):
        return
    if _CARD_MODULE in sys.modules:  # installed late: right away
        _local_paths()
    if _REGISTRY_MODULE in sys.modules:
        _register()
        if _CARD_MODULE in sys.modules:
            return
    sys.meta_path.insert(0, _RegistryImportHook())


try:
    install()
except Exception:
    pass
