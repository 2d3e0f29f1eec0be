"""``mergekit-led locate``: the command line of ``mergekit_led.location.locate``.

Its options are generated from ``LocateOptions``, the one list of locate's
options, their defaults and their help; ``mergekit-led prepare`` takes its
execution options from the same generator (``locate_click_options``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import Field
from typing import Optional, Sequence, Tuple

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.core.locate_options import option_fields


def option_choices(spec: Field) -> Optional[Tuple[str, ...]]:
    """The values a ``LocateOptions`` field takes, when it lists them: its own
    ``choices``, or for ``score`` the names of the table of score kinds."""
    if spec.metadata.get("choices_of") == "score kinds":
        from mergekit_led.location.score_kinds import SCORE_KINDS

        return tuple(SCORE_KINDS)
    return spec.metadata.get("choices")


def locate_click_options(names: Optional[Sequence[str]] = None):
    """A decorator adding the click options of ``LocateOptions``'s command-line
    fields (``names`` of them, in that order; default: all, in field order)."""
    specs = {spec.name: spec for spec in option_fields()}
    chosen = [specs[name] for name in names] if names is not None else list(specs.values())

    def decorate(function):
        for spec in reversed(chosen):
            meta = spec.metadata
            name = "--" + spec.name.replace("_", "-")
            if meta.get("flag"):
                function = click.option(name, spec.name, is_flag=True, help=meta["help"])(function)
                continue
            choices = option_choices(spec)
            kind = click.Choice(choices) if choices else meta.get("type", str)
            function = click.option(
                name,
                spec.name,
                type=kind,
                default=spec.default,
                show_default=True,
                help=meta["help"],
            )(function)
        return function

    return decorate


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
@locate_click_options()
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
