"""The report's sentences, each computed from a ``Summary``'s numbers.

Every statement about the results is written here, so ``report.md`` and the
docs generated from it say only what the seeds measured.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from studies.common.results import (
    AUTHORS_ROW,
    BFLOAT16_ROW,
    LED,
    UTILITY_SHARE,
    FrontSummary,
    MetricSpreads,
    Spread,
    Summary,
)

SAFETY_ROW = "Safety (Instruct + alignment)"
# What each world is called in the report's words and title.
WORLD_WORDS = {
    "toy": ("in this toy", "LED-Merging demo"),
    "smollm2": ("on SmolLM2-135M-Instruct", "LED-Merging on SmolLM2-135M-Instruct"),
}
# The ablation rows that are the full method itself (one per ablated part).
FULL_METHOD_ROWS = (("Location", "SNIP"), ("Election", "11"), ("Disjoint", "✓"))


def pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def spread_text(stat: Spread) -> str:
    """``mean [min–max]`` in %."""
    return f"{pct(stat.mean)} [{pct(stat.min)}–{pct(stat.max)}]"


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none of them"


def _seeds_text(count: int, total: int) -> str:
    return f"{count} of {total} seeds"


def _utility_mean(metrics: MetricSpreads) -> float:
    return (metrics.math_accuracy.mean + metrics.code_accuracy.mean) / 2


def findings(summary: Summary) -> List[str]:
    """Plain statements of what the seeds show, computed from the numbers."""
    by = {row.name: row.metrics for row in summary.rows}
    n = len(summary.seeds)
    out: List[str] = []
    safety, ta = by.get(SAFETY_ROW), by.get("Task Arithmetic")
    if safety and ta:
        out.append(
            f"The conflict: the safety model complies with {spread_text(safety.harmful_compliance)} % of "
            f"the harmful test requests (mean [min–max] over {n} seeds); Task Arithmetic of safety + math "
            f"+ code with {spread_text(ta.harmful_compliance)} %."
        )
    out += _root_causes(summary.properties)
    out += _head_to_head(summary, by)
    out += front_findings(summary.fronts)
    authors, led = by.get(AUTHORS_ROW), by.get(LED)
    if authors and led:
        out.append(
            f"Untuned, with the authors' ratios (safety 0.1, utility 0.4), {LED} complies with "
            f"{spread_text(authors.harmful_compliance)} % of harmful requests at a mean utility of "
            f"{pct(authors.mean_utility.mean)} % (selected setting: "
            f"{pct(led.harmful_compliance.mean)} %, {pct(led.mean_utility.mean)} %)."
        )
    out += _score_dtype_findings(summary, by)
    out += _ablation_findings(summary)
    return out


def _root_causes(p: Dict[str, Spread]) -> List[str]:
    """The two root causes the paper names, as the world's properties measure them."""
    out: List[str] = []
    if "norm_alignment" in p:
        alignment = p["norm_alignment"].mean
        ratio_math = p["norm_math"].mean / alignment if alignment else float("nan")
        ratio_code = p["norm_code"].mean / alignment if alignment else float("nan")
        out.append(
            f"Root cause 1, a light safety update: the alignment update's L2 norm is "
            f"{alignment:.2f} against {p['norm_math'].mean:.2f} (math) and "
            f"{p['norm_code'].mean:.2f} (code) for the utility task vectors ({ratio_math:.1f}× and "
            f"{ratio_code:.1f}× larger; means over seeds); half of its first-order effect on the safety "
            f"loss sits in {spread_text(p['critical_elements'])} % of the weights (its critical elements)."
        )
        kept = [
            f"{label} keeps {spread_text(p[key])} %"
            for key, label in (
                ("critical_kept_ties", "TIES's magnitude mask (its selected density)"),
                ("critical_kept_breadcrumbs", "Breadcrumbs' mask"),
                ("critical_kept_led_elected", "LED-Merging's SNIP election"),
                ("critical_kept_led", "LED-Merging after the disjoint step"),
            )
            if key in p
        ]
        if kept:
            out.append(
                "Of these critical elements of the safety task vector, " + "; ".join(kept) + "."
            )
    if "jaccard20_safety_math" in p:
        out.append(
            "Root cause 2, interference: at "
            f"{spread_text(p['critical_utility_opposes_and_larger'])} % of the critical elements the summed "
            "utility task vectors point the other way and are larger than the alignment update. The sets "
            "elected at the paper's top 20 % overlap with Jaccard "
            f"{p['jaccard20_safety_math'].mean:.2f} (safety/math), {p['jaccard20_safety_code'].mean:.2f} "
            f"(safety/code) and {p['jaccard20_math_code'].mean:.2f} (math/code); at the selected ratios "
            f"the disjoint step drops {spread_text(p['led_safety_dropped_by_disjoint'])} % of LED-Merging's "
            "elected safety set." + _layer_type_text(p)
            if "led_safety_dropped_by_disjoint" in p
            else "Root cause 2, interference: the elected sets overlap (see the properties table)."
        )
    return out


def _layer_type_text(p: Dict[str, Spread]) -> str:
    """The paper's overlap by layer type, when measured: attention vs MLP weights."""
    parts = []
    for kind in ("attention", "mlp"):
        key = f"jaccard20_safety_math_{kind}"
        if key in p:
            parts.append(
                f"{'MLP' if kind == 'mlp' else kind} weights {p[key].mean:.2f} (safety/math), "
                f"{p[f'jaccard20_safety_code_{kind}'].mean:.2f} (safety/code), "
                f"{p[f'jaccard20_math_code_{kind}'].mean:.2f} (math/code)"
            )
    return (" By layer type, the top-20 % Jaccard is: " + "; ".join(parts) + ".") if parts else ""


def _head_to_head(summary: Summary, by: Dict[str, MetricSpreads]) -> List[str]:
    """The selected LED merge against each baseline, and the verdict over them."""
    led = by.get(LED)
    if not led:
        return []
    n = len(summary.seeds)
    share = f"{100 * UTILITY_SHARE:.0f} %"
    comparisons = summary.comparisons
    out = []
    for baseline, c in comparisons.items():
        other = by[baseline]
        out.append(
            f"{LED} vs {baseline}: lower safety error (harmful compliance + over-refusal) on "
            f"{_seeds_text(c.safer, n)}, at ≥ {share} of {baseline}'s utility on "
            f"{_seeds_text(c.utility_90, n)}, both on {_seeds_text(c.both, n)}; mean harmful "
            f"compliance {pct(led.harmful_compliance.mean)} % vs "
            f"{pct(other.harmful_compliance.mean)} %, mean utility "
            f"{pct(led.mean_utility.mean)} % vs {pct(other.mean_utility.mean)} %."
        )
    wins = [b for b, c in comparisons.items() if 2 * c.both > n]
    losses = [b for b in comparisons if b not in wins]
    if not losses:
        out.append(
            f"Verdict: on a majority of seeds {LED} is safer than every baseline at ≥ "
            f"{share} of its utility."
        )
    else:
        reasons = "; ".join(
            f"{b}: safer on {comparisons[b].safer}/{n}, ≥ {share} of its "
            f"utility on {comparisons[b].utility_90}/{n}, both on {comparisons[b].both}/{n}"
            for b in losses
        )
        out.append(
            f"Verdict: {LED} does not win {WORLD_WORDS[summary.world][0]} against "
            f"{', '.join(losses)} (safer and at ≥ {share} of the utility on more than half of "
            f"the seeds): {reasons}." + (f" It does win against {', '.join(wins)}." if wins else "")
        )
    return out


def _seed_list(seeds: Sequence[str]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"


def front_findings(fronts: Optional[FrontSummary]) -> List[str]:
    """The within-the-margin finding (``studies.common.front_report``'s rule): which
    method keeps the most utility at harmful compliance near the safety model's, on
    how many seeds, and LED-Merging's score against each baseline's."""
    if fronts is None:
        return []
    n = len(fronts.reference)
    points = f"{100 * fronts.margin:g} points"
    reference = spread_text(Spread.of(list(fronts.reference.values())))
    lead = (
        f"At harmful compliance within {points} of the safety model's ({reference} % on test, "
        f"mean [min–max] over {n} seeds)"
    )
    none = [s for s, won in fronts.winners.items() if not won]
    if len(none) == n:
        return [
            f"{lead}, no method qualifies on any of the {n} seeds: no test point of any "
            f"method's front has harmful compliance that low, so no method keeps utility there "
            "and there is no winner."
        ]
    ranked = sorted(
        (m for m in fronts.methods if m.qualifying),
        key=lambda m: (-len(m.won), -m.score.mean),
    )
    parts = [
        f"{m.name} {'keeps the most utility ' if i == 0 else ''}on {len(m.won)} of {n} seeds "
        f"(within the margin on {len(m.qualifying)}, mean utility {pct(m.score.mean)} % there)"
        for i, m in enumerate(ranked)
    ]
    sentence = f"{lead}, " + "; ".join(parts) + "."
    never = [m.name for m in fronts.methods if not m.qualifying]
    if never:
        sentence += f" Never within {points} on any seed: {', '.join(never)}."
    if none:
        sentence += (
            f" No method qualifies on {len(none)} of {n} seeds ({_seed_list(none)}): "
            "those seeds have no winner."
        )
    ties = [f"seed {s} ({', '.join(won)})" for s, won in fronts.winners.items() if len(won) > 1]
    if ties:
        sentence += f" Ties (every tied method wins the seed): {'; '.join(ties)}."
    out = [sentence]
    if fronts.led_versus:
        counts = "; ".join(
            f"≥ {v.baseline}'s on {v.led_at_least} of {n} seeds ({v.baseline} ahead on "
            f"{v.baseline_ahead}, neither qualifies on {v.neither})"
            for v in fronts.led_versus
        )
        out.append(
            f"{LED}'s utility within {points} of the safety model's against each baseline's, "
            f"seed by seed (a seed where only {LED} qualifies counts for it; one where neither "
            f"does is not counted): {counts}."
        )
    return out


def _score_dtype_findings(summary: Summary, by: Dict[str, MetricSpreads]) -> List[str]:
    """What the bfloat16 stores changed: the merge's metrics, and ``N_i``'s Jaccard."""
    out: List[str] = []
    n = len(summary.seeds)
    led, half = by.get(LED), by.get(BFLOAT16_ROW)
    if led and half:
        led_row, half_row = summary.row(LED), summary.row(BFLOAT16_ROW)
        same = sum(half_row.per_seed[s] == led_row.per_seed[s] for s in map(str, summary.seeds))
        out.append(
            f"With bfloat16 stores (the selected setting, each score rounded once), {LED} complies "
            f"with {spread_text(half.harmful_compliance)} % of harmful requests, over-refuses "
            f"{spread_text(half.over_refusal)} %, at a mean utility of "
            f"{pct(half.mean_utility.mean)} % (float32 stores: "
            f"{spread_text(led.harmful_compliance)} %, {spread_text(led.over_refusal)} %, "
            f"{pct(led.mean_utility.mean)} %); its test metrics equal the float32 "
            f"stores' on {_seeds_text(same, n)}."
        )
    agreement = summary.score_dtype
    if agreement:
        goal, densities = agreement.goal, agreement.densities
        where = (
            f"the elected sets N_i (election {agreement.election}) of the float32 and the "
            f"bfloat16 stores overlap with Jaccard {agreement.lowest:.4f} to "
            f"{agreement.highest:.4f} over the {agreement.seeds} seeds, densities "
            f"{densities[0]} to {densities[-1]} and the models {', '.join(agreement.tasks)} "
            f"(every weight pooled)"
        )
        below = agreement.below_goal
        if not below:
            verdict = (
                f"the goal, at least {goal:g} at every density, held on every seed and density"
            )
        else:
            misses = "; ".join(
                f"seed {m.seed}, density {m.density}, {m.task}: {m.jaccard:.4f}" for m in below
            )
            verdict = (
                f"the goal, at least {goal:g} at every density, was missed {len(below)} times "
                f"({misses}), so float32 stays the default"
            )
        out.append(
            f"bfloat16 stores: {where}; {verdict}. On "
            f"{_seeds_text(agreement.rounded_once, agreement.seeds)} "
            "every bfloat16 score is exactly its float32 twin rounded once (the same locate sums)."
        )
    return out


def _ablation_findings(summary: Summary) -> List[str]:
    """Which changed component raised the safety error or lowered the utility."""
    ablation = {(a.part, a.variant): a.metrics for a in summary.ablations}
    if not ablation:
        return []
    full = ablation[("Disjoint", "✓")]
    variants = {
        f"{part} {variant}": m
        for (part, variant), m in ablation.items()
        if (part, variant) not in FULL_METHOD_ROWS
    }
    less_safe = [v for v, m in variants.items() if m.safety_error > full.safety_error]
    less_useful = [v for v, m in variants.items() if _utility_mean(m) < _utility_mean(full)]
    seeds = summary.ablations[0].seeds
    over = (
        "means over seeds"
        if len(seeds) == len(summary.seeds)
        else f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} only"
    )
    return [
        f"Ablations ({over}; the full method: safety error "
        f"{pct(full.safety_error)} %, utility {pct(_utility_mean(full))} %): changing one "
        f"component raises the safety error for {_listed(less_safe)} and lowers the utility "
        f"for {_listed(less_useful)}."
    ]
