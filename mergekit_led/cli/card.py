"""``mergekit-led card CONFIG OUT_PATH``: the LED-Merging card section for a plain mergekit-yaml merge."""

from __future__ import annotations

from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.prepare import cache_dir_option, stores_from_cache


@click.command("card")
@click.argument("config_file")
@click.argument("out_path")
@click.option("--device", default=None, help="Device for the election (cpu, cuda).")
@cache_dir_option
@run_cli_errors_cleanly
def command(config_file: str, out_path: str, device: Optional[str], cache_dir: Optional[str]):
    """Add the LED-Merging section to OUT_PATH/README.md of an existing merge of
    CONFIG_FILE (e.g. one run with plain mergekit-yaml)."""
    from mergekit_led.analysis.config_analysis import analyze_config
    from mergekit_led.analysis.model_card import add_led_section
    from mergekit_led.config.walker import load_config
    from mergekit_led.environment import check_device
    from mergekit_led.merge import check_not_an_input

    if device is not None:
        check_device(device)
    config = stores_from_cache(load_config(config_file)[0], config_file, cache_dir)
    # The card is written into OUT_PATH: never into a model or store of the config.
    check_not_an_input(config, out_path, what="Merge output", writer="card")
    analysis = analyze_config(config, device=device, progress=True)
    readme = add_led_section(config, out_path, analysis)
    click.echo(f"added the LED-Merging section to {readme}")
