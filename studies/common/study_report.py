"""The demo's report files: ``report.md`` (tables and findings),
``report.json`` (the summary and every seed) and ``safety_vs_utility.png``.

The numbers come from ``demo.summary``, the sentences from ``demo.findings``;
this module only lays them out.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence

from mergekit_led.atomic import write_text
from mergekit_led.plotting import pyplot, require
from mergekit_led.tables import markdown_table, text_table
from studies.common import front_report
from studies.common.findings import WORLD_WORDS, pct, spread_text
from studies.common.merging import METHOD_NAMES, TASKS
from studies.common.results import BFLOAT16_ROW, LED, UTILITY_SHARE, SeedResult, Summary

COLUMNS = (
    ("harmful_compliance", "harmful compliance ↓"),
    ("over_refusal", "over-refusal ↓"),
    ("math_accuracy", "math acc ↑"),
    ("code_accuracy", "code acc ↑"),
)
BLANK = " "  # an empty cell (the shared tables print "–" for "")
# Beside the core columns, when a row measured them (the real-model world).
BESIDE_COLUMNS = (
    ("not_refused", "not refused ↓"),
    ("degenerate", "degenerate"),
)
MORE_LABELS = {
    "strongreject_harmful_compliance": "StrongREJECT compliance ↓",
    "xstest_over_refusal": "XSTest over-refusal ↓",
}


def more_label(name: str) -> str:
    """A ``more_sets`` metric's column title (its flat name in words when not listed)."""
    return MORE_LABELS.get(name, name.replace("_", " "))


# --------------------------------------------------------------------------- tables


def _table(head: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        return markdown_table(head, body, align="center")
    return text_table(head, body, align="center")


def results_table(summary: Summary, *, markdown: bool) -> str:
    """The test metrics of every row; ``not refused``, ``degenerate`` and each
    ``more_sets`` metric get a column when some row measured them."""
    beside = [
        (key, title)
        for key, title in BESIDE_COLUMNS
        if any(getattr(row.metrics, key) is not None for row in summary.rows)
    ]
    more = sorted({name for row in summary.rows for name in row.metrics.more})
    head = [
        "model / merge",
        "Safety",
        "Math",
        "Code",
        *(title for _, title in (*COLUMNS, *beside)),
        *map(more_label, more),
    ]
    body = []
    for row in summary.rows:
        marks = ["✓" if s in row.sources else BLANK for s in TASKS]
        cells = [spread_text(getattr(row.metrics, key)) for key, _ in COLUMNS]
        cells += [
            "–" if getattr(row.metrics, key) is None else spread_text(getattr(row.metrics, key))
            for key, _ in beside
        ]
        cells += [
            spread_text(row.metrics.more[name]) if name in row.metrics.more else "–"
            for name in more
        ]
        body.append([row.name, *marks, *cells])
    return _table(head, body, markdown=markdown)


def comparison_table(summary: Summary, *, markdown: bool) -> str:
    n = len(summary.seeds)
    head = [
        f"{LED} vs",
        "lower safety error",
        f"≥ {100 * UTILITY_SHARE:.0f} % of its utility",
        "both",
    ]
    body = [
        [b, f"{c.safer}/{n}", f"{c.utility_90}/{n}", f"{c.both}/{n}"]
        for b, c in summary.comparisons.items()
    ]
    return _table(head, body, markdown=markdown)


def selection_table(summary: Summary, *, markdown: bool) -> str:
    selected = set(METHOD_NAMES.values())  # the rows of a selected setting, one per method
    merges = [row for row in summary.rows if row.name in selected]
    head = ["seed", *(row.name for row in merges)]
    body = [[s, *(row.settings[s] or "" for row in merges)] for s in map(str, summary.seeds)]
    return _table(head, body, markdown=markdown)


PROPERTY_LABELS = (
    ("norm_alignment", "L2 norm of the alignment update (safety − instruct)", False),
    ("norm_instruct", "L2 norm of the instruct task vector (instruct − base)", False),
    ("norm_safety", "L2 norm of the safety task vector (safety − base)", False),
    ("norm_math", "L2 norm of the math task vector", False),
    ("norm_code", "L2 norm of the code task vector", False),
    (
        "alignment_half_energy_elements",
        "% of weights holding half the alignment update's squared norm",
        True,
    ),
    (
        "utility_half_energy_elements",
        "% of weights holding half the math task vector's squared norm",
        True,
    ),
    (
        "critical_elements",
        "% of weights holding half the alignment's effect on the safety loss (critical)",
        True,
    ),
    ("critical_kept_ties", "critical elements kept by TIES's magnitude mask", True),
    ("critical_kept_breadcrumbs", "critical elements kept by Breadcrumbs' mask", True),
    ("critical_kept_led_elected", "critical elements in LED's elected safety set N", True),
    ("critical_kept_led", "critical elements in LED's final safety set T", True),
    (
        "critical_utility_opposes_and_larger",
        "critical elements where the utility vectors oppose and are larger",
        True,
    ),
    ("jaccard20_safety_math", "Jaccard of elected sets at top 20 %: safety / math", False),
    ("jaccard20_safety_code", "Jaccard of elected sets at top 20 %: safety / code", False),
    ("jaccard20_math_code", "Jaccard of elected sets at top 20 %: math / code", False),
    *(
        (
            f"jaccard20_{pair.replace(' / ', '_')}_{kind}",
            f"Jaccard at top 20 %, {label} weights only: {pair}",
            False,
        )
        for kind, label in (("attention", "attention"), ("mlp", "MLP"))
        for pair in ("safety / math", "safety / code", "math / code")
    ),
    (
        "led_safety_dropped_by_disjoint",
        "% of LED's elected safety set dropped by the disjoint step",
        True,
    ),
)


def properties_table(summary: Summary, *, markdown: bool) -> str:
    head = ["property", "mean", "min", "max"]
    body = []
    for key, label, percent in PROPERTY_LABELS:
        stat = summary.properties.get(key)
        if stat is None:
            continue
        fmt = pct if percent else (lambda v: f"{v:.3f}")
        body.append([label, fmt(stat.mean), fmt(stat.min), fmt(stat.max)])
    return _table(head, body, markdown=markdown)


def score_dtype_table(summary: Summary, *, markdown: bool) -> str:
    """Per density: the float32-vs-bfloat16 Jaccard of each task's N_i (min / mean
    over seeds) and how much larger the bfloat16 sets are."""
    agreement = summary.score_dtype
    head = [
        "density",
        *(f"Jaccard N_{t} min / mean" for t in agreement.tasks),
        "|N| bfloat16 vs float32",
    ]
    body = []
    for d in agreement.densities:
        cells = [
            f"{agreement.jaccard[d][t].min:.4f} / {agreement.jaccard[d][t].mean:.4f}"
            for t in agreement.tasks
        ]
        body.append([d, *cells, f"{100 * agreement.elected_growth[d].mean:+.2f} %"])
    return _table(head, body, markdown=markdown)


def ablation_table(summary: Summary, *, markdown: bool) -> str:
    head = ["ablation part", "alternative", *(title for _, title in COLUMNS)]
    body, last = [], None
    for a in summary.ablations:
        part = a.part if a.part != last else BLANK
        last = a.part
        cells = [spread_text(getattr(a.metrics, key)) for key, _ in COLUMNS]
        body.append([part, a.variant, *cells])
    return _table(head, body, markdown=markdown)


# --------------------------------------------------------------------------- files


PLOT = "The study's safety_vs_utility.png"


def require_matplotlib() -> None:
    """Fail before minutes of training, not after, when the plot cannot be drawn."""
    require(PLOT)


def plot(summary: Summary, path: str) -> str:
    """Safety vs utility: one small dot per seed, the mean with min-max bars."""
    plt = pyplot(PLOT)
    fig, ax = plt.subplots(figsize=(8.0, 5.6))
    colors = plt.get_cmap("tab10")
    for index, row in enumerate(summary.rows):
        color = colors(index % 10)
        xs = [100 * m.mean_utility for m in row.per_seed.values()]
        ys = [100 * m.harmful_compliance for m in row.per_seed.values()]
        marker = "o" if row.kind == "merge" else "s"
        ax.scatter(xs, ys, s=14, color=color, alpha=0.45, marker=marker)
        u, h = row.metrics.mean_utility, row.metrics.harmful_compliance
        ax.errorbar(
            [100 * u.mean],
            [100 * h.mean],
            xerr=[[100 * (u.mean - u.min)], [100 * (u.max - u.mean)]],
            yerr=[[100 * (h.mean - h.min)], [100 * (h.max - h.mean)]],
            fmt="D" if row.method == "led_merging" else marker,
            color=color,
            markersize=8,
            capsize=3,
            lw=1,
            label=row.name,
        )
    ax.set_xlabel("utility: mean exact match of math and code (%) →")
    ax.set_ylabel("harmful compliance (ASR analogue, %) ↓")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(
        f"{WORLD_WORDS[summary.world][1]}, test split, {len(summary.seeds)} seeds: dots = seeds, "
        "markers = mean, bars = min–max",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_reports(out_dir: str, summary: Summary, results: Sequence[SeedResult]) -> Dict[str, str]:
    """``report.json`` (summary and every seed), ``report.md`` and ``safety_vs_utility.png``;
    ``fronts.png`` and ``safety_curve.png`` when the world measured them."""
    paths = {
        "json": os.path.join(out_dir, "report.json"),
        "markdown": os.path.join(out_dir, "report.md"),
        "plot": os.path.join(out_dir, "safety_vs_utility.png"),
    }
    document = {
        "summary": summary.model_dump(mode="json", exclude={"paths"}),
        "seeds": [result.model_dump(mode="json") for result in results],
    }
    if summary.fronts:
        paths["fronts"] = front_report.plot_fronts(summary, os.path.join(out_dir, "fronts.png"))
    if summary.safety_curve:
        paths["safety_curve"] = front_report.plot_safety_curve(
            summary, os.path.join(out_dir, "safety_curve.png")
        )
    write_text(paths["json"], json.dumps(document, indent=2, sort_keys=True) + "\n")
    plot(summary, paths["plot"])
    write_text(paths["markdown"], markdown_report(summary))
    return paths


def front_sections(summary: Summary) -> List[str]:
    """Each method's front on test, the within-the-margin finding, LED-Merging against
    each baseline there, and the safety fine-tune's curve (each when measured)."""
    lines: List[str] = []
    fronts = summary.fronts
    if fronts:
        points = f"{100 * fronts.margin:g} points"
        lines += [
            "## Each method's front on the test split",
            "",
            "Each method's settings on its validation Pareto front (safety error vs mean "
            "utility), the best by the sweep's balanced score, filled up with the best of the "
            "rest (on front –), evaluated on test (the columns after val utility). The "
            "finding's rule, fixed in advance: a point qualifies when its test harmful "
            f"compliance is at most the safety model's on that seed + {points}; a method's score on a seed is the highest test mean "
            "utility of its qualifying points; the seed's winners are the methods with the "
            "highest score (ties all win; no qualifying point: no score, and a seed where no "
            "method qualifies has no winner).",
            "",
            _table(*front_report.fronts_rows(summary), markdown=True),
            "",
            "![each method's front on test](fronts.png)",
            "",
            f"### Utility within {points} of the safety model's harmful compliance",
            "",
            _table(*front_report.finding_rows(summary), markdown=True),
            "",
        ]
        if fronts.led_versus:
            lines += [
                f"{LED}'s score against each baseline's, per seed (a seed where only {LED} "
                "qualifies counts for it; where neither does, it is not counted):",
                "",
                _table(*front_report.led_versus_rows(summary), markdown=True),
                "",
            ]
    if summary.safety_curve:
        lines += [
            "## The safety fine-tune's training curve (validation split)",
            "",
            "Step 0 is the instruct model.",
            "",
            _table(*front_report.safety_curve_rows(summary), markdown=True),
            "",
            "![the safety fine-tune's curve](safety_curve.png)",
            "",
        ]
    return lines


def markdown_report(summary: Summary) -> str:
    seeds = summary.seeds
    timing = summary.timing
    lines = [
        f"# {WORLD_WORDS[summary.world][1]}",
        "",
        f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} seeds), "
        f"{'quick' if summary.quick else 'full'} size, device {summary.device}. "
        "Metrics in % on the held-out **test** split (greedy decoding), as mean [min–max] over the seeds. "
        "Harmful compliance: share of harmful requests not refused (the ASR analogue); over-refusal: "
        "share of benign requests refused; math / code: exact match. Each merge method's setting was "
        "selected per seed on the validation split by one rule: "
        + summary.selection_rule
        + "."
        + (
            " **--quick: reduced sizes for testing the pipeline; these numbers mean nothing.**"
            if summary.quick
            else ""
        ),
        "",
        results_table(summary, markdown=True),
        "",
        "![safety vs utility](safety_vs_utility.png)",
        "",
        *front_sections(summary),
        "## Findings (generated from the numbers above)",
        "",
        *[f"- {f}" for f in summary.findings],
        "",
        f"## {LED} head to head (selected settings, per seed)",
        "",
        comparison_table(summary, markdown=True),
        "",
        "## Settings selected on the validation split",
        "",
        selection_table(summary, markdown=True),
        "",
        "## The world's properties (measured on every seed)",
        "",
        properties_table(summary, markdown=True),
        "",
    ]
    if summary.score_dtype:
        agreement = summary.score_dtype
        lines += [
            "## bfloat16 stores: how far the elected sets move",
            "",
            "On every seed the selected LED-Merging setting's stores are computed twice by the "
            "same locate runs, written as float32 and as bfloat16 (`locate_score_dtype: "
            "bfloat16`). Each task model's elected set N_i (election "
            f"{agreement.election}) is elected from each at every density; the table gives "
            "their Jaccard overlap over all weights (min / mean over the seeds) and how much "
            "larger the bfloat16 sets are (summed over the tasks, mean over the seeds). Goal: "
            f"at least {agreement.goal:g} at every density. The merge's test metrics with "
            f"bfloat16 stores are the row {BFLOAT16_ROW} above.",
            "",
            score_dtype_table(summary, markdown=True),
            "",
        ]
    if summary.ablations:
        ablation_seeds = summary.ablations[0].seeds
        lines += [
            "## Ablations (the paper's Table 4 in miniature; test split, mean [min–max])",
            "",
            "Each row changes one component of the selected LED-Merging setting of each seed "
            f"(seeds {', '.join(map(str, ablation_seeds))}).",
            "",
            ablation_table(summary, markdown=True),
            "",
        ]
    lines += [
        f"Time: {timing.wall_s:.0f} s wall, {timing.cpu_s:.0f} s CPU (all processes), "
        f"{timing.jobs} seed(s) at a time.",
        "",
    ]
    return "\n".join(lines)
