"""``mergekit-led sweep``: the grid syntax, the selection rules, and sweeps end to
end through the CLI on a tiny family (stores computed once, resume, lock)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from click.testing import CliRunner
from helpers import alias_bomb, sweep_args

from mergekit_led.errors import SweepError
from mergekit_led.jsonl import write_jsonl
from mergekit_led.sweep import SelectionRule, parse_grid, setting_config
from mergekit_led.sweep.selection import balanced_score, choose, pareto_front

MODELS = ["/m/safety", "/m/math", "/m/code"]


# --------------------------------------------------------------------------- grid


def test_grid_is_the_product_of_each_blocks_lists_in_written_order():
    settings = parse_grid(
        {
            "led_merging": {"density": {"safety": [0.5, 0.7], "math, code": [0.1, 0.2]}},
            "task_arithmetic": {"weight": [0.3, 1.0]},
            "model_stock": None,
        },
        MODELS,
    )
    led = [s.as_dict()["models"] for s in settings if s.method == "led_merging"]
    assert [(m["/m/safety"]["density"], m["/m/math"]["density"]) for m in led] == [
        (0.5, 0.1),
        (0.5, 0.2),
        (0.7, 0.1),
        (0.7, 0.2),
    ]
    assert all(m["/m/math"] == m["/m/code"] for m in led)  # a comma group moves together
    ta = [s for s in settings if s.method == "task_arithmetic"]
    assert [s.as_dict()["models"]["/m/code"]["weight"] for s in ta] == [0.3, 1.0]
    assert settings[-1].method == "model_stock" and settings[-1].as_dict()["models"] == {}
    assert len({s.key for s in settings}) == len(settings) == 7


def test_star_names_every_other_model_and_shared_parameters_are_swept():
    settings = parse_grid(
        {
            "led_merging": {
                "density": {"safety": 0.9, "*": [0.1, 0.2]},
                "election": ["both", "model_only"],
                "disjoint": False,
            }
        },
        MODELS,
    )
    assert len(settings) == 4
    first = settings[0].as_dict()
    assert first["shared"] == {"election": "both", "disjoint": False}
    assert (
        first["models"]["/m/code"]["density"] == 0.1
        and first["models"]["/m/safety"]["density"] == 0.9
    )


@pytest.mark.parametrize(
    "grid, message",
    [
        ({}, "is empty"),
        (None, "is empty"),
        ({"task_arithmetik": {"weight": 1}}, "did you mean 'task_arithmetic'"),
        ({"ties": {"densty": [0.5]}}, "takes no parameter 'densty'; did you mean 'density'"),
        ({"led_merging": {"importance_data": "x.jsonl"}}, "not a grid key"),
        ({"led_merging": {"locate_max_samples": [8, 16]}}, "not a grid key"),
        ({"led_merging": {"density": []}}, "has no setting"),
        ({"led_merging": {"density": {"safty": 0.5}}}, "'safty' is not a model of the config"),
        ({"led_merging": {"election": {"safety": "both"}}}, "not a mapping per model"),
        ({"led_merging": {"density": {"safety": 0.5, "safety, math": 0.1}}}, "named twice"),
        ({"ties": {"density": ["half"]}}, "'half' is not a valid density"),
        ({"ties": {"density": [0.5, 0.5], "weight": 1}}, "twice"),
        ({"ties": [0.5]}, "must map parameters"),
    ],
)
def test_bad_grids_are_one_line_errors(grid, message):
    with pytest.raises(SweepError, match=message) as caught:
        parse_grid(grid, MODELS)
    assert "\n" not in str(caught.value)


def test_a_baseline_keeps_only_the_weight_of_an_led_config():
    config = {
        "merge_method": "led_merging",
        "base_model": "/m/base",
        "models": [
            {
                "model": m,
                "parameters": {"density": 0.1, "weight": 0.8, "importance_data": "d.jsonl"},
            }
            for m in MODELS
        ],
        "parameters": {"election": "both", "locate_dtype": "float32"},
        "dtype": "float32",
    }
    (ties,) = parse_grid({"ties": {"density": 0.5}}, MODELS)
    out = setting_config(config, ties)
    assert out["merge_method"] == "ties" and "parameters" not in out
    assert out["models"][0]["parameters"] == {"weight": 0.8, "density": 0.5}
    assert out["dtype"] == "float32" and out["base_model"] == "/m/base"
    (led,) = parse_grid({"led_merging": {"density": 0.3}}, MODELS)
    same = setting_config(config, led)
    assert same["parameters"] == config["parameters"]
    assert same["models"][1]["parameters"]["importance_data"] == "d.jsonl"
    assert same["models"][1]["parameters"]["density"] == 0.3
    (stock,) = parse_grid({"model_stock": {}}, MODELS)
    assert all("parameters" not in m for m in setting_config(config, stock)["models"])
    bare = {**config, "models": [{"model": m} for m in MODELS]}
    (ta,) = parse_grid({"task_arithmetic": {}}, MODELS)
    with pytest.raises(SweepError, match="must set 'weight'"):
        setting_config(bare, ta)


# --------------------------------------------------------------------------- selection


def _m(harm, refuse, utility):
    return {"harmful_compliance": harm, "over_refusal": refuse, "utility": utility}


def test_selection_rules():
    metrics = [_m(1.0, 0.0, 0.9), _m(0.0, 0.0, 0.5), _m(0.25, 0.0, 0.625), _m(0.05, 0.1, 0.7)]
    assert balanced_score(metrics[1]) == pytest.approx(0.75)
    assert choose(SelectionRule(), metrics) == 3  # 0.8125
    assert choose(SelectionRule(), metrics[:3]) == 1  # 0.75 = 0.75, but complies less
    strict = SelectionRule("max-utility", 0.1)
    assert choose(strict, metrics) == 3
    assert choose(SelectionRule("max-utility", 0.0), metrics) == 1
    assert choose(SelectionRule("max-utility", 0.0), [metrics[0]]) is None
    # ties: lower harmful compliance, then the earlier setting
    assert choose(SelectionRule(), [_m(0.2, 0.0, 0.6), _m(0.0, 0.2, 0.6), _m(0.0, 0.2, 0.6)]) == 1
    with pytest.raises(SweepError, match="--max-harmful"):
        SelectionRule("max-utility")
    with pytest.raises(SweepError, match="share"):
        SelectionRule("max-utility", 2.0)


def test_pareto_front():
    points = [(0.5, 0.5), (0.2, 0.4), (0.2, 0.3), (0.6, 0.9), (0.7, 0.8), (0.0, 0.0)]
    assert pareto_front(points) == [5, 1, 0, 3]


# --------------------------------------------------------------------------- end to end


@pytest.fixture()
def sweep_inputs(tmp_path, llama_family):
    """An importance_data LED config of the tiny family, a grid, an EVAL.yml."""
    import random

    from mergekit_led.testing import DEFAULT_WORDS

    rng = random.Random(0)

    def rows(n):
        return [
            {
                "prompt": " ".join(rng.choice(DEFAULT_WORDS) for _ in range(5)),
                "response": " ".join(rng.choice(DEFAULT_WORDS) for _ in range(2)),
            }
            for _ in range(n)
        ]

    data = {n: write_jsonl(tmp_path / f"{n}.jsonl", rows(6)) for n in ("one", "two", "h", "b", "t")}
    config = {
        "merge_method": "led_merging",
        "base_model": llama_family.base,
        "models": [
            {
                "model": llama_family.finetunes[0],
                "parameters": {"density": 0.3, "importance_data": data["one"]},
            },
            {
                "model": llama_family.finetunes[1],
                "parameters": {"density": 0.3, "importance_data": data["two"]},
            },
        ],
        "parameters": {"locate_dtype": "float32"},
        "dtype": "float32",
    }
    grid = {
        "led_merging": {
            "density": {"finetune1": [0.2, 0.6], "finetune2": 0.4},
            "election": ["both", "model_only"],
        },
        "task_arithmetic": {"weight": [0.5, 1.0]},
        "ties": {"density": 0.5, "weight": 1.0},
        "dare_ties": {"density": 0.5, "weight": 1.0},
        "breadcrumbs": {"density": 0.9, "weight": 1.0},
        "model_stock": {},
    }
    spec = {
        "harmful": {"data": data["h"], "max_new_tokens": 3},
        "benign": {"data": data["b"], "max_new_tokens": 3},
        "tasks": {"t": {"data": data["t"], "max_new_tokens": 3}},
        "generation": {"chat_template": "none"},
    }
    paths = {}
    for name, value in (("config", config), ("grid", grid), ("eval", spec)):
        paths[name] = str(tmp_path / f"{name}.yml")
        with open(paths[name], "w") as f:
            yaml.safe_dump(value, f, sort_keys=False)
    paths["cache"] = str(tmp_path / "cache")
    return paths


def sweep_cli(paths, out, *extra):
    from mergekit_led.cli import main

    return CliRunner().invoke(main, sweep_args(paths, out, *extra))


def test_sweep_end_to_end_and_best_yml_reproduces_its_row(sweep_inputs, tmp_path):
    from mergekit_led.cli import main

    out = tmp_path / "sweep"
    result = sweep_cli(sweep_inputs, out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["led_merging"] * 4 + ["task_arithmetic"] * 2 + [
        "ties",
        "dare_ties",
        "breadcrumbs",
        "model_stock",
    ]
    for row in rows:
        assert 0 <= row["metrics"]["harmful_compliance"] <= 1 and "t_accuracy" in row["metrics"]
        assert set(row["seconds"]) == {"merge", "load", "evaluate"}
    # the stores were computed once: one pair per fine-tune in the cache
    entries = os.listdir(os.path.join(sweep_inputs["cache"], "stores"))
    assert len(entries) == 4
    for name in ("sweep.md", "pareto.png", "best.yml", "best-ties.yml"):
        assert (out / name).stat().st_size > 0
    assert not (out / ".scratch").exists() or not os.listdir(out / ".scratch")
    # best.yml is a config the user merges as is; the merge evaluates as its row did
    best_row = max(
        rows,
        key=lambda r: (
            balanced_score(r["metrics"]),
            -r["metrics"]["harmful_compliance"],
            -r["index"],
        ),
    )
    best = yaml.safe_load((out / "best.yml").read_text())
    assert best == best_row["config"] and best["random_seed"] == 0
    merged = tmp_path / "merged"
    merge = CliRunner().invoke(
        main, ["merge", str(out / "best.yml"), str(merged), "--cache-dir", sweep_inputs["cache"]]
    )
    assert merge.exit_code == 0, merge.output
    evaluated = CliRunner().invoke(
        main,
        ["evaluate", str(merged), sweep_inputs["eval"], "--out", str(tmp_path / "ev"), "--quiet"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert again["harmful_compliance"] == best_row["metrics"]["harmful_compliance"]
    assert again["tasks"]["t"]["accuracy"] == best_row["metrics"]["t_accuracy"]


def test_a_killed_sweep_resumes_without_redoing_finished_settings(sweep_inputs, tmp_path):
    out = tmp_path / "sweep"
    assert sweep_cli(sweep_inputs, out).exit_code == 0
    rows = (out / "sweep.jsonl").read_text().splitlines()
    # as if killed while appending the fourth row
    (out / "sweep.jsonl").write_text("\n".join(rows[:3]) + "\n" + rows[3][: len(rows[3]) // 2])
    from mergekit_led.cli import main

    resumed = CliRunner().invoke(
        main,
        [
            "sweep",
            sweep_inputs["config"],
            sweep_inputs["grid"],
            str(out),
            "--eval",
            sweep_inputs["eval"],
            "--cache-dir",
            sweep_inputs["cache"],
            "--device",
            "cpu",
        ],
    )
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 3 of 10 settings" in resumed.output
    again = (out / "sweep.jsonl").read_text().splitlines()
    assert again[:3] == rows[:3]
    assert [json.loads(r)["metrics"] for r in again] == [json.loads(r)["metrics"] for r in rows]
    # a row edited by hand (not a torn last line) is refused, not trusted
    edited = json.loads(again[1])
    edited["metrics"] = {"harmful_compliance": "none"}
    lines = again[:1] + [json.dumps(edited)] + again[2:]
    (out / "sweep.jsonl").write_text("\n".join(lines) + "\n")
    refused = sweep_cli(sweep_inputs, out)
    assert refused.exit_code == 1 and "sweep.jsonl line 2 is not a sweep row" in refused.output


def test_two_sweeps_on_one_folder_and_a_changed_grid_are_refused(sweep_inputs, tmp_path):
    from filelock import FileLock

    out = tmp_path / "sweep"
    out.mkdir()
    with FileLock(str(out / ".sweep.lock")):
        busy = sweep_cli(sweep_inputs, out)
    assert busy.exit_code == 1 and "Another sweep is running on" in busy.output
    assert not (out / "sweep.jsonl").exists()
    grid = yaml.safe_load(open(sweep_inputs["grid"]))
    small = {"task_arithmetic": grid["task_arithmetic"]}
    with open(sweep_inputs["grid"], "w") as f:
        yaml.safe_dump(small, f)
    assert sweep_cli(sweep_inputs, out).exit_code == 0
    with open(sweep_inputs["grid"], "w") as f:
        yaml.safe_dump({"task_arithmetic": {"weight": [0.7]}}, f)
    changed = sweep_cli(sweep_inputs, out)
    assert changed.exit_code == 1 and "holds another sweep" in changed.output
    assert "the grid's settings changed" in changed.output


def test_a_sweep_never_writes_into_a_folder_no_sweep_wrote(sweep_inputs, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "best.yml").write_text("the user's own file\n")
    result = sweep_cli(sweep_inputs, out)
    assert result.exit_code == 1 and "not an earlier sweep's folder" in result.output
    assert (out / "best.yml").read_text() == "the user's own file\n"
    assert sorted(os.listdir(out)) == ["best.yml"]


def test_too_many_settings_and_bad_grid_keys_fail_before_any_work(sweep_inputs, tmp_path):
    out = tmp_path / "sweep"
    many = sweep_cli(sweep_inputs, out, "--max-settings", "4")
    assert many.exit_code == 1
    assert "settings or more (the product of its lists), more than --max-settings 4" in many.output
    with open(sweep_inputs["grid"], "w") as f:
        f.write("ties:\n  denisty: [0.5]\n")
    bad = sweep_cli(sweep_inputs, out)
    assert bad.exit_code == 1 and "did you mean 'density'" in bad.output
    assert "Traceback" not in bad.output and not os.path.exists(sweep_inputs["cache"])


def test_no_setting_meeting_the_rule_writes_no_best(sweep_inputs, tmp_path):
    with open(sweep_inputs["grid"], "w") as f:
        yaml.safe_dump({"task_arithmetic": {"weight": [1.0]}}, f)
    out = tmp_path / "sweep"
    result = sweep_cli(sweep_inputs, out, "--select", "max-utility", "--max-harmful", "-0.0")
    metrics = json.loads((out / "sweep.jsonl").read_text())["metrics"]
    if metrics["harmful_compliance"] > 0:
        assert result.exit_code == 1 and "No setting meets the rule" in result.output
        assert not (out / "best.yml").exists()
    else:
        assert result.exit_code == 0 and (out / "best.yml").exists()


@pytest.mark.slow
def test_sweep_console_script(sweep_inputs, tmp_path, console_script, child_env):
    with open(sweep_inputs["grid"], "w") as f:
        yaml.safe_dump({"led_merging": {"density": [0.2, 0.5]}, "model_stock": {}}, f)
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            console_script("mergekit-led"),
            "sweep",
            sweep_inputs["config"],
            sweep_inputs["grid"],
            str(out),
            "--eval",
            sweep_inputs["eval"],
            "--cache-dir",
            sweep_inputs["cache"],
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 3
    assert "best" in proc.stderr


def test_grid_files_are_read_like_configs(tmp_path):
    from mergekit_led.sweep import load_grid

    path = tmp_path / "grid.yml"
    path.write_text(alias_bomb())
    with pytest.raises(SweepError, match="expands to more than"):
        load_grid(str(path), MODELS)
    os.mkfifo(tmp_path / "fifo.yml")
    with pytest.raises(SweepError, match="not a regular file"):
        load_grid(str(tmp_path / "fifo.yml"), MODELS)


def test_a_killed_sweeps_scratch_is_removed_and_nothing_else(tmp_path):
    """A kill skips the clean-up of a setting's scratch folder (on the RAM disk, a
    merged model's memory until a reboot): the next sweep removes the folders of
    dead sweep processes on this host, and no other folder."""
    import subprocess

    from mergekit_led.atomic import writer_id
    from mergekit_led.sweep.scratch import SCRATCH_PREFIX, remove_killed_scratch

    child = subprocess.Popen(["true"])
    child.wait()  # its process id is now free: a killed sweep's
    host = writer_id().split("@", 1)[1]
    dead = tmp_path / f"{SCRATCH_PREFIX}3-{child.pid}@{host}-ab12_cd"
    running = tmp_path / f"{SCRATCH_PREFIX}4-{writer_id()}-ef34gh"
    elsewhere = tmp_path / f"{SCRATCH_PREFIX}5-{child.pid}@another-host-ij56kl"
    users = tmp_path / f"{SCRATCH_PREFIX}notes"
    for folder in (dead, running, elsewhere, users):
        (folder / "model").mkdir(parents=True)
    lines = []
    assert remove_killed_scratch(str(tmp_path), lines.append) == [str(dead)]
    assert not dead.exists() and running.exists() and elsewhere.exists() and users.exists()
    assert lines == [f"Removed {dead}, left by a killed sweep (process {child.pid})."]
