"""The documentation states what the code does: option and parameter lists are checked
against their one source, so they fail here instead of drifting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOCATE_DOC = ROOT / "docs" / "locate.md"
# Issue 7: a README of about 8 KB for a newcomer, the rest in docs/; issue 16 added the
# sweep -> merge -> evaluate journey (about 1 KB).
README_LIMIT = 10 * 1024


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_locate_options", ROOT / "docs" / "gen_locate_options.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_locate_options_table_is_generated_from_locate_options():
    generator = _generator()
    text = LOCATE_DOC.read_text(encoding="utf-8")
    assert generator.render(text) == text, (
        "docs/locate.md's options table is stale: run python docs/gen_locate_options.py"
    )


def test_a_stale_options_table_is_detected():
    generator = _generator()
    text = LOCATE_DOC.read_text(encoding="utf-8")
    stale = text.replace("| `--seed` |", "| `--random-seed` |")
    assert stale != text
    assert generator.render(stale) == text


def test_every_locate_option_of_the_cli_is_documented():
    from mergekit_led.cli.locate import command

    text = LOCATE_DOC.read_text(encoding="utf-8")
    for parameter in command.params:
        for option in (*parameter.opts, *parameter.secondary_opts):
            assert f"`{option}`" in text, (
                f"{option} of mergekit-led locate is not in docs/locate.md"
            )


def _readme_row(name: str) -> str:
    rows = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith(f"| `{name}` |")
    ]
    assert len(rows) == 1, f"README.md needs one parameter table row for `{name}`"
    return rows[0]


def _documented_default(default) -> str:
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def test_readme_parameter_table_matches_the_merge_method():
    from mergekit.merge_methods.registry import registered_methods

    import mergekit_led

    mergekit_led.register()
    (method,) = [m for m in registered_methods() if m.spec.name == "led_merging"]
    for parameter in method.spec.parameters:
        if parameter.name.startswith("locate_"):  # one row for locate's options
            row, expected = _readme_row("locate_*"), "locate's"
        elif parameter.name == "importance_data":  # the alternative to the two stores
            row, expected = _readme_row(parameter.name), "–"
        else:
            row = _readme_row(parameter.name)
            has_default = isinstance(parameter.default, (bool, int, float, str))
            expected = _documented_default(parameter.default) if has_default else "required"
        assert expected in row, f"README.md row of `{parameter.name}` should say {expected}"


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/"


def _real_model_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_real_model_results", ROOT / "docs" / "gen_real_model_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_real_model_table_is_generated_from_the_committed_report():
    """README's headline numbers come from docs/real_model_report.json, via
    docs/gen_real_model_results.py, never typed by hand."""
    report = ROOT / "docs" / "real_model_report.json"
    if not report.exists():
        pytest.skip("the real-model study's report is not committed")
    module = _real_model_generator()
    assert module.readme_table(*module.read_report(report)) in README.read_text(encoding="utf-8"), (
        "README.md's real-model block is stale: run python docs/gen_real_model_results.py OUT"
    )


def _study_report(tmp_path: Path) -> Path:
    """A three-seed report.json of the real-model study, written here: the safety model
    meets the goal on seeds 0 and 2; within 10 points of it, TIES keeps the most utility on
    seeds 0 and 1, LED-Merging on seed 2; Task Arithmetic never gets there."""
    import json

    from studies.common.findings import SAFETY_ROW
    from studies.common.merging import MergeSetting
    from studies.common.results import AUTHORS_ROW, FrontPoint, Metrics, RunTiming, SeedResult
    from studies.common.summary import summarize

    def metrics(harm, utility, over_refusal=0.1):
        return Metrics(
            harmful_compliance=harm,
            over_refusal=over_refusal,
            math_accuracy=utility,
            code_accuracy=utility,
        )

    def front(method, harm, utility):
        point = metrics(harm, utility)
        return [
            FrontPoint(
                setting=MergeSetting(method=method, weight=1.0),
                text=f"{method} λ 1",
                val=point,
                test=point,
                on_front=True,
                selected=True,
            )
        ]

    def seed(number, safety, ties, led):
        merges = (
            ("Task Arithmetic", "task_arithmetic", metrics(0.9, 0.4)),
            ("TIES", "ties", metrics(0.9, 0.4)),
            ("LED-Merging", "led_merging", metrics(0.5, 0.1)),
            (AUTHORS_ROW, "led_merging", metrics(0.95, 0.2)),
        )
        rows = [
            {
                "name": "Instruct (the merge base)",
                "kind": "model",
                "sources": [],
                "metrics": metrics(0.95, 0.0, 0.0),
            },
            {
                "name": SAFETY_ROW,
                "kind": "model",
                "sources": ["safety"],
                "metrics": metrics(safety, 0.0),
            },
        ] + [
            {
                "name": name,
                "kind": "merge",
                "method": method,
                "setting": "s",
                "sources": ["safety", "math", "code"],
                "metrics": m,
            }
            for name, method, m in merges
        ]
        return SeedResult(
            seed=number,
            world="smollm2",
            device="cpu",
            quick=False,
            recipe={"goal": {"max_harmbench_compliance": 0.25, "max_over_refusal": 0.15}},
            eval_sizes={"test": {"harmful": 159, "benign": 40, "task:math": 40, "task:code": 40}},
            rows=rows,
            selection={"rule": "balanced", "trials": {}, "selected": {}},
            properties={},
            fronts={
                "task_arithmetic": front("task_arithmetic", 0.9, 0.9),
                "ties": front("ties", *ties),
                "led_merging": front("led_merging", *led),
            },
            timing={"total_s": 1.0},
        )

    results = [
        seed(0, 0.2, ties=(0.25, 0.5), led=(0.1, 0.45)),
        seed(1, 0.3, ties=(0.35, 0.6), led=(0.2, 0.3)),
        seed(2, 0.1, ties=(0.5, 0.9), led=(0.15, 0.2)),
    ]
    summary = summarize(
        results,
        timing=RunTiming(wall_s=1, cpu_s=1, jobs=1),
        quick=False,
        device="cpu",
        world="smollm2",
    )
    path = tmp_path / "report.json"
    document = {
        "summary": summary.model_dump(mode="json"),
        "seeds": [result.model_dump(mode="json") for result in results],
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_the_readme_block_says_in_words_what_the_report_measured(tmp_path: Path):
    module = _real_model_generator()
    summary, facts = module.read_report(_study_report(tmp_path))
    block = module.readme_table(summary, facts)
    lines = block.splitlines()
    assert lines[1] == (
        "HarmBench test (159), benign (40), math (40), code (40) prompts; %, mean [min–max] "
        "over seeds 0, 1, 2:"
    )
    table = [line.split(" | ")[0] for line in lines if line.startswith("| ")][1:]
    assert table == [
        "| Safety (Instruct + alignment)",
        "| Task Arithmetic",
        "| TIES",
        "| LED-Merging",
    ]
    paragraphs = block.split("\n\n")[2:]
    assert paragraphs[0] == (
        "Safety model: 20.0 [10.0–30.0] % harmful compliance (instruct: 95.0 [95.0–95.0] %), "
        "safe by the study's goal (≤ 25 %, over-refusal ≤ 15 %) on 2 of 3 seeds only."
    )
    assert paragraphs[1] == (
        "Within 10 points of that harmful compliance (fronts on test), TIES keeps the most "
        "utility on 2 of 3 seeds, LED-Merging on 1."
    )
    assert paragraphs[2].startswith("LED-Merging safer at ≥ 90 % of the utility, seeds: ")
    assert "Task Arithmetic 0/3" in paragraphs[2] and "TIES 0/3" in paragraphs[2]

    # The words follow the numbers: LED-Merging winning every seed, a safe safety model.
    for method in summary.fronts.methods:
        method.won = [0, 1, 2] if method.name == "LED-Merging" else []
    for metrics in summary.row("Safety (Instruct + alignment)").per_seed.values():
        metrics.harmful_compliance = 0.05
    words = module.readme_table(summary, facts).split("\n\n")[2:4]
    assert words[0].endswith(
        "**safe** by the study's goal (≤ 25 %, over-refusal ≤ 15 %) on all 3 seeds."
    )
    assert words[1].endswith(", LED-Merging keeps the most utility on 3 of 3 seeds.")


def test_only_the_results_section_is_replaced():
    """The generator rewrites the body of "## Results" and keeps every other section of
    docs/real_model_results.md (the protocol before it, the history after it)."""
    module = _real_model_generator()
    report_md = (
        "# LED-Merging on SmolLM2\n\nSeeds 0.\n\n![safety vs utility](safety_vs_utility.png)\n\n"
        "## Each method's front\n\n![fronts](fronts.png)\n\n### Utility\n\n"
        "![curve](safety_curve.png)\n"
    )
    body = module.results_section(report_md)
    assert "(real_model_safety_vs_utility.png)" in body
    assert "(real_model_fronts.png)" in body and "(real_model_safety_curve.png)" in body
    assert "### Each method's front" in body and "#### Utility" in body
    page = (ROOT / "docs" / "real_model_results.md").read_text(encoding="utf-8")
    start, end = module.section_bounds(page)
    new = module.replace_results(page, body)
    assert new.startswith(page[:start]) and new.endswith(page[end:])
    assert body in new
    for kept in (
        "## Protocol",
        "## History: the first study",
        "real_model_history_safety_vs_utility.png",
    ):
        assert new.count(kept) == page.count(kept) == 1
    assert module.replace_results(new, body) == new  # a second run changes nothing


def test_architecture_names_every_module_of_the_product():
    """docs/architecture.md's tables name every module a newcomer may look for (the
    subcommand modules of cli/ are described as one rule; the studies are not the
    product)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "mergekit_led"
    skipped = {"cli", "demo", "realmodel"}
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and path.relative_to(package).parts[0] not in skipped
        and f"`{path.name}`" not in text
    ]
    assert missing == [], f"docs/architecture.md does not name: {', '.join(missing)}"
