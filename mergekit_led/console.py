"""What a command prints while it works, so that a log reads top to bottom.

Progress bars are drawn only on a terminal: redirected to a file or a pipe, a
bar is a line per refresh, so there each stage says what it does in one line
instead. The libraries we call draw bars of their own (datasets' "Generating
train split" for every local file, transformers' "Loading weights", the Hub's
downloads), turned off here for output that is not a terminal, and mergekit
sets ``torch_dtype`` on the merged model's config, which transformers 5 answers
with a deprecation warning per merge: held back where we call mergekit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator

# The switches that turn the libraries' bars off; each library reads its own
# when it is imported, so they are set before any of them is.
_LIBRARY_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def on_terminal() -> bool:
    """Whether progress bars are drawn: stderr, where they go, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def library_bars_off_unless_terminal() -> None:
    """Off a terminal, turn the libraries' own progress bars off for this process
    (and the processes it starts), without importing any library that is not
    loaded yet (``mergekit-led locate --help`` imports none of them)."""
    if on_terminal():
        return
    for switch in _LIBRARY_SWITCHES:
        os.environ.setdefault(switch, "1")
    # A library imported already has read its switch: tell it directly.
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


@contextlib.contextmanager
def datasets_bars_off() -> Iterator[None]:
    """datasets' bars off while a local file is read: "Generating train split"
    for a file of a few rows says nothing, on a terminal or not."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool = True, **options):
    """A tqdm bar on a terminal; elsewhere no bar, and one line saying what runs."""
    from tqdm.auto import tqdm

    draw = enabled and on_terminal()
    if enabled and not draw:
        tqdm.write(f"{desc}: {total} {unit}{'' if total == 1 else 's'}", file=sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, disable=not draw, **options)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# transformers' logger of the warning mergekit's ``run_merge`` triggers.
_CONFIG_LOGGER = "transformers.configuration_utils"
_TORCH_DTYPE_WARNING = "`torch_dtype` is deprecated"


@contextlib.contextmanager
def without_torch_dtype_warning() -> Iterator[None]:
    """Hold back transformers' "`torch_dtype` is deprecated" while mergekit
    merges: mergekit sets ``config.torch_dtype`` on the output config, which the
    user can neither see nor change. Other warnings pass."""
    target = logging.getLogger(_CONFIG_LOGGER)
    drop = _DropMessage(_TORCH_DTYPE_WARNING)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)
