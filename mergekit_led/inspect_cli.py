"""``mergekit-led inspect CONFIG``: what an led_merging config would elect, without merging."""

from __future__ import annotations

import json
import math
from itertools import combinations
from typing import List, Optional, Sequence

import click

from mergekit_led.cli import run_cli_errors_cleanly


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _count(n: int) -> str:
    return f"{n:,}"


def analysis_table(analysis, groups) -> str:
    """One row per group: N, then per model |N_i| / dropped / |T_i|, then pairwise Jaccard."""
    from mergekit_led.analysis import short_label

    labels = [short_label(l) for l in analysis.labels]
    pairs = list(combinations(range(len(labels)), 2))
    header: List[str] = ["weights", "N"]
    for label in labels:
        header += [f"|N| {label}", "dropped", f"|T| {label}"]
    header += [f"J({labels[i]},{labels[j]})" for i, j in pairs]
    rows = []
    for g in groups:
        row = [g.name, _count(g.numel)]
        for i in range(len(labels)):
            row += [_count(g.elected[i]), _count(g.dropped[i]), _count(g.kept[i])]
        row += [f"{g.jaccard(p):.3f}" for p in pairs]
        rows.append(row)
    return format_table(rows, header)


def plot_heatmap(analysis, path: str) -> str:
    """Layers × weight types heatmap of the Jaccard overlap of the important sets,
    one panel per pair of models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mergekit_led.analysis import short_label

    labels = [short_label(l) for l in analysis.labels]
    pairs = list(combinations(range(len(labels)), 2))
    if not pairs:
        raise click.UsageError("A Jaccard heatmap needs at least two fine-tuned models.")
    first_layers, first_types, _ = analysis.grid(pairs[0])
    fig, axes = plt.subplots(
        1, len(pairs), figsize=(1.0 + 0.9 * len(first_types) * len(pairs), 1.5 + 0.3 * len(first_layers)),
        squeeze=False,
    )
    image = None
    for ax, pair in zip(axes[0], pairs):
        layers, types, values = analysis.grid(pair)
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
        ax.set_xticks(range(len(types)), [t.split(".")[-1] for t in types], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=8)
        ax.set_ylabel("layer")
        ax.set_title(f"Jaccard(N_{labels[pair[0]]}, N_{labels[pair[1]]})", fontsize=9)
        if len(layers) * len(types) <= 80:
            for y, row in enumerate(values):
                for x, value in enumerate(row):
                    if not math.isnan(value):
                        ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


@click.command("inspect")
@click.argument("config_file")
@click.option("--per-weight", is_flag=True, help="One row per weight tensor instead of per layer.")
@click.option("--plot", "plot_path", default=None, help="Write a layers × weight types Jaccard heatmap PNG.")
@click.option("--json", "json_path", default=None, help="Write every count as JSON to this file ('-' for stdout).")
@click.option(
    "--density",
    "density_override",
    type=float,
    default=None,
    help="Elect every model at this ratio instead of its configured density "
    "(e.g. 0.2 for the paper's overlap analysis).",
)
@click.option("--device", default=None, help="Device for the election (cpu, cuda).")
@run_cli_errors_cleanly
def inspect_command(
    config_file: str,
    per_weight: bool,
    plot_path: Optional[str],
    json_path: Optional[str],
    density_override: Optional[float],
    device: Optional[str],
):
    """Report what an led_merging CONFIG_FILE elects, writing no model.

    Per layer (or per weight with --per-weight) and per fine-tuned model: the
    elected important set |N_i|, how many of those the disjoint step drops, the
    final |T_i| merged from that model, and the pairwise Jaccard overlap of the
    important sets N_i.
    """
    from mergekit_led.analysis import analyze_config, short_label
    from mergekit_led.merge import load_config

    config, _ = load_config(config_file)
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
        click.echo(f"  {short_label(m.label)}: density {m.density:g}, weight {m.weight:g}  ({m.label})")
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
