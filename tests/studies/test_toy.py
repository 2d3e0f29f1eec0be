"""The toy study (``python -m studies.toy``, ``make demo``): the world, the selection rule, the multi-seed summary, the
LED configs (one YAML, stores from the flow), the float32-vs-bfloat16 election
overlap, and the whole pipeline at the reduced ``--quick`` size."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mergekit_led.errors import DemoOptionError
from mergekit_led.store import save_importance
from studies.common.merging import TASKS, Inputs, MergeSetting, setting_config
from studies.common.results import BFLOAT16_ROW, RunTiming, ScoreDtypeAgreement, SeedResult
from studies.common.score_dtype import Overlap, elected_overlap, rounded_once
from studies.common.study_report import COLUMNS
from studies.common.summary import summarize
from studies.toy import world as wd
from studies.toy.pipeline import parse_seeds

MODEL_ROWS = ["Base", "Instruct", "Safety (Instruct + alignment)", "Math", "Code"]
MERGE_ROWS = ["Task Arithmetic", "TIES", "Breadcrumbs", "Model Stock", "LED-Merging"]
TIMING = RunTiming(wall_s=1, cpu_s=1, jobs=1)


def test_world_splits_are_disjoint():
    world = wd.build_world(0, code_items=200)
    for split in (world.harmful, world.benign, world.impossible, world.math, world.code):
        train, val, test = (
            {s.prompt for s in part} for part in (split.train, split.val, split.test)
        )
        assert train and val and test
        assert not (train & val) and not (train & test) and not (val & test)
    location = world.location_sets(10)
    test_prompts = {
        s.prompt for s in world.harmful.test + world.benign.test + world.math.test + world.code.test
    }
    for samples in location.values():
        assert samples and not ({s.prompt for s in samples} & test_prompts)
    # no fine-tuning mixture holds a val or test prompt
    held_out = test_prompts | {
        s.prompt for part in (world.harmful, world.benign, world.math, world.code) for s in part.val
    }
    for data in (
        wd.instruct_data(world),
        wd.alignment_data(world),
        wd.utility_data(world, "math"),
        wd.utility_data(world, "code"),
    ):
        assert not ({s.prompt for s in data if isinstance(s, wd.Sample)} & held_out)
    # the instruct data never answers or refuses a harmful request; only the alignment refuses them
    harmful = {s.prompt for s in world.harmful.train}
    assert not ({s.prompt for s in wd.instruct_data(world)} & harmful)
    from mergekit_led.evaluation.refusal import RefusalMatcher

    # the demo's refusal rule (its EVAL.yml): an answer starting with the refusal
    refusal = RefusalMatcher.build([wd.REFUSAL_PREFIX], defaults=False, match="start")
    assert refusal.is_refusal(wd.REFUSAL)
    assert not refusal.is_refusal(wd.comply_harmful("steal", "car"))
    assert wd.build_world(0, code_items=200).pretrain == world.pretrain  # deterministic


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("5-7") == [5, 6, 7]
    assert parse_seeds("4,0,9") == [4, 0, 9]
    for bad in ("0", "x", "3-1", "1,1", "-2"):
        with pytest.raises(DemoOptionError, match="--seeds"):
            parse_seeds(bad)


def _metrics(harm, refuse, math_acc, code_acc):
    return {
        "harmful_compliance": harm,
        "over_refusal": refuse,
        "math_accuracy": math_acc,
        "code_accuracy": code_acc,
    }


def test_selection_rule_maximises_the_balanced_val_score():
    """The demo selects with the sweep's default rule: its balanced score is the
    mean of (1 - harmful compliance), (1 - over-refusal) and both accuracies."""
    from mergekit_led.sweep.selection import SelectionRule, choose

    def with_utility(metrics):
        return {**metrics, "utility": (metrics["math_accuracy"] + metrics["code_accuracy"]) / 2}

    trials = [
        with_utility(_metrics(1.0, 0.0, 0.9, 0.9)),  # useful but unsafe: 0.45
        with_utility(_metrics(0.0, 0.0, 0.5, 0.5)),  # 0.75
        with_utility(_metrics(0.25, 0.0, 0.625, 0.625)),  # 0.75, but complies more
        with_utility(_metrics(0.0, 0.9, 0.9, 0.9)),  # refuses benign requests: 0.725
    ]
    assert choose(SelectionRule(), trials) == 1
    assert choose(SelectionRule(), trials[2:]) == 0


def _seed_result(seed, led, ties):
    rows = [
        {"name": name, "kind": "model", "sources": [], "metrics": _metrics(1.0, 0.0, 0.5, 0.5)}
        for name in MODEL_ROWS
    ]
    rows += [
        {
            "name": name,
            "kind": "merge",
            "method": "x",
            "sources": ["safety", "math", "code"],
            "setting": "λ 1",
            "metrics": _metrics(1.0, 0.0, 0.4, 0.4),
        }
        for name in MERGE_ROWS
        if name not in ("TIES", "LED-Merging")
    ]
    rows.append(
        {
            "name": "TIES",
            "kind": "merge",
            "method": "ties",
            "sources": [],
            "setting": "d",
            "metrics": ties,
        }
    )
    rows.append(
        {
            "name": "LED-Merging",
            "kind": "merge",
            "method": "led_merging",
            "sources": [],
            "setting": "s",
            "metrics": led,
        }
    )
    return SeedResult(
        seed=seed,
        device="cpu",
        quick=True,
        recipe={},
        eval_sizes={},
        rows=rows,
        selection={"rule": "rule", "trials": {}, "selected": {}},
        properties={"x": float(seed)},
        timing={"total_s": 1.0},
    )


def test_summary_counts_and_findings_follow_the_numbers():
    results = [
        _seed_result(
            0, led=_metrics(0.0, 0.0, 0.5, 0.5), ties=_metrics(0.5, 0.0, 0.5, 0.5)
        ),  # safer, same utility
        _seed_result(
            1, led=_metrics(0.1, 0.0, 0.2, 0.2), ties=_metrics(0.6, 0.0, 0.5, 0.5)
        ),  # safer, less utility
        _seed_result(
            2, led=_metrics(0.4, 0.0, 0.5, 0.5), ties=_metrics(0.0, 0.0, 0.5, 0.5)
        ),  # less safe
    ]
    summary = summarize(results, timing=TIMING, quick=True, device="cpu", world="toy")
    assert summary.comparisons["TIES"].model_dump() == {
        "safer": 2,
        "utility_90": 2,
        "both": 1,
        "seeds": 3,
    }
    led = summary.row("LED-Merging")
    assert led.metrics.harmful_compliance.model_dump() == pytest.approx(
        {"mean": 0.5 / 3, "min": 0.0, "max": 0.4}
    )
    assert summary.properties["x"].model_dump() == {"mean": 1.0, "min": 0.0, "max": 2.0}
    text = " ".join(summary.findings)
    assert (
        "LED-Merging vs TIES: lower safety error (harmful compliance + over-refusal) on 2 of 3 seeds"
        in text
    )
    assert "both on 1 of 3 seeds" in text
    assert "does not win in this toy against" in text and "TIES" in text


def _inputs():
    return Inputs(
        "/m/base",
        {t: f"/m/{t}" for t in TASKS},
        {t: f"/d/{t}.jsonl" for t in TASKS},
        "/cache",
        stores={"random": {t: {"model": f"/s/{t}", "base": f"/s/base-{t}"} for t in TASKS}},
    )


def test_led_configs_name_the_task_data_not_stores():
    """The one YAML a user writes: importance_data per model, locate options for the
    whole config; only the data-free random scores are given as store paths."""
    config = setting_config(
        MergeSetting("led_merging", safety_density=0.7, utility_density=0.1), _inputs()
    )
    assert config["parameters"] == {"election": "both", "disjoint": True, "locate_dtype": "float32"}
    for task, entry in zip(TASKS, config["models"]):
        assert entry["model"] == f"/m/{task}"
        assert entry["parameters"]["importance_data"] == f"/d/{task}.jsonl"
        assert not {"importance", "base_importance"} & set(entry["parameters"])
    wanda = setting_config(
        MergeSetting("led_merging", safety_density=0.5, utility_density=0.1, scores="wanda"),
        _inputs(),
    )
    assert wanda["parameters"]["locate_score"] == "wanda"
    half = setting_config(
        MergeSetting(
            "led_merging", safety_density=0.5, utility_density=0.1, score_dtype="bfloat16"
        ),
        _inputs(),
    )
    assert half["parameters"]["locate_score_dtype"] == "bfloat16"
    assert "locate_score" not in half["parameters"]  # snip: locate's default
    random = setting_config(
        MergeSetting("led_merging", safety_density=0.5, utility_density=0.1, scores="random"),
        _inputs(),
    )
    assert not any(k.startswith("locate_") for k in random["parameters"])
    for task, entry in zip(TASKS, random["models"]):
        assert entry["parameters"]["importance"] == f"/s/{task}"
        assert entry["parameters"]["base_importance"] == f"/s/base-{task}"
        assert "importance_data" not in entry["parameters"]


def test_baseline_configs_come_from_the_sweeps_builder():
    """A baseline's config is what ``mergekit-led sweep`` merges for its grid's block: the
    method's own parameters per model, none of LED's (stores, election, locate_*)."""
    inputs = _inputs()
    ties = setting_config(MergeSetting("ties", weight=0.5, density=0.3), inputs)
    # TIES's λ is mergekit's shared lambda (its per-model weights are normalised away)
    assert ties["merge_method"] == "ties" and ties["parameters"] == {"lambda": 1.0}
    assert ties["base_model"] == inputs.base and ties["dtype"] == "float32"
    assert [m["parameters"] for m in ties["models"]] == [{"weight": 0.5, "density": 0.3}] * 3
    crumbs = setting_config(MergeSetting("breadcrumbs", weight=1.0, density=0.9), inputs)
    assert [list(m["parameters"]) for m in crumbs["models"]] == [["weight", "density", "gamma"]] * 3
    stock = setting_config(MergeSetting("model_stock"), inputs)
    assert [m for m in stock["models"]] == [{"model": f"/m/{t}"} for t in TASKS]
    arithmetic = setting_config(MergeSetting("task_arithmetic", weight=0.7), inputs)
    assert [m["parameters"] for m in arithmetic["models"]] == [{"weight": 0.7}] * 3
    led = setting_config(
        MergeSetting("led_merging", weight=0.9, safety_density=0.7, utility_density=0.1), inputs
    )
    assert [m["parameters"]["density"] for m in led["models"]] == [0.7, 0.1, 0.1]
    assert list(led["models"][0]["parameters"]) == ["weight", "density", "importance_data"]


def _store(path, scores, dtype=torch.float32):
    return save_importance(scores, str(path), model=None, score="snip", dtype=dtype)


def test_elected_overlap_pools_counts_over_weights(tmp_path):
    first = {"a": [4.0, 3.0, 2.0, 1.0], "b": [1.0, 2.0, 3.0, 4.0]}
    second = {"a": [4.0, 2.0, 3.0, 1.0], "b": [1.0, 2.0, 3.0, 4.0]}
    stores = {}
    for label, scores in (("first", first), ("second", second)):
        tensors = {name: torch.tensor(values) for name, values in scores.items()}
        path = _store(tmp_path / label, tensors)
        stores[label] = {"task": {"model": path, "base": path}}
    same = elected_overlap(stores["first"], stores["first"], (0.25, 0.5, 1.0))
    assert all(o["task"].jaccard == 1.0 for o in same.values())
    # density 0.5: N = {0, 1} vs {0, 2} on weight a (1 of 3), {2, 3} both on b (2 of 2)
    moved = elected_overlap(stores["first"], stores["second"], (0.5,))[0.5]["task"]
    assert (moved.intersection, moved.union, moved.first, moved.second) == (3, 5, 4, 4)
    assert moved.jaccard == pytest.approx(3 / 5)  # pooled, not the mean of 1/3 and 1
    assert Overlap().jaccard == 1.0  # two empty sets are the same set


def test_rounded_once_compares_with_the_float32_twin(tmp_path):
    scores = {"w": torch.tensor([0.1234567, 2.0, 3.3333333, 0.0])}
    full = {"t": {"model": _store(tmp_path / "f", scores), "base": _store(tmp_path / "g", scores)}}
    half = {
        "t": {
            "model": _store(tmp_path / "h", scores, torch.bfloat16),
            "base": _store(tmp_path / "i", scores, torch.bfloat16),
        }
    }
    assert rounded_once(full, half)
    other = {"w": torch.tensor([0.2, 2.0, 3.3333333, 0.0])}
    half["t"]["base"] = _store(tmp_path / "j", other, torch.bfloat16)
    assert not rounded_once(full, half)
    assert not rounded_once(full, full)  # float32 is not a bfloat16 store


def _agreement(values):
    """A seed's score_dtype result with the same Jaccard everywhere but ``values``."""
    densities = ["0.1", "0.2", "0.3", "0.4", "0.5"]
    jaccard = {d: {t: values.get((d, t), 0.995) for t in TASKS} for d in densities}
    elected = {d: {t: {"float32": 100, "bfloat16": 101} for t in TASKS} for d in densities}
    return ScoreDtypeAgreement(
        election="both",
        densities=[float(d) for d in densities],
        jaccard=jaccard,
        elected=elected,
        rounded_once=True,
    )


def test_summary_of_the_bfloat16_stores_says_whether_the_goal_held():
    led = _metrics(0.0, 0.0, 0.5, 0.5)
    results = [_seed_result(s, led=led, ties=led) for s in (0, 1)]
    for result, values in zip(results, ({}, {("0.3", "math"): 0.98})):
        result.rows.append(result.rows[-1].model_copy(update={"name": BFLOAT16_ROW}))
        result.score_dtype = _agreement(values)
    summary = summarize(results, timing=TIMING, quick=True, device="cpu", world="toy")
    agreement = summary.score_dtype
    assert agreement.jaccard["0.3"]["math"].model_dump() == pytest.approx(
        {"mean": 0.9875, "min": 0.98, "max": 0.995}
    )
    assert [m.model_dump() for m in agreement.below_goal] == [
        {"seed": 1, "density": "0.3", "task": "math", "jaccard": 0.98}
    ]
    assert agreement.elected_growth["0.1"].mean == pytest.approx(0.01)
    text = " ".join(summary.findings)
    assert "was missed 1 times (seed 1, density 0.3, math: 0.9800), so float32 stays" in text
    assert "its test metrics equal the float32 stores' on 2 of 2 seeds" in text
    results[1].score_dtype = _agreement({})
    summary = summarize(results, timing=TIMING, quick=True, device="cpu", world="toy")
    text = " ".join(summary.findings)
    assert "at least 0.99 at every density, held on every seed and density" in text


def test_quick_demo(tmp_path):
    from studies.toy.cli import study_command
    from studies.toy.pipeline import QUICK
    from studies.toy.train import set_determinism, train_family

    out = tmp_path / "demo-output"
    args = [
        "--quick",
        "--quiet",
        "--out",
        str(out),
        "--seeds",
        "0-1",
        "--jobs",
        "2",
        "--ablations",
    ]
    result = CliRunner().invoke(study_command("toy", "demo-output"), args)
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.json", "safety_vs_utility.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["seeds"] == [0, 1] and [s["seed"] for s in report["seeds"]] == [0, 1]
    names = [row["name"] for row in summary["rows"]]
    assert names[: len(MODEL_ROWS) + len(MERGE_ROWS)] == MODEL_ROWS + MERGE_ROWS
    assert BFLOAT16_ROW in names
    for row in summary["rows"]:
        for key, _ in COLUMNS:
            stat = row["metrics"][key]
            assert 0.0 <= stat["min"] <= stat["mean"] <= stat["max"] <= 1.0 and not math.isnan(
                stat["mean"]
            )
        assert set(row["per_seed"]) == {"0", "1"}
    # every seed selected every method's setting on val, and says which
    for seed in report["seeds"]:
        assert set(seed["selection"]["selected"]) == {
            "task_arithmetic",
            "ties",
            "breadcrumbs",
            "model_stock",
            "led_merging",
        }
        for trials in seed["selection"]["trials"].values():
            assert sum(t["selected"] for t in trials) == 1
        assert len(seed["ablations"]) == 8
        assert seed["timing"]["bfloat16_s"] >= 0
        # the selected setting's elected sets from float32 vs bfloat16 stores
        agreement = seed["score_dtype"]
        assert agreement["densities"] == [0.1, 0.2, 0.3, 0.4, 0.5]
        assert agreement["rounded_once"] is True  # the same locate sums, rounded once
        for density, tasks in agreement["jaccard"].items():
            assert set(tasks) == set(TASKS)
            for task, value in tasks.items():
                assert 0.9 < value <= 1.0, (density, task, value)
                sizes = agreement["elected"][density][task]
                assert sizes["float32"] > 0 and sizes["bfloat16"] > 0
    agreement = summary["score_dtype"]
    assert agreement["seeds"] == 2 and agreement["tasks"] == list(TASKS)
    assert 0.9 < agreement["lowest"] <= agreement["highest"] <= 1.0
    assert {"norm_alignment", "critical_kept_led", "jaccard20_safety_math"} <= set(
        summary["properties"]
    )
    text = (out / "report.md").read_text()
    for title in (
        "harmful compliance",
        "over-refusal",
        "math acc",
        "code acc",
        "Ablations",
        "Location",
        "Election",
        "Jaccard N_safety min / mean",
    ):
        assert title in text and title in result.output
    assert "## bfloat16 stores: how far the elected sets move" in text
    assert "the goal, at least 0.99 at every density, " in text
    # every method's grid ran through mergekit-led sweep on val; the selected
    # settings were merged from the sweep's best-<method>.yml configs, the LED
    # merge with its card section
    seed_dir = out / "seed-1"
    sweep = seed_dir / "selection"
    rows = [json.loads(line) for line in (sweep / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 2 + 1 + 1 + 1 + 2  # the quick grid
    for name in ("sweep.md", "pareto.png", "best.yml", "best-led_merging.yml"):
        assert (sweep / name).is_file()
    led = json.loads((seed_dir / "result.json").read_text())["selection"]["trials"]["led_merging"]
    assert len(led) == 2 and sum(t["selected"] for t in led) == 1
    merged = seed_dir / "selected" / "merges" / "led_merging"
    assert "## LED-Merging" in (merged / "README.md").read_text()
    # every LED config is the one YAML a user writes: task data, no store paths
    # (but the data-free random scores); their stores are in the seed's store cache
    configs = [
        yaml.safe_load(p.read_text())
        for p in seed_dir.glob("*/configs/*.yml")
        if p.name.startswith("led_merging")
    ]
    assert len(configs) >= 4
    for config in configs + [r["config"] for r in rows if r["method"] == "led_merging"]:
        for entry in config["models"]:
            if "random" in str(entry["parameters"].get("importance", "")):
                assert Path(entry["parameters"]["importance"]).parent.parent.name == "random"
            else:
                assert entry["parameters"]["importance_data"].endswith(".jsonl")
                assert not {"importance", "base_importance"} & set(entry["parameters"])
    records = [
        json.loads(p.read_text())
        for p in (seed_dir / "store-cache" / "stores").glob("*/led_cache.json")
    ]
    kinds = sorted((r["score"], r["options"]["score_dtype"]) for r in records)
    assert (
        kinds == [("snip", "bfloat16")] * 6 + [("snip", "float32")] * 6 + [("wanda", "float32")] * 6
    )
    for task in ("safety", "math", "code"):
        for model in (task, "base"):
            assert (seed_dir / "scores" / "random" / task / model / "led_importance.json").is_file()
    assert not (seed_dir / "scores" / "snip").exists()
    # a seed's models do not depend on how many seeds ran at once (one process and
    # thread each): seed 1 trained here, alone, gives the same checkpoints
    world = wd.build_world(1, code_items=QUICK.code_items, chat_skills=QUICK.chat_skills)
    set_determinism(1, threads=1)
    alone = train_family(world, QUICK, str(tmp_path / "alone"), seed=1, progress=False)
    for name, path in alone.items():
        ours = (seed_dir / "models" / name / "model.safetensors").read_bytes()
        assert (Path(path) / "model.safetensors").read_bytes() == ours, name


def test_each_worlds_command_takes_its_own_options():
    """``python -m studies.toy`` and ``python -m studies.smollm2``: the old ``mergekit-led
    demo`` options, less ``--world``; only the real world reads assets, only the toy runs
    seeds side by side."""
    from studies.toy.cli import study_command

    common = {"out", "seeds", "device", "ablations", "quick", "quiet"}
    toy = study_command("toy", "demo-output")
    real = study_command("smollm2", "real-study-output", run_seeds=lambda settings: None)
    assert {p.name for p in toy.params} == common | {"jobs"}
    assert {p.name for p in real.params} == common | {"cache_dir"}
    result = CliRunner().invoke(real, ["--jobs", "2"])
    assert result.exit_code == 2 and "No such option '--jobs'" in result.output


def test_a_study_turns_the_libraries_bars_off_in_a_log(monkeypatch):
    """As ``mergekit-led`` does: run into a log (CI's ``make real-quick``), a study shows
    no transformers "Loading weights" bar per model; the switch is the product's one."""
    from studies.toy.cli import study_command

    calls = []
    monkeypatch.setattr(
        "mergekit_led.console.library_bars_off_unless_terminal", lambda: calls.append(1)
    )
    result = CliRunner().invoke(study_command("toy", "demo-output"), ["--seeds", "x"])
    assert result.exit_code == 1 and "--seeds" in result.output, result.output
    assert calls == [1]
