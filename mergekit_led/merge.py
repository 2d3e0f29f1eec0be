"""``mergekit-led merge``: mergekit's own YAML merge, checked first and written atomically.

The LED-Merging card section is built from the election statistics the merge
method records while mergekit merges (``method.recording``): no store is read
a second time.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions

from mergekit_led.analysis.card import add_led_section
from mergekit_led.analysis.elections import from_recorded
from mergekit_led.atomic import staging_path
from mergekit_led.config.preflight import preflight
from mergekit_led.core.parameters import METHOD_NAME
from mergekit_led.method.recording import recording_statistics


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
    is_led = config.merge_method == METHOD_NAME
    staging = staging_path(out_path)
    os.makedirs(staging)
    try:
        with recording_statistics() as recorded:
            # run_merge normalises the config in place (models -> modules -> slices);
            # the card section reads the config as the user wrote it.
            run_merge(
                config.model_copy(deep=True),
                staging,
                options=options,
                config_source=config_source,
            )
        if is_led and options.write_model_card:
            add_led_section(config, staging, from_recorded(config, recorded))
        _move_into(staging, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path


def _move_into(staging: str, out_path: str) -> None:
    if not os.path.exists(out_path):
        os.rename(staging, out_path)
        return
    for name in os.listdir(staging):
        target = os.path.join(out_path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
