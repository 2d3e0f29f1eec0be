"""Helpers of the adversarial suite: running the CLI and reading what it left."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List

from click.testing import CliRunner


def run_cli(*args) -> CliResult:
    from mergekit_led.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    return CliResult(result)


class CliResult:
    """exit code and everything printed (stdout, stderr and an escaped exception)."""

    def __init__(self, result):
        self.exit_code = result.exit_code
        text = result.output or ""  # click >= 8.2: stdout and stderr interleaved
        try:
            stderr = result.stderr or ""
        except (ValueError, AttributeError):
            stderr = ""
        if stderr and stderr not in text:
            text += stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            text += f"\nTraceback: {type(result.exception).__name__}: {result.exception}"
        self.text = text

    def error_lines(self) -> List[str]:
        return [line for line in self.text.splitlines() if line.startswith("Error:")]

    def assert_one_line_error(self, *fragments: str) -> str:
        assert self.exit_code == 1, self.text
        assert "Traceback" not in self.text, self.text
        lines = self.error_lines()
        assert len(lines) == 1, self.text
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


def folder_digest(folder) -> Dict[str, str]:
    """name -> sha256 of every file under ``folder`` (to prove it was not touched)."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def hidden_leftovers(parent, name: str) -> List[str]:
    """Entries of ``parent`` besides ``name`` itself that mention ``name``."""
    return sorted(p for p in os.listdir(parent) if name in p and p != name)
