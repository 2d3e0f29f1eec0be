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

    config, source = load_config(config_file)
    seed = config_seed(config_file, source, merge_options.random_seed)
    if seed != merge_options.random_seed:  # MergeOptions is frozen
        merge_options = merge_options.model_copy(update={"random_seed": seed})
    merge_options.apply_global_options()  # seeds torch with it
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


def config_seed(config_file: str, source: str, option):
    """The seed of the merge: ``random_seed`` of the config (a sweep's best.yml
    carries the seed its row was merged with; mergekit ignores the key), else
    ``--random-seed``; both, when they differ, are refused."""
    from mergekit_led.config.yaml_file import load_yaml_bounded
    from mergekit_led.errors import ConfigError

    data = load_yaml_bounded(source, what=f"Merge config {config_file}")
    seed = data.get("random_seed") if isinstance(data, dict) else None
    if seed is None:
        return option
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(
            f"Merge config {config_file}: random_seed must be a whole number >= 0, got {seed!r}."
        )
    if option is not None and option != seed:
        raise ConfigError(
            f"--random-seed {option} differs from random_seed {seed} of merge config "
            f"{config_file}; give one of them."
        )
    return seed


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
