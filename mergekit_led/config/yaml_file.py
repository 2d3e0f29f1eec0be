"""Reading the user's YAML files other than merge configs (EVAL.yml, GRID.yml).

One function, so every such file is read the same way as a merge config: a
regular file, UTF-8, safe YAML with its alias expansion bounded
(``walker.load_yaml_bounded``), and a one-line error of the caller's class
naming the file and what is wrong.
"""

from __future__ import annotations

import os
from typing import Any, Type

import yaml

from mergekit_led.errors import ConfigError, LEDError


def read_yaml(path: str, *, what: str, error: Type[LEDError]) -> Any:
    """The parsed contents of ``path``; ``what`` names the file in errors
    (e.g. ``"Evaluation spec"``)."""
    from mergekit_led.config.walker import load_yaml_bounded

    if not os.path.isfile(path):  # a FIFO or device would block: regular files only
        raise error(f"{what} {path} does not exist or is not a regular file.")
    try:
        with open(path, encoding="utf-8") as f:
            return load_yaml_bounded(f.read(), what=f"{what} {path}")
    except ConfigError as cause:
        raise error(str(cause)) from cause
    except UnicodeDecodeError as cause:
        raise error(f"{what} {path} is not UTF-8 text ({cause.reason}).") from cause
    except yaml.YAMLError as cause:
        reason = " ".join(str(cause).split())
        raise error(f"{what} {path} is not valid YAML: {reason}") from cause
