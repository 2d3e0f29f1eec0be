"""``mergekit-led prepare CONFIG``: compute the stores a config asks for by
``importance_data`` and print (or write) the config with their paths."""

from __future__ import annotations

import logging
import shlex
from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.locate import locate_click_options
from mergekit_led.core.locate_options import RUN_OPTIONS

CACHE_HELP = (
    "Store cache folder [default: $MERGEKIT_LED_CACHE, else $XDG_CACHE_HOME/mergekit-led or "
    "~/.cache/mergekit-led]."
)


def cache_dir_option(function):
    return click.option("--cache-dir", "cache_dir", default=None, help=CACHE_HELP)(function)


def stores_from_cache(config, config_file: str, cache_dir: Optional[str]):
    """``config`` with its ``importance_data`` stores taken from the store cache
    and its Hub stores fetched; nothing is computed (inspect, card)."""
    from mergekit_led.errors import StoresNotComputed
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.prepare.config_prepare import needs_preparing, prepare_config

    if not needs_preparing(config):
        return config
    try:
        prepared = prepare_config(
            config, cache=StoreCache(cache_dir), compute=False, report=lambda line: None
        )
    except StoresNotComputed as error:
        where = f" --cache-dir {shlex.quote(cache_dir)}" if cache_dir else ""
        raise StoresNotComputed(
            f"{error} Compute them first: `mergekit-led prepare {shlex.quote(config_file)}{where}`."
        ) from None  # cause: the same error, extended
    return prepared.merge_config


def resolved_yaml(config, source_name: str) -> str:
    """The config as YAML (mergekit's own dumper), method and base first."""
    import yaml
    from mergekit.config import ConfigYamlDumper

    data = config.model_dump(exclude_defaults=True, mode="json")
    first = {key: data.pop(key) for key in ("merge_method", "base_model") if key in data}
    header = (
        f"# Resolved by mergekit-led prepare from {source_name}: importance/base_importance\n"
        "# point at the computed stores (importance_data and locate_* are kept for the record;\n"
        "# explicit store paths win). Merge with `mergekit-led merge` or `mergekit-yaml`.\n"
    )
    return header + yaml.dump({**first, **data}, Dumper=ConfigYamlDumper, sort_keys=False)


@click.command("prepare")
@click.argument("config_file")
@click.option(
    "-o", "--output", "output", default=None, help="Write the resolved config here (else print it)."
)
@cache_dir_option
@click.option("--dry-run", is_flag=True, help="Only list the stores: cached, or to compute.")
@click.option(
    "--plan",
    is_flag=True,
    help="Print every store's memory plan (models' configs and the data; no weights), the "
    "flags that fit and the time when measured, and exit.",
)
@locate_click_options(RUN_OPTIONS)  # locate's execution options: device, memory, ...
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@run_cli_errors_cleanly
def command(
    config_file: str,
    output: Optional[str],
    cache_dir: Optional[str],
    dry_run: bool,
    plan: bool,
    no_progress: bool,
    verbose: bool,
    **run,
):
    """Compute the importance stores an led_merging CONFIG_FILE asks for by
    `importance_data` (each fine-tuned model on its data, and the base model on
    the same data), reusing what the store cache already holds, and print the
    config with the store paths filled in.

    \b
    The resolved config merges with plain `mergekit-yaml` as well, and on
    another machine once the listed stores are copied there.
    """
    from mergekit_led.atomic import write_text
    from mergekit_led.config.walker import load_config
    from mergekit_led.errors import StoresNotComputed
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.prepare.config_prepare import check_resolved_output, prepare_config

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    config, _ = load_config(config_file)
    if plan:
        print_memory_plans(config, cache_dir, run)
        return
    if output:
        check_resolved_output(config, config_file, output)

    def report(line: str) -> None:
        click.echo(line, err=True)

    try:
        prepared = prepare_config(
            config,
            cache=StoreCache(cache_dir),
            run=run,
            compute=not dry_run,
            report=report,
            progress=not no_progress,
            command=f"mergekit-led prepare {shlex.quote(config_file)}",
        )
    except StoresNotComputed as missing:
        if not dry_run:
            raise
        click.echo(f"{missing} `mergekit-led prepare {config_file}` computes them.", err=True)
        return
    if dry_run:
        click.echo("Every store is in the cache.", err=True)
        return
    text = resolved_yaml(prepared.config, config_file)
    if output:
        write_text(output, text)
        click.echo(
            f"Wrote {output} ({prepared.computed} stores computed, "
            f"{len(prepared.stores) - prepared.computed} from the cache).",
            err=True,
        )
    else:
        click.echo(text, nl=False)


def print_memory_plans(config, cache_dir: Optional[str], run) -> None:
    """``prepare --plan``: each store's plan, and the time of those to compute."""
    from mergekit_led.location.memory import render
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.prepare.config_prepare import plan_config_memory

    plans = plan_config_memory(config, cache=StoreCache(cache_dir), run=run)
    if not plans:
        click.echo("This config asks for no stores by importance_data: nothing to plan.")
        return
    total: Optional[float] = 0.0
    for number, store in enumerate(plans, start=1):
        state = "cached" if store.cached else "to compute"
        click.echo(f"[{number}/{len(plans)}] {store.planned.describe()}: {state}")
        for line in render(store.verdict, seconds_per_sample=store.seconds_per_sample):
            click.echo("  " + line)
        if not store.cached:
            total = None if total is None or store.seconds is None else total + store.seconds
    to_compute = sum(not store.cached for store in plans)
    if total is None:
        click.echo(
            f"{to_compute} of {len(plans)} stores to compute; no locate speed was measured on "
            "this device, so no time estimate (docs/locate.md#memory-plan)."
        )
    else:
        click.echo(
            f"{to_compute} of {len(plans)} stores to compute: about {total / 60:.1f} min "
            "at the measured rate."
        )
