"""The seeds aggregated: every metric's spread, the head-to-head counts, the
world's properties, the ablations and the bfloat16 stores' agreement.

``summarize`` is pure: seed results in, a ``Summary`` out (its ``findings``
written by ``demo.findings`` from the same numbers).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from studies.common import score_dtype
from studies.common.findings import findings
from studies.common.front_report import front_summary, safety_curves
from studies.common.merging import METHOD_NAMES, TASKS
from studies.common.results import (
    LED,
    UTILITY_SHARE,
    AblationSummary,
    BelowGoal,
    Comparison,
    MetricSpreads,
    RowSummary,
    RunTiming,
    ScoreDtypeSummary,
    SeedResult,
    Spread,
    Summary,
)

BASELINE_METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "model_stock")
BASELINES = tuple(METHOD_NAMES[m] for m in BASELINE_METHODS)


def summarize(
    results: Sequence[SeedResult], *, timing: RunTiming, quick: bool, device: str, world: str
) -> Summary:
    """Aggregate per-seed results: mean and min-max of every metric of every row,
    the head-to-head counts, the world's properties, the ablations, the findings."""
    seeds = [r.seed for r in results]
    rows = []
    for first in results[0].rows:
        per_seed = [next(row for row in r.rows if row.name == first.name) for r in results]
        rows.append(
            RowSummary(
                name=first.name,
                kind=first.kind,
                method=first.method,
                sources=first.sources,
                metrics=MetricSpreads.of([row.metrics for row in per_seed]),
                per_seed={str(s): row.metrics for s, row in zip(seeds, per_seed)},
                settings={str(s): row.setting for s, row in zip(seeds, per_seed)},
            )
        )
    summary = Summary(
        world=world,
        seeds=seeds,
        quick=quick,
        device=device,
        selection_rule=results[0].selection.rule,
        rows=rows,
        comparisons=compare(results),
        properties={
            key: Spread.of([r.properties[key] for r in results]) for key in results[0].properties
        },
        ablations=ablations(results),
        score_dtype=score_dtype_summary(results),
        fronts=front_summary(results),
        safety_curve=safety_curves(results),
        timing=timing.model_copy(update={"per_seed": {str(r.seed): r.timing for r in results}}),
    )
    summary.findings = findings(summary)
    return summary


def compare(results: Sequence[SeedResult]) -> Dict[str, Comparison]:
    """Per baseline, on how many seeds the selected LED-Merging merge has a lower
    safety error (harmful compliance + over-refusal), keeps at least 90 % of the
    baseline's mean utility, and both."""
    out = {}
    present = {row.name for row in results[0].rows}
    for baseline in (b for b in BASELINES if b in present):
        safer = utility = both = 0
        for result in results:
            led, other = result.metrics(LED), result.metrics(baseline)
            is_safer = led.safety_error < other.safety_error
            keeps = led.mean_utility >= UTILITY_SHARE * other.mean_utility
            safer += is_safer
            utility += keeps
            both += is_safer and keeps
        out[baseline] = Comparison(safer=safer, utility_90=utility, both=both, seeds=len(results))
    return out


def ablations(results: Sequence[SeedResult]) -> List[AblationSummary]:
    """Over the seeds that ran the ablations (every seed of the toy; the first of
    the real-model world, to keep it within its budget)."""
    results = [r for r in results if r.ablations]
    if not results:
        return []
    return [
        AblationSummary(
            part=first.part,
            variant=first.variant,
            metrics=MetricSpreads.of([r.ablations[index].metrics for r in results]),
            seeds=[r.seed for r in results],
        )
        for index, first in enumerate(results[0].ablations)
    ]


def score_dtype_summary(results: Sequence[SeedResult]) -> Optional[ScoreDtypeSummary]:
    """The float32-vs-bfloat16 Jaccard of ``N_i`` over seeds: per density and task
    the spread over seeds, every value below the goal, and how many seeds' two
    stores hold one run's scores."""
    per_seed = [r.score_dtype for r in results]
    if not per_seed or not all(per_seed):
        return None
    first = per_seed[0]
    densities = [f"{d:g}" for d in first.densities]
    measured = first.jaccard[densities[0]]
    # the sources' order (a result read back from result.json has its keys sorted)
    tasks = [t for t in TASKS if t in measured] + sorted(set(measured) - set(TASKS))
    values = [
        (r.seed, d, t, r.score_dtype.jaccard[d][t])
        for r in results
        for d in densities
        for t in tasks
    ]
    growth = {
        d: Spread.of(
            [
                sum(m.elected[d][t].bfloat16 for t in tasks)
                / max(1, sum(m.elected[d][t].float32 for t in tasks))
                - 1
                for m in per_seed
            ]
        )
        for d in densities
    }
    return ScoreDtypeSummary(
        goal=score_dtype.GOAL,
        election=first.election,
        densities=densities,
        tasks=tasks,
        seeds=len(per_seed),
        jaccard={
            d: {t: Spread.of([m.jaccard[d][t] for m in per_seed]) for t in tasks} for d in densities
        },
        elected_growth=growth,
        lowest=min(v for *_, v in values),
        highest=max(v for *_, v in values),
        below_goal=[
            BelowGoal(seed=seed, density=d, task=t, jaccard=v)
            for seed, d, t, v in values
            if v < score_dtype.GOAL
        ],
        rounded_once=sum(m.rounded_once for m in per_seed),
    )
