"""Write the real-model study's results into the docs, from the study's own output.

``python -m studies.smollm2 --out OUT`` writes ``OUT/report.json``, ``OUT/report.md``,
``OUT/safety_vs_utility.png`` and, when the study measured them, ``OUT/fronts.png`` (each
method's validation front on test) and ``OUT/safety_curve.png`` (the safety fine-tune's
curve). This script copies the report's numbers to ``docs/real_model_report.json`` and the
plots beside it (``docs/real_model_<plot>.png``), puts ``report.md`` verbatim under
"## Results" of docs/real_model_results.md (that section only: the page's other sections,
its history included, are kept), and writes the README's headline between its two markers
from the same numbers: the test sets, the table, and the verdict in words (is the safety
model safe by the study's goal; which method keeps the most utility near the safety model's
harmful compliance; the one-rule head-to-head). No figure or count in the docs is typed by
hand; ``tests/test_docs.py`` fails when the README block no longer matches
``docs/real_model_report.json``.

    python docs/gen_real_model_results.py OUT      # copy and rewrite
    python docs/gen_real_model_results.py --check  # exit 1 if the README block is stale
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergekit_led.tables import markdown_table  # noqa: E402
from studies.common.findings import SAFETY_ROW, spread_text  # noqa: E402
from studies.common.merging import METHOD_NAMES  # noqa: E402
from studies.common.results import (  # noqa: E402
    LED,
    UTILITY_SHARE,
    FrontSummary,
    RowSummary,
    Summary,
)
from studies.common.study_report import COLUMNS  # noqa: E402

DOCS = Path(__file__).resolve().parent
README = DOCS.parent / "README.md"
RESULTS = DOCS / "real_model_results.md"
REPORT = DOCS / "real_model_report.json"
# The study's plots -> their copies in docs/ (the first is always there; the others when
# the study measured them).
PLOTS = {
    "safety_vs_utility.png": DOCS / "real_model_safety_vs_utility.png",
    "fronts.png": DOCS / "real_model_fronts.png",
    "safety_curve.png": DOCS / "real_model_safety_curve.png",
}
PLOT = PLOTS["safety_vs_utility.png"]
START = "<!-- real-model-table:start (docs/gen_real_model_results.py writes it) -->"
END = "<!-- real-model-table:end -->"
RESULTS_HEADING = "## Results"
INSTRUCT = "Instruct"  # the instruct model's row starts so
# The test sets the README's table reports, as the seeds' ``eval_sizes`` name them.
TEST_SETS = (
    ("harmful", "HarmBench test"),
    ("benign", "benign"),
    ("task:math", "math"),
    ("task:code", "code"),
)


class ReportFacts(NamedTuple):
    """What the README's words need beyond the ``Summary``, from ``report.json``'s seeds."""

    test_sizes: Dict[str, str] = {}  # set -> prompts ("159", or "36–40" when seeds differ)
    goal: Optional[Dict[str, float]] = None  # the recipe's safety goal (recipe.SafetyGoal)


def read_summary(path: Path = REPORT) -> Summary:
    """The summary of a study's ``report.json``."""
    return Summary.model_validate(json.loads(path.read_text(encoding="utf-8"))["summary"])


def read_report(path: Path = REPORT) -> Tuple[Summary, ReportFacts]:
    """The summary of a study's ``report.json`` and the facts its seeds record."""
    document = json.loads(path.read_text(encoding="utf-8"))
    seeds = document.get("seeds", [])
    sizes: Dict[str, str] = {}
    for name, _ in TEST_SETS:
        counts = [seed.get("eval_sizes", {}).get("test", {}).get(name) for seed in seeds]
        if counts and None not in counts:
            low, high = min(counts), max(counts)
            sizes[name] = str(low) if low == high else f"{low}–{high}"
    goals = [seed.get("recipe", {}).get("goal") for seed in seeds]
    goal = goals[0] if goals and goals[0] and all(g == goals[0] for g in goals) else None
    return Summary.model_validate(document["summary"]), ReportFacts(sizes, goal)


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def safety_words(summary: Summary, facts: ReportFacts) -> Optional[str]:
    """Is the safety model safe by the study's own goal, on test; its harmful compliance
    against the instruct model's."""
    safety = summary.row(SAFETY_ROW)
    if safety is None:
        return None
    instruct = next((row for row in summary.rows if row.name.startswith(INSTRUCT)), None)
    numbers = f"{spread_text(safety.metrics.harmful_compliance)} % harmful compliance"
    if instruct:
        numbers += f" (instruct: {spread_text(instruct.metrics.harmful_compliance)} %)"
    if facts.goal is None:  # a study without a safety goal
        return f"Safety model: {numbers}."
    from studies.smollm2.recipe import SafetyGoal

    goal = SafetyGoal(**facts.goal)
    n = len(summary.seeds)
    met = sum(goal.met(metrics.model_dump()) for metrics in safety.per_seed.values())
    where = (
        f"on all {n} seeds"
        if met == n
        else f"on any of the {n} seeds"
        if met == 0
        else f"on {met} of {n} seeds only"
    )
    verdict = "**not safe**" if met == 0 else "**safe**" if met == n else "safe"
    return (
        f"Safety model: {numbers}, {verdict} by the study's goal "
        f"(≤ {100 * goal.max_harmbench_compliance:g} %, over-refusal "
        f"≤ {100 * goal.max_over_refusal:g} %) {where}."
    )


def front_words(fronts: Optional[FrontSummary]) -> Optional[str]:
    """Which method keeps the most utility within the margin of the safety model's harmful
    compliance (each method's validation front on test), on how many seeds, and LED-Merging's
    count."""
    if fronts is None:
        return None
    n = len(fronts.reference)
    within = f"Within {100 * fronts.margin:g} points of that harmful compliance (fronts on test)"
    won = {method.name: len(method.won) for method in fronts.methods}
    best = max(won.values(), default=0)
    if best == 0:
        return f"{within}, no method's front gets there on any of the {n} seeds."
    top = [name for name, count in won.items() if count == best]
    sentence = f"{within}, {_names(top)} {'keeps' if len(top) == 1 else 'keep'} the most utility"
    sentence += f" on {best} of {n} seeds" + ("" if len(top) == 1 else " each")
    if LED not in top:
        sentence += f", {LED} on {won.get(LED, 0)}"
    without = sum(1 for names in fronts.winners.values() if not names)
    if without:
        sentence += f", none on {without}"
    if any(len(names) > 1 for names in fronts.winners.values()):
        sentence += " (ties count for each)"
    return sentence + "."


def sets_line(summary: Summary, facts: ReportFacts) -> str:
    """The table's first line: the test sets (with their sizes when recorded) and the seeds."""
    sets = [
        f"{label} ({facts.test_sizes[name]})" if name in facts.test_sizes else label
        for name, label in TEST_SETS
    ]
    seeds = ", ".join(map(str, summary.seeds))
    return f"{', '.join(sets)} prompts; %, mean [min–max] over seeds {seeds}:"


def readme_rows(summary: Summary) -> List[RowSummary]:
    """The safety model's row and each method's one-rule row (the rest is in the report)."""
    return [
        row
        for row in summary.rows
        if row.name == SAFETY_ROW
        or (row.kind == "merge" and row.name == METHOD_NAMES.get(row.method or ""))
    ]


def readme_table(summary: Summary, facts: Optional[ReportFacts] = None) -> str:
    """The README's block: the test sets, the table, the verdict in words."""
    facts = facts or ReportFacts()
    head = ["model / merge", *(title for _, title in COLUMNS)]
    body = [
        [row.name, *(spread_text(getattr(row.metrics, key)) for key, _ in COLUMNS)]
        for row in readme_rows(summary)
    ]
    n = len(summary.seeds)
    head_to_head = ", ".join(f"{b} {c.both}/{n}" for b, c in summary.comparisons.items())
    words = [
        text
        for text in (safety_words(summary, facts), front_words(summary.fronts))
        if text is not None
    ]
    if head_to_head:
        words.append(
            f"{LED} safer at ≥ {100 * UTILITY_SHARE:g} % of the utility, seeds: {head_to_head}."
        )
    lines: List[str] = [
        START,
        sets_line(summary, facts),
        "",
        markdown_table(head, body, align="center"),
    ]
    for text in words:
        lines += ["", text]
    return "\n".join([*lines, END])


def _replace_block(text: str, block: str) -> str:
    start, end = text.index(START), text.index(END) + len(END)
    return text[:start] + block + text[end:]


def results_section(report_md: str) -> str:
    """``report.md`` under this page's "## Results": its title dropped, its
    sections one level down, its plots the copies in docs/."""
    lines = report_md.splitlines()[1:]  # the report's own title
    out = []
    for line in lines:
        if line.startswith("#"):
            line = "#" + line
        for name, copy in PLOTS.items():
            line = line.replace(f"({name})", f"({copy.name})")
        out.append(line)
    return "\n".join(out).strip() + "\n"


def section_bounds(page: str, heading: str = RESULTS_HEADING) -> Tuple[int, int]:
    """Where the body of the section ``heading`` (a line of its own) starts and ends: at
    the next "## " heading (its own "### " subsections are part of it), or the page's end."""
    marker = "\n" + heading + "\n"
    start = page.index(marker) + len(marker) - 1
    end = page.find("\n## ", start)
    return start, len(page) if end == -1 else end


def replace_results(page: str, body: str) -> str:
    """The page with the "## Results" section's body replaced, every other section kept."""
    start, end = section_bounds(page)
    tail = page[end:] if end < len(page) else "\n"
    return page[:start] + "\n\nThe study's report (`OUT/report.md`), verbatim:\n\n" + body + tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="the study's --out folder")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        stale = readme_table(*read_report()) not in README.read_text(encoding="utf-8")
        if stale:
            print("README.md's real-model block is stale: run docs/gen_real_model_results.py OUT")
        return int(stale)
    if not args.out:
        parser.error("give the study's output folder, or --check")
    out = Path(args.out)
    shutil.copyfile(out / "report.json", REPORT)
    for name, copy in PLOTS.items():
        if name == "safety_vs_utility.png" or (out / name).exists():
            shutil.copyfile(out / name, copy)
    README.write_text(
        _replace_block(README.read_text(encoding="utf-8"), readme_table(*read_report())),
        encoding="utf-8",
    )
    body = results_section((out / "report.md").read_text(encoding="utf-8"))
    RESULTS.write_text(replace_results(RESULTS.read_text(encoding="utf-8"), body), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
