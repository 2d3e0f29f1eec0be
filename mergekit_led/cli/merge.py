"""``mergekit-led merge CONFIG OUT``: ``mergekit-yaml`` with LED's checks first."""

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_led.cli import run_cli_errors_cleanly


@click.command("merge", cls=PrettyPrintHelp)
@click.argument("config_file")
@click.argument("out_path")
@add_merge_options
@run_cli_errors_cleanly
def command(merge_options: MergeOptions, config_file: str, out_path: str):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH` (every option of it works),
    after checking an led_merging config, its stores and models as a whole. The
    output folder appears only once the merge is complete; the model card gets
    an LED-Merging section."""
    from mergekit_led.config.walker import load_config
    from mergekit_led.merge import merge_config

    merge_options.apply_global_options()
    config, source = load_config(config_file)
    merge_config(config, out_path, options=merge_options, config_source=source)
