"""The ``mergekit-led`` command line: the group, and the error wrapper every subcommand uses.

Each subcommand is one thin module of this package, imported only when invoked,
so ``mergekit-led --help`` stays fast.
"""

from __future__ import annotations

import errno
import functools
import importlib
import sys
from typing import Optional

import click

from mergekit_led._version import __version__
from mergekit_led.console import library_bars_off_unless_terminal
from mergekit_led.errors import LEDError, is_out_of_memory, is_safetensors_error

# name -> (module, one-line help shown by `mergekit-led --help` without importing it)
_SUBCOMMANDS = {
    "merge": (
        "mergekit_led.cli.merge",
        "Merge a mergekit YAML config (every mergekit-yaml option).",
    ),
    "locate": ("mergekit_led.cli.locate", "Importance scores of a model on a task's data."),
    "inspect": ("mergekit_led.cli.inspect", "What an led_merging config elects, writing no model."),
    "card": ("mergekit_led.cli.card", "Add the LED-Merging card section to a finished merge."),
    "prepare": (
        "mergekit_led.cli.prepare",
        "Compute the stores a config asks for by importance_data.",
    ),
    "cache": ("mergekit_led.cli.cache", "The store cache of prepare/merge: ls, rm, prune."),
    "store": ("mergekit_led.cli.store", "Inspect, convert and verify importance stores."),
    "evaluate": (
        "mergekit_led.cli.evaluate",
        "Harmful compliance, over-refusal and accuracy of a model.",
    ),
    "judge": (
        "mergekit_led.cli.judge",
        "Verdicts and metrics of answers generated elsewhere (a JSONL file).",
    ),
    "sweep": (
        "mergekit_led.cli.sweep",
        "Merge and evaluate a grid of LED and baseline settings.",
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx, name):
        if name in _SUBCOMMANDS:
            return importlib.import_module(_SUBCOMMANDS[name][0]).command
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        # The group's --help lists the subcommands from their one-line help alone:
        # importing them would load torch, transformers and mergekit just to print it.
        rows = [(name, _SUBCOMMANDS[name][1]) for name in sorted(_SUBCOMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mergekit-led")
def main() -> None:
    """LED-Merging (Locate, Elect, Disjoint) for mergekit.

    \b
    1. mergekit-led locate     importance scores of a model on a task's data
    2. mergekit-led sweep      which densities and weights: a grid, merged and evaluated
    3. mergekit-led merge      a mergekit YAML config with merge_method: led_merging
    4. mergekit-led evaluate   is the merge safe and useful?
    """
    library_bars_off_unless_terminal()  # before any subcommand imports a library


def run_cli_errors_cleanly(function):
    """Print the errors a user can cause as one line (exit 1) instead of a traceback:
    LED's input errors, and the OS, safetensors and out-of-memory errors that
    escape from the libraries (with the file or output folder they concern)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LEDError as error:
            _fail(str(error))
        except OSError as error:
            _fail(describe_os_error(error, writing=kwargs.get("out_path") or kwargs.get("out")))
        except Exception as error:
            message = describe_library_error(error)
            if message is None:
                raise  # a bug, not a bad input: keep the traceback for the report
            _fail(message)

    return wrapper


def _fail(message: str) -> None:
    one_line = " ".join(line.strip() for line in message.splitlines() if line.strip())
    click.echo(f"Error: {one_line}", err=True)
    sys.exit(1)


def describe_os_error(error: OSError, *, writing: Optional[str] = None) -> str:
    """One line for an OS error: what failed, on which file; disk-full said plainly."""
    where = error.filename or writing
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        target = f"while writing {where}" if where else "while writing"
        return (
            f"Disk full: no space left on the device {target}. Free some space or write "
            "to another disk; what was being written was discarded."
        )
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename is not None:
        second = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{reason}: {error.filename}{second}"
    return f"{reason} (while working on {writing})" if writing else reason


def describe_library_error(error: Exception) -> Optional[str]:
    """One line for a safetensors or out-of-memory error; None for anything else."""
    if is_safetensors_error(error):
        return (
            f"Cannot read a safetensors file ({error}); it is truncated or not a safetensors file."
        )
    if is_out_of_memory(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"Out of memory{': ' + first if first else ''}."
    return None
