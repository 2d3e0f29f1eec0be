"""Issue 29: the commands written in the example configs' comments use options
their command has (the sweep grid showed `sweep ... --cuda`; sweep takes
`--device cuda`)."""

from __future__ import annotations

import re
from pathlib import Path

EXAMPLES = Path(__file__).parents[2] / "example_configs"


def _commands(path: Path):
    """Each ``mergekit-led SUB ...`` command in the file's comments, its
    backslash-continued lines joined."""
    lines = [
        line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")
    ]
    text = re.sub(r"\s*\\\s*\n\s*", " ", "\n".join(lines))
    return re.findall(r"mergekit-led (\w+)((?: [^\s`]+)*)", text)


def test_the_example_commands_use_real_options():
    from mergekit_led.cli import main

    found = []
    for path in sorted(EXAMPLES.rglob("*.yml")):
        for sub, rest in _commands(path):
            command = main.get_command(None, sub)
            if command is None:
                continue
            known = {opt for p in command.params for opt in getattr(p, "opts", [])}
            for option in re.findall(r"(?<!\S)(--[\w-]+)", rest):
                found.append((path.name, sub, option))
                assert option in known, (
                    f"{path.relative_to(EXAMPLES)}: `mergekit-led {sub}` has no {option}"
                )
    assert ("grid-llama3-safety-math-code.yml", "sweep", "--device") in found
