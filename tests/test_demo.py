"""``mergekit-led demo --quick``: the whole pipeline at a reduced size."""

import json
import math
import os

from click.testing import CliRunner

from mergekit_led.demo import world as wd
from mergekit_led.demo.report import COLUMNS

EXPECTED_ROWS = [
    "Base", "Safety (Instruct)", "Math", "Code",
    "Task Arithmetic", "TIES", "Breadcrumbs", "Model Stock", "LED-Merging",
]


def test_world_splits_are_disjoint():
    world = wd.build_world(0, code_items=200)
    for split in (world.harmful, world.benign, world.math, world.code):
        train, val, test = ({s.prompt for s in part} for part in (split.train, split.val, split.test))
        assert train and val and test
        assert not (train & val) and not (train & test) and not (val & test)
    location = world.location_sets(10)
    test_prompts = {s.prompt for s in world.harmful.test + world.benign.test + world.math.test + world.code.test}
    for samples in location.values():
        assert samples and not ({s.prompt for s in samples} & test_prompts)
    assert wd.is_refusal(wd.REFUSAL) and not wd.is_refusal(wd.comply_harmful("steal", "car"))
    assert wd.build_world(0, code_items=200).pretrain == world.pretrain  # deterministic


def test_quick_demo(tmp_path):
    from mergekit_led.cli import main

    out = tmp_path / "demo-output"
    result = CliRunner().invoke(main, ["demo", "--quick", "--quiet", "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.json", "safety_vs_utility.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names[: len(EXPECTED_ROWS)] == EXPECTED_ROWS
    for row in report["rows"]:
        assert set(row["metrics"]) == {key for key, _ in COLUMNS}
        for value in row["metrics"].values():
            assert 0.0 <= value <= 1.0 and not math.isnan(value)
    assert report["settings"]["quick"] is True
    assert report["study"] is not None and report["study"]["split"] == "val"
    # the terminal table and report.md have the Table-1 columns
    for title in ("harmful compliance", "over-refusal", "math acc", "code acc"):
        assert title in result.output
        assert title in (out / "report.md").read_text()
    # the merges went through mergekit YAML configs; the LED merge has its card section
    assert (out / "configs" / "led_merging.yml").is_file()
    readme = (out / "merges" / "led_merging" / "README.md").read_text()
    assert "## LED-Merging" in readme
    # one store per model and task, the base scored on every task's data
    for task in ("safety", "math", "code"):
        for model in (task, "base"):
            assert os.path.isfile(out / "scores" / task / model / "led_importance.json")
