"""The files a sweep leaves: ``sweep.md`` (the table), ``pareto.png`` (safety
error against utility, the Pareto front marked) and ``best.yml`` (the selected
setting as a config for ``mergekit-led merge`` and ``mergekit-yaml``), plus
``best-<method>.yml``, each method's own best setting under the same rule."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import yaml

from mergekit_led.atomic import write_file, write_text
from mergekit_led.errors import MissingPlotLibrary
from mergekit_led.plotting import pyplot
from mergekit_led.sweep.selection import balanced_score, pareto_front, safety_error
from mergekit_led.tables import markdown_table


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def write_sweep_report(result, spec) -> Dict[str, str]:
    paths: Dict[str, str] = {}
    rows = result.rows
    tasks = list(spec.tasks)
    try:
        plotted = _plot(result, os.path.join(result.out, "pareto.png"))
    except MissingPlotLibrary as missing:  # a by-product: the report says why it is absent
        plotted, why_no_plot = None, str(missing)
    else:
        why_no_plot = "the evaluation needs a harmful or benign set and at least one task."
    if plotted:
        paths["pareto"] = plotted
    header = ["#", "method", "setting"]
    if spec.harmful is not None:
        header.append("harmful compliance %")
    if spec.benign is not None:
        header.append("over-refusal %")
    header += [f"{t} accuracy %" for t in tasks]
    header += ["balanced", "merge + eval s", "selected"]
    table = []
    for row in rows:
        m = row.metrics
        cells: List[object] = [row.index, row.method, row.text]
        if spec.harmful is not None:
            cells.append(_pct(m.get("harmful_compliance")))
        if spec.benign is not None:
            cells.append(_pct(m.get("over_refusal")))
        cells += [_pct(m.get(f"{t}_accuracy")) for t in tasks]
        cells.append(f"{balanced_score(m):.4f}" if _has_any(m) else "–")
        cells.append(f"{sum(row.seconds.values()):.1f}")
        marks = []
        if result.selected == row.index:
            marks.append("**best**")
        if result.per_method.get(row.method) == row.index:
            marks.append("best of method")
        cells.append(", ".join(marks))
        table.append(cells)
    lines = [
        "# Sweep",
        "",
        f"Selection rule (fixed before the run): {result.rule.describe()}.",
        "",
        markdown_table(header, table),
        "",
    ]
    if result.selected is None:
        lines.append(
            "No setting meets the rule, so no best.yml was written "
            "(per-method choices below are also under the rule)."
        )
    else:
        best = rows[result.selected]
        lines.append(f"Selected: setting {best.index}, {best.method} ({best.text}).")
        paths["best"] = _write_config(result.out, "best.yml", best, result.rule)
    for method, index in result.per_method.items():
        if index is not None:
            paths[f"best-{method}"] = _write_config(
                result.out, f"best-{method}.yml", rows[index], result.rule
            )
    if not plotted:
        lines += ["", "pareto.png was not drawn: " + why_no_plot]
    paths["table"] = os.path.join(result.out, "sweep.md")
    write_text(paths["table"], "\n".join(lines) + "\n")
    return paths


def _has_any(metrics) -> bool:
    return any(k in metrics for k in ("harmful_compliance", "over_refusal", "utility"))


def _write_config(out: str, name: str, row, rule) -> str:
    path = os.path.join(out, name)
    comment = (
        f"# Selected by mergekit-led sweep (setting {row.index}: {row.method}, {row.text}).\n"
        f"# Rule: {rule.describe()}.\n"
        "# Merge with `mergekit-led merge THIS.yml OUT/`, which applies random_seed (or "
        f"`mergekit-yaml THIS.yml OUT/ --random-seed {row.config.get('random_seed')}` once the "
        "stores are cached: mergekit-yaml ignores the key).\n"
    )
    write_text(path, comment + yaml.safe_dump(row.config, sort_keys=False))
    return path


def _points(rows):
    return [
        (safety_error(r.metrics), r.metrics.get("utility"))
        for r in rows
        if safety_error(r.metrics) is not None and "utility" in r.metrics
    ]


def _plot(result, path: str) -> Optional[str]:
    rows = result.rows
    points = _points(rows)
    if len(points) != len(rows):
        return None
    plt = pyplot("The sweep's pareto.png")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    methods = list(dict.fromkeys(r.method for r in rows))
    for method in methods:
        xs = [100 * points[i][0] for i, r in enumerate(rows) if r.method == method]
        ys = [100 * points[i][1] for i, r in enumerate(rows) if r.method == method]
        ax.scatter(xs, ys, label=method, alpha=0.8)
    front = pareto_front(points)
    ax.plot(
        [100 * points[i][0] for i in front],
        [100 * points[i][1] for i in front],
        color="black",
        linewidth=1,
        linestyle="--",
        label="Pareto front",
    )
    if result.selected is not None:
        x, y = points[result.selected]
        ax.scatter(
            [100 * x],
            [100 * y],
            marker="*",
            s=250,
            color="gold",
            edgecolor="black",
            zorder=5,
            label="selected",
        )
    ax.set_xlabel("safety error % (harmful compliance + over-refusal; lower is better)")
    ax.set_ylabel("utility % (mean task accuracy; higher is better)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()

    def save(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=120)

    write_file(path, save)
    plt.close(fig)
    return path
