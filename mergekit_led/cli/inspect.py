"""``mergekit-led inspect CONFIG``: what an led_merging config would elect, without merging."""

from __future__ import annotations

import json
from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.cli.prepare import cache_dir_option, stores_from_cache


@click.command("inspect")
@click.argument("config_file")
@click.option("--per-weight", is_flag=True, help="One row per weight tensor instead of per layer.")
@click.option(
    "--plot", "plot_path", default=None, help="Write a layers × weight types Jaccard heatmap PNG."
)
@click.option(
    "--json",
    "json_path",
    default=None,
    help="Write every count as JSON to this file ('-' for stdout).",
)
@click.option(
    "--density",
    "density_override",
    type=float,
    default=None,
    help="Elect every model at this ratio instead of its configured density "
    "(e.g. 0.2 for the paper's overlap analysis).",
)
@click.option("--device", default=None, help="Device for the election (cpu, cuda).")
@cache_dir_option
@run_cli_errors_cleanly
def command(
    config_file: str,
    per_weight: bool,
    plot_path: Optional[str],
    json_path: Optional[str],
    density_override: Optional[float],
    device: Optional[str],
    cache_dir: Optional[str],
):
    """Report what an led_merging CONFIG_FILE elects, writing no model.

    Per layer (or per weight with --per-weight) and per fine-tuned model: the
    elected important set |N_i|, how many of those the disjoint step drops, the
    final |T_i| merged from that model, and the pairwise Jaccard overlap of the
    important sets N_i.
    """
    from mergekit_led.analysis.config_analysis import analyze_config, short_label
    from mergekit_led.analysis.render import analysis_table, plot_heatmap
    from mergekit_led.config.walker import load_config
    from mergekit_led.environment import check_device

    if device is not None:
        check_device(device)
    if plot_path:  # before the analysis: a missing matplotlib fails in a second, not minutes
        from mergekit_led.plotting import require

        require("The Jaccard heatmap (--plot)")
    config = stores_from_cache(load_config(config_file)[0], config_file, cache_dir)
    analysis = analyze_config(
        config, density_override=density_override, device=device, progress=json_path != "-"
    )
    if json_path == "-":
        click.echo(json.dumps(analysis.to_json(), indent=2))
        return
    click.echo(
        f"base {analysis.base_model}; election {analysis.election}; "
        f"disjoint {str(analysis.disjoint).lower()}"
    )
    for m in analysis.models:
        click.echo(
            f"  {short_label(m.label)}: density {m.density:g}, weight {m.weight:g}  ({m.label})"
        )
    groups = analysis.weights if per_weight else analysis.by_layer()
    click.echo("")
    click.echo(analysis_table(analysis, [*groups, analysis.overall()]))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(analysis.to_json(), f, indent=2)
        click.echo(f"\nwrote {json_path}")
    if plot_path:
        plot_heatmap(analysis, plot_path)
        click.echo(f"wrote {plot_path}")
