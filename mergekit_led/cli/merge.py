"""``mergekit-led merge CONFIG OUT``: ``mergekit-yaml`` with LED's checks first."""

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_led.cli import run_cli_errors_cleanly


@click.command("merge", cls=PrettyPrintHelp)
@click.argument("config_file")
@click.argument("out_path")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into OUT_PATH even when it is an existing folder that is not an "
    "earlier merge output (files a merge writes are replaced, everything else is "
    "kept). Never allowed for an input model or store.",
)
@add_merge_options
@run_cli_errors_cleanly
def command(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH` (every option of it works),
    after checking an led_merging config, its stores and models as a whole.

    The merge is written beside OUT_PATH and moved there in one step once
    complete (model card with an LED-Merging section included). In an existing
    OUT_PATH, the files a merge writes (weights, config, tokenizer, card) all
    come from the new merge, so no shard of an earlier merge is left next to
    new ones (mergekit-yaml leaves them); every other file and subfolder is
    kept. An existing folder that is not an earlier merge output needs
    --overwrite. OUT_PATH is never an input model or importance store, nor
    inside or around one."""
    from mergekit_led.config.walker import load_config
    from mergekit_led.merge import merge_config

    merge_options.apply_global_options()
    config, source = load_config(config_file)
    merge_config(
        config, out_path, options=merge_options, config_source=source, overwrite=overwrite
    )
