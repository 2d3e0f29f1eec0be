"""``mergekit-led demo``: the world, the selection rule, the multi-seed summary, and
the whole pipeline at the reduced ``--quick`` size."""

import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_led.demo import world as wd
from mergekit_led.demo.pipeline import DemoOptionError, parse_seeds
from mergekit_led.demo.report import COLUMNS, summarize
from mergekit_led.demo.selection import Trial, choose

MODEL_ROWS = ["Base", "Instruct", "Safety (Instruct + alignment)", "Math", "Code"]
MERGE_ROWS = ["Task Arithmetic", "TIES", "Breadcrumbs", "Model Stock", "LED-Merging"]


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
    assert wd.is_refusal(wd.REFUSAL) and not wd.is_refusal(wd.comply_harmful("steal", "car"))
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
    trials = [
        Trial(None, _metrics(1.0, 0.0, 0.9, 0.9), "a"),  # useful but unsafe: 0.45
        Trial(None, _metrics(0.0, 0.0, 0.5, 0.5), "b"),  # 0.75
        Trial(None, _metrics(0.25, 0.0, 0.625, 0.625), "c"),  # 0.75, but complies more
        Trial(None, _metrics(0.0, 0.9, 0.9, 0.9), "d"),  # refuses benign requests: 0.725
    ]
    assert choose(trials) == 1
    assert choose(trials[2:]) == 0


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
    return {
        "seed": seed,
        "rows": rows,
        "selection": {"rule": "rule"},
        "properties": {"x": float(seed)},
        "ablations": [],
        "timing": {"total_s": 1.0},
    }


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
    summary = summarize(
        results, timing={"wall_s": 1, "cpu_s": 1, "jobs": 1}, quick=True, device="cpu"
    )
    assert summary["comparisons"]["TIES"] == {"safer": 2, "utility_90": 2, "both": 1, "seeds": 3}
    led = next(r for r in summary["rows"] if r["name"] == "LED-Merging")
    assert led["metrics"]["harmful_compliance"] == pytest.approx(
        {"mean": 0.5 / 3, "min": 0.0, "max": 0.4}
    )
    assert summary["properties"]["x"] == {"mean": 1.0, "min": 0.0, "max": 2.0}
    text = " ".join(summary["findings"])
    assert (
        "LED-Merging vs TIES: lower safety error (harmful compliance + over-refusal) on 2 of 3 seeds"
        in text
    )
    assert "both on 1 of 3 seeds" in text
    assert "does not win in this toy against" in text and "TIES" in text


def test_quick_demo(tmp_path):
    from mergekit_led.cli import main
    from mergekit_led.demo.pipeline import QUICK
    from mergekit_led.demo.train import build_family, set_determinism

    out = tmp_path / "demo-output"
    args = [
        "demo",
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
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.json", "safety_vs_utility.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["seeds"] == [0, 1] and [s["seed"] for s in report["seeds"]] == [0, 1]
    names = [row["name"] for row in summary["rows"]]
    assert names[: len(MODEL_ROWS) + len(MERGE_ROWS)] == MODEL_ROWS + MERGE_ROWS
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
    ):
        assert title in text and title in result.output
    # the merges went through mergekit YAML configs; the LED merge has its card section
    seed_dir = out / "seed-1"
    led = json.loads((seed_dir / "result.json").read_text())["selection"]["trials"]["led_merging"]
    chosen = next(t for t in led if t["selected"])
    assert (seed_dir / chosen["config"]).is_file()
    merges = seed_dir / "selection" / "merges"
    kept = [p for p in os.listdir(merges) if p.startswith("led_merging")]
    assert len(kept) == 1 and "## LED-Merging" in (merges / kept[0] / "README.md").read_text()
    for kind in ("snip", "wanda", "random"):
        for task in ("safety", "math", "code"):
            for model in (task, "base"):
                assert (seed_dir / "scores" / kind / task / model / "led_importance.json").is_file()
    # a seed's models do not depend on how many seeds ran at once (one process and
    # thread each): seed 1 trained here, alone, gives the same checkpoints
    world = wd.build_world(1, code_items=QUICK.code_items, chat_skills=QUICK.chat_skills)
    set_determinism(1, threads=1)
    alone = build_family(world, QUICK, str(tmp_path / "alone"), seed=1, progress=False)
    for name, path in alone.items():
        ours = (seed_dir / "models" / name / "model.safetensors").read_bytes()
        assert (Path(path) / "model.safetensors").read_bytes() == ours, name
