"""The ``mergekit-led`` command line: the group, and the error wrapper every subcommand uses.

Each subcommand is one thin module of this package, imported only when invoked,
so ``mergekit-led --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import sys

import click

from mergekit_led._version import __version__
from mergekit_led.errors import LEDError

# name -> (module, one-line help shown by `mergekit-led --help` without importing it)
_SUBCOMMANDS = {
    "merge": ("mergekit_led.cli.merge", "Merge a mergekit YAML config (every mergekit-yaml option)."),
    "locate": ("mergekit_led.cli.locate", "Importance scores of a model on a task's data."),
    "inspect": ("mergekit_led.cli.inspect", "What an led_merging config elects, writing no model."),
    "card": ("mergekit_led.cli.card", "Add the LED-Merging card section to a finished merge."),
    "demo": ("mergekit_led.cli.demo", "The whole story on a tiny offline model family."),
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
    1. mergekit-led locate   importance scores of a model on a task's data
    2. mergekit-led merge    a mergekit YAML config with merge_method: led_merging
    """


def run_cli_errors_cleanly(function):
    """Print LED's input errors as one line (exit 1) instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LEDError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)

    return wrapper
