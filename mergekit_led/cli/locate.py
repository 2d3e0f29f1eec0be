"""``mergekit-led locate``: the command line of ``mergekit_led.location.locate``.

Its options are generated from ``LocateOptions``, the one list of locate's
options, their defaults and their help.
"""

from __future__ import annotations

import logging
import os

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.location.options import option_fields


def _locate_options(function):
    for spec in reversed(option_fields()):
        meta = spec.metadata
        name = "--" + spec.name.replace("_", "-")
        if meta.get("flag"):
            function = click.option(name, spec.name, is_flag=True, help=meta["help"])(function)
            continue
        kind = click.Choice(meta["choices"]) if "choices" in meta else meta.get("type", str)
        function = click.option(
            name, spec.name, type=kind, default=spec.default, help=meta["help"]
        )(function)
    return function


@click.command("locate", context_settings={"show_default": True})
@click.option("--model", "model", required=True, help="Checkpoint folder or hub id to score.")
@click.option(
    "--data",
    "data",
    default=None,
    help="JSONL/JSON/CSV/Parquet file, datasets save_to_disk folder, or hub dataset name "
    "(not needed by --score magnitude|random).",
)
@click.option("--out", "out", default=None, help="Importance store folder to write (required).")
@_locate_options
@click.option(
    "--plan",
    is_flag=True,
    help="Print the memory plan (from the model's config; the data when given) and the "
    "flags that fit, and exit without scoring.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@run_cli_errors_cleanly
def command(model, data, out, plan, no_progress, verbose, **options):
    """Compute LED-Merging importance scores (SNIP by default) of MODEL on a
    task's (prompt, answer) data and write them as an importance store.

    \b
    Run it twice per task: on the fine-tuned model and on the base model, with
    the same data; the two stores are `importance` and `base_importance` of
    that model in an led_merging config. Under `torchrun --nproc_per_node N
    --no-python mergekit-led locate ...` the samples are split over N processes.

    \b
    Before loading the model, locate checks its memory plan against the GPU's
    free memory (or --memory) and stops when it cannot fit; --plan prints the
    plan and the flags that fit without running.
    """
    from mergekit_led.location import locate

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if plan:
        from mergekit_led.location import plan_locate
        from mergekit_led.location.memory import render
        from mergekit_led.location.rates import estimate_seconds_per_sample

        verdict = plan_locate(model, data, **options)
        for line in render(verdict, seconds_per_sample=estimate_seconds_per_sample(verdict)):
            click.echo(line)
        return
    if out is None:
        raise click.UsageError("Missing option '--out' (only --plan runs without it).")
    path = locate(model, data, out, progress=not no_progress, **options)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"Wrote importance store {path}")
