"""Each method's front on test (``studies.common.front_report``): the within-10-points
finding's counts and sentence on hand-made seeds, the report's sections, tables and
plots, and a world without fronts (the toy) left as it was."""

from pathlib import Path

from studies.common import front_report
from studies.common.findings import SAFETY_ROW, front_findings
from studies.common.merging import MergeSetting
from studies.common.results import CurvePoint, FrontPoint, Metrics, RunTiming, SeedResult
from studies.common.study_report import markdown_report, results_table, write_reports
from studies.common.summary import summarize

TIMING = RunTiming(wall_s=1, cpu_s=1, jobs=1)


def _m(harm, utility, **beside):
    """Metrics with mean utility ``utility`` (math = code)."""
    return Metrics(
        harmful_compliance=harm,
        over_refusal=0.1,
        math_accuracy=utility,
        code_accuracy=utility,
        **beside,
    )


def _front(method, *points):
    """Front points from (test harmful compliance, test utility) pairs."""
    return [
        FrontPoint(
            setting=MergeSetting(method=method, weight=0.5 + index),
            text=f"{method} #{index}",
            val=_m(harm, utility),
            test=_m(harm, utility, not_refused=harm + 0.05, degenerate=0.05),
            on_front=index == 0,
            selected=index == 0,
        )
        for index, (harm, utility) in enumerate(points)
    ]


def _seed(seed, reference, fronts, curve=()):
    rows = [
        {
            "name": SAFETY_ROW,
            "kind": "model",
            "sources": ["safety"],
            "metrics": _m(reference, 0.1),
        },
        {"name": "Math", "kind": "model", "sources": ["math"], "metrics": _m(0.8, 0.6)},
        {"name": "Code", "kind": "model", "sources": ["code"], "metrics": _m(0.7, 0.5)},
    ]
    rows += [
        {
            "name": name,
            "kind": "merge",
            "method": method,
            "sources": ["safety", "math", "code"],
            "setting": "s",
            "metrics": _m(0.5, 0.4),
        }
        for name, method in (
            ("Task Arithmetic", "task_arithmetic"),
            ("TIES", "ties"),
            ("LED-Merging", "led_merging"),
        )
    ]
    return SeedResult(
        seed=seed,
        world="smollm2",
        device="cpu",
        quick=False,
        recipe={},
        eval_sizes={},
        rows=rows,
        selection={"rule": "rule", "trials": {}, "selected": {}},
        properties={},
        fronts=fronts,
        safety_curve=[CurvePoint(step=s, metrics=_m(h, 0.0)) for s, h in curve],
        timing={"total_s": 1.0},
    )


NEVER = ((0.9, 0.9),)  # Model Stock: never within the margin


def _four_seeds():
    return [
        # seed 0, a clear winner: TIES 0.50 > LED 0.45 > TA 0.40 (TA's 0.30 sits on the margin)
        _seed(
            0,
            0.2,
            {
                "task_arithmetic": _front("task_arithmetic", (0.3, 0.4)),
                "ties": _front("ties", (0.25, 0.5), (0.6, 0.8)),
                "model_stock": _front("model_stock", *NEVER),
                "led_merging": _front("led_merging", (0.1, 0.45), (0.35, 0.7)),
            },
            curve=((100, 0.2), (0, 0.6), (50, 0.3)),
        ),
        # seed 1, a tie: TIES and LED both 0.60
        _seed(
            1,
            0.1,
            {
                "task_arithmetic": _front("task_arithmetic", (0.05, 0.3)),
                "ties": _front("ties", (0.15, 0.6)),
                "model_stock": _front("model_stock", *NEVER),
                "led_merging": _front("led_merging", (0.2, 0.6)),
            },
            curve=((0, 0.5), (100, 0.1)),
        ),
        # seed 2, no method qualifies
        _seed(
            2,
            0.0,
            {
                "task_arithmetic": _front("task_arithmetic", (0.5, 0.9)),
                "ties": _front("ties", (0.6, 0.9)),
                "model_stock": _front("model_stock", *NEVER),
                "led_merging": _front("led_merging", (0.11, 0.9)),
            },
        ),
        # seed 3, LED qualifies (0.35 ≤ 0.40) where every baseline does not
        _seed(
            3,
            0.3,
            {
                "task_arithmetic": _front("task_arithmetic", (0.41, 0.9)),
                "ties": _front("ties", (0.45, 0.9)),
                "model_stock": _front("model_stock", *NEVER),
                "led_merging": _front("led_merging", (0.35, 0.2), (0.8, 0.95)),
            },
        ),
    ]


def test_the_finding_counts_winners_ties_and_seeds_without_a_winner():
    fronts = front_report.front_summary(_four_seeds())
    assert fronts.margin == 0.10
    assert fronts.reference == {"0": 0.2, "1": 0.1, "2": 0.0, "3": 0.3}
    assert fronts.winners == {
        "0": ["TIES"],
        "1": ["TIES", "LED-Merging"],
        "2": [],
        "3": ["LED-Merging"],
    }
    by = {m.name: m for m in fronts.methods}
    assert list(by) == ["Task Arithmetic", "TIES", "Model Stock", "LED-Merging"]
    assert (by["TIES"].qualifying, by["TIES"].won) == ([0, 1], [0, 1])
    assert (by["Task Arithmetic"].qualifying, by["Task Arithmetic"].won) == ([0, 1], [])
    assert (by["LED-Merging"].qualifying, by["LED-Merging"].won) == ([0, 1, 3], [1, 3])
    assert (by["Model Stock"].qualifying, by["Model Stock"].won, by["Model Stock"].score) == (
        [],
        [],
        None,
    )
    assert by["LED-Merging"].per_seed == {"0": 0.45, "1": 0.6, "2": None, "3": 0.2}
    led = by["LED-Merging"].score
    assert (round(led.mean, 4), led.min, led.max) == (0.4167, 0.2, 0.6)
    assert (by["TIES"].score.min, by["TIES"].score.max) == (0.5, 0.6)
    versus = {v.baseline: (v.led_at_least, v.baseline_ahead, v.neither) for v in fronts.led_versus}
    # LED alone qualifying (seed 3) counts for LED; seed 2 (neither) is not counted
    assert versus == {
        "Task Arithmetic": (3, 0, 1),
        "TIES": (2, 1, 1),
        "Model Stock": (3, 0, 1),
    }


def test_the_margin_is_inclusive_despite_rounding():
    # 0.7 + 0.1 is 0.7999999999999999 in floating point: 0.8 still qualifies, 0.8001 does not
    points = _front("ties", (0.8, 0.3), (0.8001, 0.9))
    assert [p.text for p in front_report.qualifying(points, 0.7)] == ["ties #0"]
    assert front_report.method_score(points, 0.7) == 0.3
    assert front_report.method_score(points, 0.69) is None


def test_the_sentence_says_every_count():
    sentences = front_findings(front_report.front_summary(_four_seeds()))
    assert sentences == [
        "At harmful compliance within 10 points of the safety model's (15.0 [0.0–30.0] % on "
        "test, mean [min–max] over 4 seeds), TIES keeps the most utility on 2 of 4 seeds "
        "(within the margin on 2, mean utility 55.0 % there); LED-Merging on 2 of 4 seeds "
        "(within the margin on 3, mean utility 41.7 % there); Task Arithmetic on 0 of 4 seeds "
        "(within the margin on 2, mean utility 35.0 % there). Never within 10 points on any "
        "seed: Model Stock. No method qualifies on 1 of 4 seeds (seed 2): those seeds have no "
        "winner. Ties (every tied method wins the seed): seed 1 (TIES, LED-Merging).",
        "LED-Merging's utility within 10 points of the safety model's against each baseline's, "
        "seed by seed (a seed where only LED-Merging qualifies counts for it; one where neither "
        "does is not counted): ≥ Task Arithmetic's on 3 of 4 seeds (Task Arithmetic ahead on 0, "
        "neither qualifies on 1); ≥ TIES's on 2 of 4 seeds (TIES ahead on 1, neither qualifies "
        "on 1); ≥ Model Stock's on 3 of 4 seeds (Model Stock ahead on 0, neither qualifies on 1).",
    ]


def test_no_method_qualifying_on_any_seed_is_said_plainly():
    results = [r for r in _four_seeds() if r.seed == 2]
    fronts = front_report.front_summary(results)
    assert fronts.winners == {"2": []}
    assert all(not m.qualifying and not m.won for m in fronts.methods)
    assert [(v.led_at_least, v.baseline_ahead, v.neither) for v in fronts.led_versus] == [
        (0, 0, 1)
    ] * 3
    assert front_findings(fronts) == [
        "At harmful compliance within 10 points of the safety model's (0.0 [0.0–0.0] % on test, "
        "mean [min–max] over 1 seeds), no method qualifies on any of the 1 seeds: no test point "
        "of any method's front has harmful compliance that low, so no method keeps utility "
        "there and there is no winner."
    ]


def test_the_report_has_the_fronts_sections_tables_and_plots(tmp_path: Path):
    results = _four_seeds()
    for result in results:  # the test-only more_sets on the safety model
        result.rows[0].metrics.more = {
            "strongreject_harmful_compliance": 0.25,
            "xstest_over_refusal": 0.125,
        }
    summary = summarize(results, timing=TIMING, quick=False, device="cpu", world="smollm2")
    assert summary.fronts is not None
    assert summary.findings[-2:] == front_findings(summary.fronts)
    assert list(summary.safety_curve) == ["0", "1"]
    assert [p.step for p in summary.safety_curve["0"]] == [0, 50, 100]  # sorted by step

    head, body = front_report.fronts_rows(summary)
    assert len(body) == 6 + 4 + 4 + 5  # every front point of every seed
    assert head[-1] == "≤ safety + 10"
    assert body[0] == [
        "0", "Task Arithmetic", "task_arithmetic #0", "✓",
        "30.0", "40.0", "30.0", "10.0", "40.0", "40.0", "35.0", "5.0", "✓",
    ]  # fmt: skip
    assert body[2][1:4] == [" ", "ties #1", "–"] and body[2][-1] == "–"
    assert front_report.finding_rows(summary)[1] == [
        ["Task Arithmetic", "2/4", "0/4", "35.0 [30.0–40.0]"],
        ["TIES", "2/4", "2/4", "55.0 [50.0–60.0]"],
        ["Model Stock", "0/4", "0/4", "–"],
        ["LED-Merging", "3/4", "2/4", "41.7 [20.0–60.0]"],
    ]
    assert front_report.led_versus_rows(summary)[1][1] == ["TIES", "2/4", "1/4", "1/4"]
    assert front_report.safety_curve_rows(summary)[1] == [
        ["0", "0", "60.0", "10.0", "–", "–"],
        [" ", "50", "30.0", "10.0", "–", "–"],
        [" ", "100", "20.0", "10.0", "–", "–"],
        ["1", "0", "50.0", "10.0", "–", "–"],
        [" ", "100", "10.0", "10.0", "–", "–"],
    ]

    table = results_table(summary, markdown=True).splitlines()
    assert table[0].endswith("| StrongREJECT compliance ↓ | XSTest over-refusal ↓ |")
    assert "not refused" not in table[0]  # no row measured it
    assert table[2].endswith("| 25.0 [25.0–25.0] | 12.5 [12.5–12.5] |")  # the safety model
    assert table[3].endswith("| – | – |")  # Math: not measured

    paths = write_reports(str(tmp_path), summary, results)
    assert paths["fronts"] == str(tmp_path / "fronts.png")
    assert paths["safety_curve"] == str(tmp_path / "safety_curve.png")
    for name in ("fronts.png", "safety_curve.png", "safety_vs_utility.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.md").read_text()
    for heading in (
        "## Each method's front on the test split",
        "### Utility within 10 points of the safety model's harmful compliance",
        "## The safety fine-tune's training curve (validation split)",
    ):
        assert heading in report
    assert report.index("![safety vs utility]") < report.index("## Each method's front")
    assert report.index("## Each method's front") < report.index("## Findings")
    assert "- " + summary.findings[-2] in report
    assert "| TIES | 2/4 | 1/4 | 1/4 |" in report


def test_a_world_without_fronts_keeps_its_report(tmp_path: Path):
    results = [_seed(seed, 0.2, {}) for seed in (0, 1)]
    summary = summarize(results, timing=TIMING, quick=True, device="cpu", world="toy")
    assert summary.fronts is None and summary.safety_curve == {}
    assert front_findings(summary.fronts) == []
    head = results_table(summary, markdown=False).splitlines()[0].split()
    assert head[-3:] == ["code", "acc", "↑"]  # no column beyond the four core metrics
    paths = write_reports(str(tmp_path), summary, results)
    assert set(paths) == {"json", "markdown", "plot"}
    assert not (tmp_path / "fronts.png").exists() and not (tmp_path / "safety_curve.png").exists()
    report = markdown_report(summary)
    assert "front" not in report.lower() and "training curve" not in report
