"""The ``mergekit-led`` command line: merge, locate, inspect, card, demo."""

from __future__ import annotations

import importlib
import sys

import click

from mergekit_led._version import __version__

# Subcommands live next to what they drive and load only when invoked, so
# `mergekit-led --help` stays fast.
_SUBCOMMANDS = {
    "merge": ("mergekit_led.merge_cli", "merge_command"),
    "locate": ("mergekit_led.locate_cli", "locate_command"),
    "inspect": ("mergekit_led.inspect_cli", "inspect_command"),
    "card": ("mergekit_led.card", "card_command"),
    "demo": ("mergekit_led.demo.cli", "demo_command"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_SUBCOMMANDS))

    def get_command(self, ctx, name):
        if name in _SUBCOMMANDS:
            module_name, attribute = _SUBCOMMANDS[name]
            return getattr(importlib.import_module(module_name), attribute)
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
    import functools

    from mergekit_led.errors import LEDError

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except LEDError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(1)

    return wrapper


if __name__ == "__main__":
    main()
