"""Reading the user's YAML files other than merge configs (EVAL.yml, GRID.yml).

One function, so every such file is read the same way: safe YAML, UTF-8, and a
one-line error of the caller's class naming the file and what is wrong.
"""

from __future__ import annotations

import os
from typing import Any, Type

import yaml

from mergekit_led.errors import LEDError


def read_yaml(path: str, *, what: str, error: Type[LEDError]) -> Any:
    """The parsed contents of ``path``; ``what`` names the file in errors
    (e.g. ``"Evaluation spec"``)."""
    if not os.path.isfile(path):
        raise error(f"{what} {path} does not exist or is not a file.")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except UnicodeDecodeError as cause:
        raise error(f"{what} {path} is not UTF-8 text ({cause.reason}).") from cause
    except yaml.YAMLError as cause:
        reason = " ".join(str(cause).split())
        raise error(f"{what} {path} is not valid YAML: {reason}") from cause
