"""The demo's results over seeds: tables, findings, report.md, report.json and a plot.

Every sentence about the results is written here from the numbers
(``findings``), so the report and the docs generated from it say only what
the seeds measured.
"""

from __future__ import annotations

import json
import os
from statistics import mean
from typing import Dict, List, Optional, Sequence

from mergekit_led.demo import score_dtype
from mergekit_led.demo.evaluate import mean_utility
from mergekit_led.demo.merging import METHOD_NAMES
from mergekit_led.errors import MissingPlotLibrary
from mergekit_led.sweep.selection import safety_error
from mergekit_led.tables import markdown_table, text_table

COLUMNS = (
    ("harmful_compliance", "harmful compliance ↓"),
    ("over_refusal", "over-refusal ↓"),
    ("math_accuracy", "math acc ↑"),
    ("code_accuracy", "code acc ↑"),
)
SOURCES = ("safety", "math", "code")
LED = METHOD_NAMES["led_merging"]
BASELINE_METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "model_stock")
BASELINES = tuple(METHOD_NAMES[m] for m in BASELINE_METHODS)
# What each world is called in the report's words and title.
WORLD_WORDS = {
    "toy": ("in this toy", "LED-Merging demo"),
    "smollm2": ("on SmolLM2-135M-Instruct", "LED-Merging on SmolLM2-135M-Instruct"),
}
UTILITY_SHARE = 0.9  # "at >= 90 % of its utility"
BFLOAT16_ROW = f"{LED} (bfloat16 stores)"  # the selected LED setting from bfloat16 stores


# --------------------------------------------------------------------------- numbers


def spread(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": mean(values), "min": min(values), "max": max(values)}


def summarize(
    results: Sequence[dict], *, timing: dict, quick: bool, device: str, world: str = "toy"
) -> dict:
    """Aggregate per-seed results: mean and min-max of every metric of every row,
    the head-to-head counts, the world's properties, the ablations, the findings."""
    seeds = [r["seed"] for r in results]
    names = [row["name"] for row in results[0]["rows"]]
    rows = []
    for name in names:
        per_seed = [next(row for row in r["rows"] if row["name"] == name) for r in results]
        metrics = {key: spread([row["metrics"][key] for row in per_seed]) for key, _ in COLUMNS}
        metrics["mean_utility"] = spread([mean_utility(row["metrics"]) for row in per_seed])
        first = per_seed[0]
        rows.append(
            {
                "name": name,
                "kind": first["kind"],
                "method": first.get("method"),
                "sources": first["sources"],
                "metrics": metrics,
                "per_seed": {str(s): row["metrics"] for s, row in zip(seeds, per_seed)},
                "settings": {str(s): row.get("setting") for s, row in zip(seeds, per_seed)},
            }
        )
    summary = {
        "world": world,
        "seeds": seeds,
        "quick": quick,
        "device": device,
        "selection_rule": results[0]["selection"]["rule"],
        "rows": rows,
        "comparisons": compare(results),
        "properties": {
            key: spread([r["properties"][key] for r in results]) for key in results[0]["properties"]
        },
        "ablations": _ablations(results),
        "score_dtype": _score_dtype(results),
        "timing": {**timing, "per_seed": {str(r["seed"]): r["timing"] for r in results}},
    }
    summary["findings"] = findings(summary)
    return summary


def _metrics(result: dict, name: str) -> dict:
    return next(row["metrics"] for row in result["rows"] if row["name"] == name)


def compare(results: Sequence[dict]) -> Dict[str, dict]:
    """Per baseline, on how many seeds the selected LED-Merging merge has a lower
    safety error (harmful compliance + over-refusal), keeps at least 90 % of the
    baseline's mean utility, and both."""
    out = {}
    present = {row["name"] for row in results[0]["rows"]}
    for baseline in (b for b in BASELINES if b in present):
        safer = util = both = 0
        for result in results:
            led, other = _metrics(result, LED), _metrics(result, baseline)
            is_safer = safety_error(led) < safety_error(other)
            keeps = mean_utility(led) >= UTILITY_SHARE * mean_utility(other)
            safer += is_safer
            util += keeps
            both += is_safer and keeps
        out[baseline] = {"safer": safer, "utility_90": util, "both": both, "seeds": len(results)}
    return out


def _ablations(results: Sequence[dict]) -> List[dict]:
    """Over the seeds that ran the ablations (every seed of the toy; the first of
    the real-model world, to keep it within its budget)."""
    results = [r for r in results if r["ablations"]]
    if not results:
        return []
    out = []
    for index, first in enumerate(results[0]["ablations"]):
        values = [r["ablations"][index]["metrics"] for r in results]
        out.append(
            {
                "part": first["part"],
                "variant": first["variant"],
                "metrics": {key: spread([v[key] for v in values]) for key, _ in COLUMNS},
                "seeds": [r["seed"] for r in results],
            }
        )
    return out


def _score_dtype(results: Sequence[dict]) -> Optional[dict]:
    """The float32-vs-bfloat16 Jaccard of ``N_i`` over seeds: per density and task
    the spread over seeds, every value below the goal, and how many seeds' two
    stores hold one run's scores."""
    per_seed = [r.get("score_dtype") for r in results]
    if not per_seed or not all(per_seed):
        return None
    first = per_seed[0]
    densities = [f"{d:g}" for d in first["densities"]]
    measured = first["jaccard"][densities[0]]
    # the sources' order (a result read back from result.json has its keys sorted)
    tasks = [t for t in SOURCES if t in measured] + sorted(set(measured) - set(SOURCES))
    values = [
        (r["seed"], d, t, r["score_dtype"]["jaccard"][d][t])
        for r in results
        for d in densities
        for t in tasks
    ]
    growth = {
        d: spread(
            [
                sum(m["elected"][d][t]["bfloat16"] for t in tasks)
                / max(1, sum(m["elected"][d][t]["float32"] for t in tasks))
                - 1
                for m in per_seed
            ]
        )
        for d in densities
    }
    return {
        "goal": score_dtype.GOAL,
        "election": first["election"],
        "densities": densities,
        "tasks": tasks,
        "seeds": len(per_seed),
        "jaccard": {
            d: {t: spread([r["score_dtype"]["jaccard"][d][t] for r in results]) for t in tasks}
            for d in densities
        },
        "elected_growth": growth,  # |N| summed over tasks, bfloat16 / float32 - 1
        "lowest": min(v for *_, v in values),
        "highest": max(v for *_, v in values),
        "below_goal": [
            {"seed": seed, "density": d, "task": t, "jaccard": v}
            for seed, d, t, v in values
            if v < score_dtype.GOAL
        ],
        "rounded_once": sum(bool(m["rounded_once"]) for m in per_seed),
    }


# --------------------------------------------------------------------------- words

FULL_METHOD_ROWS = (("Location", "SNIP"), ("Election", "11"), ("Disjoint", "✓"))
BLANK = " "  # an empty cell (the shared tables print "–" for "")


def _safety_mean(metrics: dict) -> float:
    return metrics["harmful_compliance"]["mean"] + metrics["over_refusal"]["mean"]


def _utility_mean(metrics: dict) -> float:
    return (metrics["math_accuracy"]["mean"] + metrics["code_accuracy"]["mean"]) / 2


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none of them"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _range(stat: Dict[str, float]) -> str:
    return f"{_pct(stat['mean'])} [{_pct(stat['min'])}–{_pct(stat['max'])}]"


def _seeds_text(count: int, total: int) -> str:
    return f"{count} of {total} seeds"


def findings(summary: dict) -> List[str]:
    """Plain statements of what the seeds show, computed from the numbers."""
    by = {row["name"]: row["metrics"] for row in summary["rows"]}
    n = len(summary["seeds"])
    p = summary["properties"]
    world_words = WORLD_WORDS[summary.get("world", "toy")][0]
    out: List[str] = []
    safety = by.get("Safety (Instruct + alignment)")
    ta = by.get("Task Arithmetic")
    if safety and ta:
        out.append(
            f"The conflict: the safety model complies with {_range(safety['harmful_compliance'])} % of "
            f"the harmful test requests (mean [min–max] over {n} seeds); Task Arithmetic of safety + math "
            f"+ code with {_range(ta['harmful_compliance'])} %."
        )
    if "norm_alignment" in p:
        ratio_math = (
            p["norm_math"]["mean"] / p["norm_alignment"]["mean"]
            if p["norm_alignment"]["mean"]
            else float("nan")
        )
        ratio_code = (
            p["norm_code"]["mean"] / p["norm_alignment"]["mean"]
            if p["norm_alignment"]["mean"]
            else float("nan")
        )
        out.append(
            f"Root cause 1, a light safety update: the alignment update's L2 norm is "
            f"{p['norm_alignment']['mean']:.2f} against {p['norm_math']['mean']:.2f} (math) and "
            f"{p['norm_code']['mean']:.2f} (code) for the utility task vectors ({ratio_math:.1f}× and "
            f"{ratio_code:.1f}× larger; means over seeds); half of its first-order effect on the safety "
            f"loss sits in {_range(p['critical_elements'])} % of the weights (its critical elements)."
        )
        kept = []
        for key, label in (
            ("critical_kept_ties", "TIES's magnitude mask (its selected density)"),
            ("critical_kept_breadcrumbs", "Breadcrumbs' mask"),
            ("critical_kept_led_elected", "LED-Merging's SNIP election"),
            ("critical_kept_led", "LED-Merging after the disjoint step"),
        ):
            if key in p:
                kept.append(f"{label} keeps {_range(p[key])} %")
        if kept:
            out.append(
                "Of these critical elements of the safety task vector, " + "; ".join(kept) + "."
            )
    if "jaccard20_safety_math" in p:
        out.append(
            "Root cause 2, interference: at "
            f"{_range(p['critical_utility_opposes_and_larger'])} % of the critical elements the summed "
            "utility task vectors point the other way and are larger than the alignment update. The sets "
            "elected at the paper's top 20 % overlap with Jaccard "
            f"{p['jaccard20_safety_math']['mean']:.2f} (safety/math), {p['jaccard20_safety_code']['mean']:.2f} "
            f"(safety/code) and {p['jaccard20_math_code']['mean']:.2f} (math/code); at the selected ratios "
            f"the disjoint step drops {_range(p['led_safety_dropped_by_disjoint'])} % of LED-Merging's "
            "elected safety set." + _layer_type_text(p)
            if "led_safety_dropped_by_disjoint" in p
            else "Root cause 2, interference: the elected sets overlap (see the properties table)."
        )
    led = by.get(LED)
    comparisons = summary["comparisons"]
    if led:
        for baseline, c in comparisons.items():
            other = by[baseline]
            out.append(
                f"{LED} vs {baseline}: lower safety error (harmful compliance + over-refusal) on "
                f"{_seeds_text(c['safer'], n)}, at ≥ {100 * UTILITY_SHARE:.0f} % of {baseline}'s utility on "
                f"{_seeds_text(c['utility_90'], n)}, both on {_seeds_text(c['both'], n)}; mean harmful "
                f"compliance {_pct(led['harmful_compliance']['mean'])} % vs "
                f"{_pct(other['harmful_compliance']['mean'])} %, mean utility "
                f"{_pct(led['mean_utility']['mean'])} % vs {_pct(other['mean_utility']['mean'])} %."
            )
        wins = [b for b, c in comparisons.items() if 2 * c["both"] > n]
        losses = [b for b in comparisons if b not in wins]
        if not losses:
            out.append(
                f"Verdict: on a majority of seeds {LED} is safer than every baseline at ≥ "
                f"{100 * UTILITY_SHARE:.0f} % of its utility."
            )
        else:
            reasons = "; ".join(
                f"{b}: safer on {comparisons[b]['safer']}/{n}, ≥ {100 * UTILITY_SHARE:.0f} % of its "
                f"utility on {comparisons[b]['utility_90']}/{n}, both on {comparisons[b]['both']}/{n}"
                for b in losses
            )
            out.append(
                f"Verdict: {LED} does not win {world_words} against {', '.join(losses)} (safer and "
                f"at ≥ {100 * UTILITY_SHARE:.0f} % of the utility on more than half of the seeds): "
                f"{reasons}." + (f" It does win against {', '.join(wins)}." if wins else "")
            )
    authors = next(
        (row for row in summary["rows"] if row["name"].startswith(LED + " (authors")), None
    )
    if authors and led:
        out.append(
            f"Untuned, with the authors' ratios (safety 0.1, utility 0.4), {LED} complies with "
            f"{_range(authors['metrics']['harmful_compliance'])} % of harmful requests at a mean utility of "
            f"{_pct(authors['metrics']['mean_utility']['mean'])} % (selected setting: "
            f"{_pct(led['harmful_compliance']['mean'])} %, {_pct(led['mean_utility']['mean'])} %)."
        )
    out += _score_dtype_findings(summary, by)
    ablation = {(a["part"], a["variant"]): a["metrics"] for a in summary.get("ablations", [])}
    if ablation:
        full = ablation[("Disjoint", "✓")]
        variants = {
            f"{part} {variant}": m
            for (part, variant), m in ablation.items()
            if (part, variant) not in FULL_METHOD_ROWS
        }
        less_safe = [v for v, m in variants.items() if _safety_mean(m) > _safety_mean(full)]
        less_useful = [v for v, m in variants.items() if _utility_mean(m) < _utility_mean(full)]
        ablation_seeds = summary["ablations"][0].get("seeds", summary["seeds"])
        over = (
            "means over seeds"
            if len(ablation_seeds) == n
            else f"seed{'s' if len(ablation_seeds) > 1 else ''} {', '.join(map(str, ablation_seeds))} only"
        )
        out.append(
            f"Ablations ({over}; the full method: safety error "
            f"{_pct(_safety_mean(full))} %, utility {_pct(_utility_mean(full))} %): changing one "
            f"component raises the safety error for {_listed(less_safe)} and lowers the utility "
            f"for {_listed(less_useful)}."
        )
    return out


def _layer_type_text(p: dict) -> str:
    """The paper's overlap by layer type, when measured: attention vs MLP weights."""
    parts = []
    for kind in ("attention", "mlp"):
        key = f"jaccard20_safety_math_{kind}"
        if key in p:
            parts.append(
                f"{'MLP' if kind == 'mlp' else kind} weights {p[key]['mean']:.2f} (safety/math), "
                f"{p[f'jaccard20_safety_code_{kind}']['mean']:.2f} (safety/code), "
                f"{p[f'jaccard20_math_code_{kind}']['mean']:.2f} (math/code)"
            )
    return (" By layer type, the top-20 % Jaccard is: " + "; ".join(parts) + ".") if parts else ""


def _score_dtype_findings(summary: dict, by: Dict[str, dict]) -> List[str]:
    """What the bfloat16 stores changed: the merge's metrics, and ``N_i``'s Jaccard."""
    out: List[str] = []
    n = len(summary["seeds"])
    led, half = by.get(LED), by.get(BFLOAT16_ROW)
    if led and half:
        rows = {row["name"]: row for row in summary["rows"]}
        same = sum(
            rows[BFLOAT16_ROW]["per_seed"][s] == rows[LED]["per_seed"][s]
            for s in map(str, summary["seeds"])
        )
        out.append(
            f"With bfloat16 stores (the selected setting, each score rounded once), {LED} complies "
            f"with {_range(half['harmful_compliance'])} % of harmful requests, over-refuses "
            f"{_range(half['over_refusal'])} %, at a mean utility of "
            f"{_pct(half['mean_utility']['mean'])} % (float32 stores: "
            f"{_range(led['harmful_compliance'])} %, {_range(led['over_refusal'])} %, "
            f"{_pct(led['mean_utility']['mean'])} %); its test metrics equal the float32 "
            f"stores' on {_seeds_text(same, n)}."
        )
    agreement = summary.get("score_dtype")
    if agreement:
        goal = agreement["goal"]
        densities = agreement["densities"]
        where = (
            f"the elected sets N_i (election {agreement['election']}) of the float32 and the "
            f"bfloat16 stores overlap with Jaccard {agreement['lowest']:.4f} to "
            f"{agreement['highest']:.4f} over the {agreement['seeds']} seeds, densities "
            f"{densities[0]} to {densities[-1]} and the models {', '.join(agreement['tasks'])} "
            f"(every weight pooled)"
        )
        below = agreement["below_goal"]
        if not below:
            verdict = (
                f"the goal, at least {goal:g} at every density, held on every seed and density"
            )
        else:
            misses = "; ".join(
                f"seed {m['seed']}, density {m['density']}, {m['task']}: {m['jaccard']:.4f}"
                for m in below
            )
            verdict = (
                f"the goal, at least {goal:g} at every density, was missed {len(below)} times "
                f"({misses}), so float32 stays the default"
            )
        rounded = agreement["rounded_once"]
        out.append(
            f"bfloat16 stores: {where}; {verdict}. On {_seeds_text(rounded, agreement['seeds'])} "
            "every bfloat16 score is exactly its float32 twin rounded once (the same locate sums)."
        )
    return out


# --------------------------------------------------------------------------- tables


def _table(head: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        return markdown_table(head, body, align="center")
    return text_table(head, body, align="center")


def results_table(summary: dict, *, markdown: bool) -> str:
    head = ["model / merge", "Safety", "Math", "Code", *(title for _, title in COLUMNS)]
    body = []
    for row in summary["rows"]:
        marks = ["✓" if s in row["sources"] else BLANK for s in SOURCES]
        body.append([row["name"], *marks, *(_range(row["metrics"][k]) for k, _ in COLUMNS)])
    return _table(head, body, markdown=markdown)


def comparison_table(summary: dict, *, markdown: bool) -> str:
    n = len(summary["seeds"])
    head = [
        f"{LED} vs",
        "lower safety error",
        f"≥ {100 * UTILITY_SHARE:.0f} % of its utility",
        "both",
    ]
    body = [
        [b, f"{c['safer']}/{n}", f"{c['utility_90']}/{n}", f"{c['both']}/{n}"]
        for b, c in summary["comparisons"].items()
    ]
    return _table(head, body, markdown=markdown)


def selection_table(summary: dict, *, markdown: bool) -> str:
    selected = set(METHOD_NAMES.values())  # the rows of a selected setting, one per method
    merges = [row for row in summary["rows"] if row["name"] in selected]
    head = ["seed", *(row["name"] for row in merges)]
    body = [[s, *(row["settings"][s] or "" for row in merges)] for s in map(str, summary["seeds"])]
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


def properties_table(summary: dict, *, markdown: bool) -> str:
    head = ["property", "mean", "min", "max"]
    body = []
    for key, label, percent in PROPERTY_LABELS:
        stat = summary["properties"].get(key)
        if stat is None:
            continue
        fmt = _pct if percent else (lambda v: f"{v:.3f}")
        body.append([label, fmt(stat["mean"]), fmt(stat["min"]), fmt(stat["max"])])
    return _table(head, body, markdown=markdown)


def score_dtype_table(summary: dict, *, markdown: bool) -> str:
    """Per density: the float32-vs-bfloat16 Jaccard of each task's N_i (min / mean
    over seeds) and how much larger the bfloat16 sets are."""
    agreement = summary["score_dtype"]
    head = [
        "density",
        *(f"Jaccard N_{t} min / mean" for t in agreement["tasks"]),
        "|N| bfloat16 vs float32",
    ]
    body = []
    for d in agreement["densities"]:
        cells = [
            f"{agreement['jaccard'][d][t]['min']:.4f} / {agreement['jaccard'][d][t]['mean']:.4f}"
            for t in agreement["tasks"]
        ]
        body.append([d, *cells, f"{100 * agreement['elected_growth'][d]['mean']:+.2f} %"])
    return _table(head, body, markdown=markdown)


def ablation_table(summary: dict, *, markdown: bool) -> str:
    head = ["ablation part", "alternative", *(title for _, title in COLUMNS)]
    body, last = [], None
    for a in summary["ablations"]:
        part = a["part"] if a["part"] != last else BLANK
        last = a["part"]
        body.append([part, a["variant"], *(_range(a["metrics"][k]) for k, _ in COLUMNS)])
    return _table(head, body, markdown=markdown)


# --------------------------------------------------------------------------- files


def require_matplotlib() -> None:
    """Fail before minutes of training, not after, when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingPlotLibrary(
            "The demo draws its plot with matplotlib, which is not installed: "
            "pip install 'mergekit-led[demo]'."
        ) from None


def plot(summary: dict, path: str) -> str:
    """Safety vs utility: one small dot per seed, the mean with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 5.6))
    colors = plt.get_cmap("tab10")
    for index, row in enumerate(summary["rows"]):
        color = colors(index % 10)
        xs = [100 * mean_utility(m) for m in row["per_seed"].values()]
        ys = [100 * m["harmful_compliance"] for m in row["per_seed"].values()]
        ax.scatter(
            xs, ys, s=14, color=color, alpha=0.45, marker="o" if row["kind"] == "merge" else "s"
        )
        u, h = row["metrics"]["mean_utility"], row["metrics"]["harmful_compliance"]
        ax.errorbar(
            [100 * u["mean"]],
            [100 * h["mean"]],
            xerr=[[100 * (u["mean"] - u["min"])], [100 * (u["max"] - u["mean"])]],
            yerr=[[100 * (h["mean"] - h["min"])], [100 * (h["max"] - h["mean"])]],
            fmt="D" if row["method"] == "led_merging" else ("o" if row["kind"] == "merge" else "s"),
            color=color,
            markersize=8,
            capsize=3,
            lw=1,
            label=row["name"],
        )
    ax.set_xlabel("utility: mean exact match of math and code (%) →")
    ax.set_ylabel("harmful compliance (ASR analogue, %) ↓")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(
        f"{WORLD_WORDS[summary.get('world', 'toy')][1]}, test split, {len(summary['seeds'])} seeds: dots = seeds, "
        "markers = mean, bars = min–max",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_reports(out_dir: str, summary: dict, results: Sequence[dict]) -> Dict[str, str]:
    """``report.json`` (summary and every seed), ``report.md`` and ``safety_vs_utility.png``."""
    paths = {
        "json": os.path.join(out_dir, "report.json"),
        "markdown": os.path.join(out_dir, "report.md"),
        "plot": os.path.join(out_dir, "safety_vs_utility.png"),
    }
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "seeds": list(results)}, f, indent=2, sort_keys=True)
        f.write("\n")
    plot(summary, paths["plot"])
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_report(summary))
    return paths


def markdown_report(summary: dict) -> str:
    seeds = summary["seeds"]
    timing = summary["timing"]
    lines = [
        f"# {WORLD_WORDS[summary.get('world', 'toy')][1]}",
        "",
        f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} seeds), "
        f"{'quick' if summary['quick'] else 'full'} size, device {summary['device']}. "
        "Metrics in % on the held-out **test** split (greedy decoding), as mean [min–max] over the seeds. "
        "Harmful compliance: share of harmful requests not refused (the ASR analogue); over-refusal: "
        "share of benign requests refused; math / code: exact match. Each merge method's setting was "
        "selected per seed on the validation split by one rule: "
        + summary["selection_rule"]
        + "."
        + (
            " **--quick: reduced sizes for testing the pipeline; these numbers mean nothing.**"
            if summary["quick"]
            else ""
        ),
        "",
        results_table(summary, markdown=True),
        "",
        "![safety vs utility](safety_vs_utility.png)",
        "",
        "## Findings (generated from the numbers above)",
        "",
        *[f"- {f}" for f in summary["findings"]],
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
    if summary.get("score_dtype"):
        agreement = summary["score_dtype"]
        lines += [
            "## bfloat16 stores: how far the elected sets move",
            "",
            "On every seed the selected LED-Merging setting's stores are computed twice by the "
            "same locate runs, written as float32 and as bfloat16 (`locate_score_dtype: "
            "bfloat16`). Each task model's elected set N_i (election "
            f"{agreement['election']}) is elected from each at every density; the table gives "
            "their Jaccard overlap over all weights (min / mean over the seeds) and how much "
            "larger the bfloat16 sets are (summed over the tasks, mean over the seeds). Goal: "
            f"at least {agreement['goal']:g} at every density. The merge's test metrics with "
            f"bfloat16 stores are the row {BFLOAT16_ROW} above.",
            "",
            score_dtype_table(summary, markdown=True),
            "",
        ]
    if summary["ablations"]:
        ablation_seeds = summary["ablations"][0].get("seeds", summary["seeds"])
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
        f"Time: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU (all processes), "
        f"{timing['jobs']} seed(s) at a time.",
        "",
    ]
    return "\n".join(lines)
