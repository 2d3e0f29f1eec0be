"""``mergekit-led merge``: mergekit's own YAML merge, checked first and written atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Optional

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

from mergekit_led.errors import ConfigError
from mergekit_led.led_merging import METHOD_NAME
from mergekit_led.preflight import preflight


def load_config(config_file: str) -> tuple[MergeConfiguration, str]:
    try:
        with open(config_file, encoding="utf-8") as f:
            source = f.read()
    except OSError as error:
        raise ConfigError(f"Cannot read merge config {config_file}: {error}") from None
    try:
        return MergeConfiguration.model_validate(yaml.safe_load(source)), source
    except Exception as error:
        raise ConfigError(f"Invalid merge config {config_file}: {error}") from None


def merge_config(
    config: MergeConfiguration,
    out_path: str,
    options: Optional[MergeOptions] = None,
    config_source: Optional[str] = None,
) -> str:
    """Run mergekit's merge after LED's config checks, into a staging folder that
    is moved into ``out_path`` only once the merge is complete."""
    options = options or MergeOptions()
    preflight(config)
    out_path = os.path.abspath(out_path)
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(
        parent, f".{os.path.basename(out_path)}.partial-{uuid.uuid4().hex[:8]}"
    )
    try:
        # run_merge normalises the config in place (models -> modules -> slices);
        # the card section reads the config as the user wrote it.
        run_merge(
            config.model_copy(deep=True),
            staging,
            options=options,
            config_source=config_source,
        )
        if config.merge_method == METHOD_NAME and options.write_model_card:
            _add_card_section(config, staging)
        _move_into(staging, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path


def _add_card_section(config: MergeConfiguration, out_path: str) -> None:
    from mergekit_led.card import add_led_section

    add_led_section(config, out_path)


def _move_into(staging: str, out_path: str) -> None:
    if not os.path.exists(out_path):
        os.rename(staging, out_path)
        return
    for name in os.listdir(staging):
        target = os.path.join(out_path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
