"""``mergekit-led store info|convert|verify``: the store files users move around and share."""

from __future__ import annotations

import json
import sys
from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


@click.group("store")
def command() -> None:
    """Inspect, convert and verify importance stores."""


@command.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--no-scan", is_flag=True, help="Manifest and file sizes only; read no scores.")
@run_cli_errors_cleanly
def info(store: str, as_json: bool, no_scan: bool) -> None:
    """What STORE holds: model, fingerprint, score kind, dataset, dtype, size,
    weights, and a histogram of its scores by power of ten."""
    from mergekit_led.store.inspection import store_info
    from mergekit_led.tables import text_table

    result = store_info(store, scan=not no_scan)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    dataset = result.dataset or {}
    lines = [
        f"store        {result.path}",
        f"format       {result.format_version}"
        + (
            "  (format 1: `mergekit-led store convert` writes format 2)"
            if result.format_version == 1
            else ""
        ),
        f"dtype        {result.dtype}",
        f"model        {result.model}",
        f"fingerprint  {result.model_fingerprint or '–'}",
        f"score        {result.score}",
        f"dataset      {dataset.get('name') or '–'}"
        + (
            f"  ({dataset.get('samples')} samples, {dataset.get('answer_tokens')} answer "
            f"tokens, {dataset.get('fingerprint') or 'no fingerprint'})"
            if dataset
            else ""
        ),
        f"weights      {result.weights} tensors, {result.elements:,} scores"
        + (f", {len(result.aliases)} aliases" if result.aliases else ""),
        f"size         {_size(result.size_on_disk)} on disk in {len(result.files)} files, "
        f"{result.size_on_disk / max(result.elements, 1):.3f} bytes per score",
        f"created      {result.created or '–'}",
    ]
    click.echo("\n".join(lines))
    histogram = result.histogram
    if histogram is None:
        return
    share = histogram.zeros / max(histogram.elements, 1)
    click.echo("")
    click.echo(f"scores  {histogram.zeros:,} zero ({share:.1%})")
    if histogram.max is not None:
        low = histogram.min_positive
        click.echo(
            f"        min positive {'–' if low is None else f'{low:.3g}'}, "
            f"max {histogram.max:.3g}, mean {histogram.mean:.3g}"
        )
    if histogram.negative or histogram.nonfinite:
        click.echo(
            f"        INVALID: {histogram.negative:,} negative, {histogram.nonfinite:,} "
            "non-finite (run `mergekit-led store verify`)"
        )
    if histogram.decades:
        rows = [
            [f"[1e{d}, 1e{d + 1})", f"{count:,}", f"{count / histogram.elements:.1%}"]
            for d, count in sorted(histogram.decades.items())
        ]
        click.echo("")
        click.echo(text_table(["positive scores in", "count", "share"], rows))


@command.command("convert")
@click.argument("store")
@click.argument("out")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default=None,
    help="dtype of the converted scores [default: the store's]. float32 -> bfloat16 "
    "rounds each score once (to nearest even); bfloat16 -> float32 is exact.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing folder at OUT.")
@run_cli_errors_cleanly
def convert(store: str, out: str, dtype: Optional[str], overwrite: bool) -> None:
    """Write STORE to OUT in the current format (format 2), optionally in another
    dtype. A format-1 store's sorted copies are dropped (4 bytes per score in
    float32, 2 in bfloat16). OUT may be STORE itself with --overwrite."""
    from mergekit_led.store.convert import convert_store
    from mergekit_led.store.inspection import store_info

    path = convert_store(store, out, dtype=dtype, overwrite=overwrite)
    result = store_info(path, scan=False)
    click.echo(
        f"Wrote importance store {path} (format {result.format_version}, {result.dtype}, "
        f"{_size(result.size_on_disk)})"
    )


@command.command("verify")
@click.argument("store")
@click.option(
    "--model",
    "model",
    default=None,
    help="Local checkpoint the store should score: names, shapes and fingerprint are "
    "checked against it.",
)
@run_cli_errors_cleanly
def verify(store: str, model: Optional[str]) -> None:
    """Check STORE completely: files against the manifest, checksums, every tensor
    readable, finite and non-negative; with --model, names, shapes and fingerprint
    against that checkpoint. Exit status 1 when anything is wrong."""
    from mergekit_led.store.inspection import verify_store

    report = verify_store(store, model=model)
    for note in report.notes:
        click.echo(f"note: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        click.echo(f"FAILED: {len(report.problems)} problem(s) in {report.path}", err=True)
        sys.exit(1)
    against = f" against {model}" if model else ""
    click.echo(f"OK: {report.path}: {report.weights_checked} weights checked{against}")
