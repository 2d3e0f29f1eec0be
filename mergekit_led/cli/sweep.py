"""``mergekit-led sweep CONFIG GRID OUT --eval EVAL.yml``: the grid search as a command."""

from __future__ import annotations

from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.prepare import cache_dir_option
from mergekit_led.environment import DEVICE_CHOICES


@click.command("sweep")
@click.argument("config_file")
@click.argument("grid_file")
@click.argument("out")
@click.option("--eval", "eval_file", required=True, help="The evaluation spec (EVAL.yml).")
@click.option(
    "--select",
    "select",
    type=click.Choice(["balanced", "max-utility"]),
    default="balanced",
    show_default=True,
    help="The rule that picks best.yml (docs/sweep.md).",
)
@click.option(
    "--max-harmful",
    type=float,
    default=None,
    help="With --select max-utility: the largest harmful compliance allowed (a share).",
)
@click.option(
    "--max-settings",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Refuse a grid of more settings than this.",
)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts per generation batch [default: the spec's].",
)
@click.option(
    "--scratch",
    default=None,
    help="Folder for the temporary merges [default: /dev/shm when it has room, else OUT/.scratch].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="mergekit's random seed (DARE's random drops).",
)
@click.option(
    "--allow-bad-tokenization",
    is_flag=True,
    help="As `mergekit-led prepare --allow-bad-tokenization`.",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the models' own code.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@cache_dir_option
@run_cli_errors_cleanly
def command(
    config_file: str,
    grid_file: str,
    out: str,
    eval_file: str,
    select: str,
    max_harmful: Optional[float],
    max_settings: int,
    device: str,
    batch_size: Optional[int],
    scratch: Optional[str],
    seed: int,
    allow_bad_tokenization: bool,
    trust_remote_code: bool,
    quiet: bool,
    cache_dir: Optional[str],
):
    """Merge CONFIG_FILE under every setting of GRID_FILE (LED's densities,
    weights, election, disjoint, and baseline methods), evaluate each with
    EVAL.yml and select one by a rule fixed before the run. Writes
    OUT/sweep.jsonl (a row per setting, resumable), OUT/sweep.md,
    OUT/pareto.png and OUT/best.yml (docs/sweep.md)."""
    import logging

    from mergekit_led.config.walker import load_config
    from mergekit_led.config.yaml_file import load_yaml_bounded
    from mergekit_led.evaluation import load_eval_spec
    from mergekit_led.sweep import SelectionRule, SweepOptions, load_grid, run_sweep
    from mergekit_led.sweep.sweeper import model_names

    logging.getLogger("mergekit").setLevel(logging.WARNING)
    rule = SelectionRule(select, max_harmful)
    _, source = load_config(config_file)  # mergekit's and LED's checks of the config
    config = load_yaml_bounded(source, what=f"Merge config {config_file}")
    settings = load_grid(grid_file, model_names(config), max_settings=max_settings)
    spec = load_eval_spec(eval_file)
    options = SweepOptions(
        device=device,
        cache_dir=cache_dir,
        scratch=scratch,
        batch_size=batch_size,
        max_settings=max_settings,
        seed=seed,
        progress=not quiet,
        allow_bad_tokenization=allow_bad_tokenization,
        trust_remote_code=trust_remote_code,
    )
    result = run_sweep(
        config,
        settings,
        spec,
        out,
        rule=rule,
        options=options,
        report=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)),
    )
    click.echo(open(result.paths["table"], encoding="utf-8").read())
    if result.selected is None:
        raise click.ClickException(
            f"No setting meets the rule ({rule.describe()}); see {result.paths['table']}."
        )
    click.echo(f"best: {result.paths['best']}", err=True)
