"""Terminal tables and heatmaps of an election analysis (``mergekit-led inspect``)."""

from __future__ import annotations

import math
from itertools import combinations
from typing import List, Sequence

from mergekit_led.analysis.config_analysis import Analysis, short_label
from mergekit_led.core.statistics import WeightStats
from mergekit_led.errors import ConfigError
from mergekit_led.plotting import pyplot
from mergekit_led.tables import text_table


def _count(n: int) -> str:
    return f"{n:,}"


def analysis_table(analysis: Analysis, groups: Sequence[WeightStats]) -> str:
    """One row per group: N, then per model |N_i| / dropped / |T_i|, then pairwise Jaccard."""
    labels = [short_label(label) for label in analysis.labels]
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
    return text_table(header, rows)


def plot_heatmap(analysis: Analysis, path: str) -> str:
    """Layers × weight types heatmap of the Jaccard overlap of the important sets,
    one panel per pair of models."""
    plt = pyplot("The Jaccard heatmap (--plot)")

    labels = [short_label(label) for label in analysis.labels]
    pairs = list(combinations(range(len(labels)), 2))
    if not pairs:
        raise ConfigError("A Jaccard heatmap (--plot) needs at least two fine-tuned models.")
    first_layers, first_types, _ = analysis.grid(pairs[0])
    fig, axes = plt.subplots(
        1,
        len(pairs),
        figsize=(1.0 + 0.9 * len(first_types) * len(pairs), 1.5 + 0.3 * len(first_layers)),
        squeeze=False,
    )
    image = None
    for ax, pair in zip(axes[0], pairs):
        layers, types, values = analysis.grid(pair)
        image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower")
        ax.set_xticks(
            range(len(types)),
            [t.split(".")[-1] for t in types],
            rotation=60,
            ha="right",
            fontsize=8,
        )
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8)
        ax.set_ylabel("layer")
        ax.set_title(f"Jaccard(N_{labels[pair[0]]}, N_{labels[pair[1]]})", fontsize=9)
        if len(layers) * len(types) <= 80:
            for y, row in enumerate(values):
                for x, value in enumerate(row):
                    if not math.isnan(value):
                        ax.text(
                            x,
                            y,
                            f"{value:.2f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if value < 0.6 else "black",
                        )
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
