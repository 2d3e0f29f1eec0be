"""``mergekit-led merge CONFIG OUT``: ``mergekit-yaml`` with LED's checks first."""

import shlex

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.prepare import cache_dir_option


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
@click.option(
    "--allow-bad-tokenization",
    is_flag=True,
    help="Write the importance stores this merge computes even when their answers tokenize "
    "badly (as `mergekit-led prepare --allow-bad-tokenization`).",
)
@add_merge_options
@cache_dir_option
@run_cli_errors_cleanly
def command(
    merge_options: MergeOptions,
    config_file: str,
    out_path: str,
    overwrite: bool,
    allow_bad_tokenization: bool,
    cache_dir,
):
    """Merge like `mergekit-yaml CONFIG_FILE OUT_PATH` (every option of it works),
    after checking an led_merging config, its stores and models as a whole.

    The merge is written beside OUT_PATH and moved there in one step once
    complete (model card with an LED-Merging section included). In an existing
    OUT_PATH, the files a merge writes (weights, config, tokenizer, card) all
    come from the new merge, so no shard of an earlier merge is left next to
    new ones (mergekit-yaml leaves them); every other file and subfolder is
    kept. An existing folder that is not an earlier merge output needs
    --overwrite. OUT_PATH is never an input model or importance store, nor
    inside or around one.

    Models that give `importance_data` instead of store paths get their stores
    computed first (or taken from the store cache), as `mergekit-led prepare`."""
    from mergekit_led.config.walker import load_config
    from mergekit_led.console import on_terminal
    from mergekit_led.merge import merge_config

    merge_options.apply_global_options()
    config, source = load_config(config_file)
    command = f"mergekit-led merge {shlex.join([config_file, out_path])}"
    run = {
        "trust_remote_code": merge_options.trust_remote_code,
        "allow_bad_tokenization": allow_bad_tokenization,
    }
    progress = not merge_options.quiet
    config = _prepared(config, cache_dir, run, progress, command)
    if progress and not on_terminal():
        # mergekit's bars (loader warm-up, graph execution) would be a line per
        # refresh in a log: one line for the stage instead.
        merge_options = merge_options.model_copy(update={"quiet": True})
        click.echo(f"merging {config_file} into {out_path}", err=True)
    merge_config(config, out_path, options=merge_options, config_source=source, overwrite=overwrite)


def _prepared(config, cache_dir, run, progress: bool, command):
    """The config with its importance_data stores computed and Hub stores fetched."""
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.prepare.config_prepare import needs_preparing, prepare_config

    if not needs_preparing(config):
        return config
    prepared = prepare_config(
        config,
        cache=StoreCache(cache_dir),
        run=run,
        report=lambda line: click.echo(line, err=True),
        progress=progress,
        command=command,
    )
    return prepared.merge_config
