"""``mergekit-led cache ls | rm | prune``: the store cache of ``prepare``/``merge``."""

from __future__ import annotations

import datetime
from typing import Optional, Tuple

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.prepare import cache_dir_option


def _cache(cache_dir: Optional[str]):
    from mergekit_led.prepare.cache import StoreCache

    return StoreCache(cache_dir)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


@click.group("cache")
def command() -> None:
    """The store cache: importance stores computed for `importance_data`,
    one per model, data and score options (content-addressed)."""


@command.command("ls")
@cache_dir_option
@run_cli_errors_cleanly
def list_entries(cache_dir: Optional[str]) -> None:
    """List the cached stores (and what interrupted runs left); every file is
    checked against the checksum its entry records, as a merge does."""
    from mergekit_led.tables import text_table

    cache = _cache(cache_dir)
    entries = cache.entries(verify=True)
    rows = []
    total = 0
    for entry in entries:
        size = entry.size
        total += size
        record = entry.record or {}
        used = datetime.datetime.fromtimestamp(entry.last_used).strftime("%Y-%m-%d %H:%M")
        rows.append(
            [
                entry.key[:12],
                record.get("score") if entry.complete else f"broken: {entry.problem}",
                record.get("model"),
                record.get("data"),
                record.get("samples"),
                _size(size),
                used,
            ]
        )
    click.echo(f"store cache {cache.root}")
    if rows:
        header = ["key", "score", "model", "data", "samples", "size", "last used"]
        click.echo(text_table(header, rows))
    leftovers = cache.leftovers()
    click.echo(
        f"{len(entries)} entries, {_size(total)}"
        + (
            f"; {len(leftovers)} leftovers of interrupted runs (`mergekit-led cache prune` "
            "removes those no run is using)"
            if leftovers
            else ""
        )
    )


@command.command("rm")
@click.argument("keys", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every entry.")
@cache_dir_option
@run_cli_errors_cleanly
def remove(keys: Tuple[str, ...], remove_all: bool, cache_dir: Optional[str]) -> None:
    """Remove the entries whose keys start with KEYS (as `cache ls` shows them)."""
    from mergekit_led.errors import CacheError

    cache = _cache(cache_dir)
    if remove_all == bool(keys):
        raise CacheError("Give the keys of the entries to remove, or --all (not both).")
    entries = cache.entries() if remove_all else [cache.match(key) for key in keys]
    for entry in entries:
        cache.remove(entry.key)
        click.echo(f"removed {entry.key}")


@command.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=float,
    default=None,
    help="Also remove entries not used for this many days.",
)
@cache_dir_option
@run_cli_errors_cleanly
def prune(older_than: Optional[float], cache_dir: Optional[str]) -> None:
    """Remove broken entries and what killed runs left behind (skipping any a
    running process holds), and with --older-than, entries unused that long."""
    removed = _cache(cache_dir).prune(older_than_days=older_than)
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} removed")
