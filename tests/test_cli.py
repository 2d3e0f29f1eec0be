"""The ``mergekit-led`` group: every subcommand listed, loadable, and its help printed."""

from __future__ import annotations

import importlib

import click
from click.testing import CliRunner

from mergekit_led.cli import _SUBCOMMANDS, main


def test_group_help_lists_every_subcommand_with_its_one_line_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name, (_, summary) in _SUBCOMMANDS.items():
        assert f"{name}  " in result.output and summary in result.output, name


def test_every_subcommand_module_exposes_its_click_command():
    for name, (module, _) in _SUBCOMMANDS.items():
        command = importlib.import_module(module).command
        assert isinstance(command, click.Command) and command.name == name
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and f"Usage: main {name}" in result.output, result.output
