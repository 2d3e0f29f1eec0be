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

_SUBCOMMANDS = {
    "merge": "mergekit_led.cli.merge",
    "locate": "mergekit_led.cli.locate",
    "inspect": "mergekit_led.cli.inspect",
    "card": "mergekit_led.cli.card",
    "demo": "mergekit_led.cli.demo",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx, name):
        if name in _SUBCOMMANDS:
            return importlib.import_module(_SUBCOMMANDS[name]).command
        return super().get_command(ctx, name)


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
