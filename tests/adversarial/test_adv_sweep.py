"""Issue 29: ``mergekit-led sweep`` never hangs on a huge grid, never mixes rows of
two different sweeps, never trusts an edited row, checks everything cheap
before any store is computed, and its best.yml reproduces its row."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
import yaml
from helpers import sweep_args
from safetensors.torch import load_file, save_file

from mergekit_led.jsonl import write_jsonl

from .support import run_cli


def _rows(n, seed):
    import random

    from mergekit_led.testing import DEFAULT_WORDS

    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choice(DEFAULT_WORDS) for _ in range(5)),
            "response": " ".join(rng.choice(DEFAULT_WORDS) for _ in range(2)),
        }
        for _ in range(n)
    ]


@pytest.fixture()
def inputs(tmp_path, llama_family):
    """A config of the tiny family (its first fine-tune copied, so a test may
    re-save it), a two-setting task_arithmetic grid, an EVAL.yml."""
    finetune = tmp_path / "models" / "finetune1"
    shutil.copytree(llama_family.finetunes[0], finetune)
    data = {n: write_jsonl(tmp_path / f"{n}.jsonl", _rows(5, i)) for i, n in enumerate("lhbt")}
    config = {
        "merge_method": "led_merging",
        "base_model": llama_family.base,
        "models": [
            {"model": str(finetune), "parameters": {"density": 0.3, "importance_data": data["l"]}},
            {
                "model": llama_family.finetunes[1],
                "parameters": {"density": 0.3, "importance_data": data["l"]},
            },
        ],
        "parameters": {"locate_dtype": "float32"},
        "dtype": "float32",
    }
    spec = {
        "harmful": {"data": data["h"], "max_new_tokens": 2},
        "benign": {"data": data["b"], "max_new_tokens": 2},
        "tasks": {"t": {"data": data["t"], "max_new_tokens": 2}},
        "generation": {"chat_template": "none"},
    }
    paths = {"finetune": finetune, "data": data, "cache": tmp_path / "cache"}
    for name, value in (
        ("config", config),
        ("grid", {"task_arithmetic": {"weight": [0.5, 1.0]}}),
        ("eval", spec),
    ):
        paths[name] = tmp_path / f"{name}.yml"
        paths[name].write_text(yaml.safe_dump(value, sort_keys=False))
    return paths


def sweep(paths, out, *extra):
    return run_cli(*sweep_args(paths, out, *extra))


def test_a_huge_grid_is_refused_from_its_list_lengths(inputs, tmp_path):
    """main: a 12 KB grid of 10^12 settings built every setting first (3 GB, no end)."""
    values = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(100))
    inputs["grid"].write_text(
        "della:\n"
        + "".join(f"  {key}: [{values}]\n" for key in ("density", "weight", "epsilon", "lambda"))
        + "ties:\n"
        + "".join(f"  {key}: [{values}]\n" for key in ("density", "weight"))
    )
    start = time.perf_counter()
    result = sweep(inputs, tmp_path / "out")
    result.assert_one_line_error(
        "100,000,000 settings or more (the product of its lists)", "--max-settings 64"
    )
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "grid,fragments",
    [
        # main: the stores were computed and the LED settings merged first
        ({"led_merging": {"density": [0.3]}, "task_arithmetic": {}}, ["must set 'weight'"]),
        ({"led_merging": {"density": [0.3, 1.5]}}, ["1.5 is not a valid density", "(0, 1]"]),
        ({"led_merging": {"density": [0.3, float("nan")]}}, ["nan is not a valid density"]),
        ({"ties": {"density": 0.5, "weight": [1.0, float("inf")]}}, ["inf", "not finite"]),
    ],
)
def test_bad_settings_are_refused_before_any_store(grid, fragments, inputs, tmp_path):
    inputs["grid"].write_text(yaml.safe_dump(grid))
    result = sweep(inputs, tmp_path / "out")
    result.assert_one_line_error(*fragments)
    assert not inputs["cache"].exists()  # no store computed
    assert not (tmp_path / "out").exists()


def test_a_missing_evaluation_set_is_refused_before_any_store(inputs, tmp_path):
    """main: the four stores were computed, then the missing file was found."""
    inputs["grid"].write_text(yaml.safe_dump({"led_merging": {"density": [0.3]}}))
    spec = yaml.safe_load(inputs["eval"].read_text())
    spec["benign"]["data"] = str(tmp_path / "missing.jsonl")
    inputs["eval"].write_text(yaml.safe_dump(spec))
    result = sweep(inputs, tmp_path / "out")
    result.assert_one_line_error("evaluation set benign", "missing.jsonl")
    assert not inputs["cache"].exists()
    assert not (tmp_path / "out").exists()


def _interrupted(inputs, out):
    """A finished sweep with its last row removed: as if killed before it."""
    first = sweep(inputs, out)
    assert first.exit_code == 0, first.text
    rows = (out / "sweep.jsonl").read_text().splitlines()
    (out / "sweep.jsonl").write_text(rows[0] + "\n")
    return rows


def _resave_with_new_weights(folder):
    tensors = load_file(str(folder / "model.safetensors"))
    torch.manual_seed(1)
    changed = {name: t + 0.05 * torch.randn_like(t) for name, t in tensors.items()}
    save_file(changed, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("change", ["eval data", "location data", "model weights", "seed"])
def test_a_resume_that_is_not_the_same_sweep_is_refused(change, inputs, tmp_path):
    """main: each resume succeeded, one table mixing rows of two worlds."""
    out = tmp_path / "out"
    _interrupted(inputs, out)
    extra = ()
    if change == "eval data":
        write_jsonl(inputs["data"]["h"], _rows(5, 99))
        expected = "the rows of evaluation set harmful changed"
    elif change == "location data":
        write_jsonl(inputs["data"]["l"], _rows(5, 98))
        expected = "the importance_data of model"
    elif change == "model weights":
        _resave_with_new_weights(inputs["finetune"])
        expected = f"model {inputs['finetune']} changed (its weights or files)"
    else:
        extra = ("--seed", "1")
        expected = "--seed is 1, the earlier run had 0"
    result = sweep(inputs, out, *extra)
    result.assert_one_line_error(
        f"{out} holds another sweep", expected, "Sweep into another folder"
    )
    assert len((out / "sweep.jsonl").read_text().splitlines()) == 1  # nothing appended


@pytest.mark.parametrize(
    "metric,value,reason",
    [
        ("utility", 7.0, "(metrics: metric utility is 7.0, not a share in [0, 1])"),
        ("harmful_compliance", float("nan"), "metric harmful_compliance is nan"),
        ("t_answer_nll", -1.0, "a negative log-likelihood"),
    ],
)
def test_an_impossible_row_is_refused_not_selected(metric, value, reason, inputs, tmp_path):
    """main: a hand-edited row with NaN or utility 7.0 was selected for best.yml."""
    out = tmp_path / "out"
    rows = _interrupted(inputs, out)
    row = json.loads(rows[0])
    row["metrics"][metric] = value
    (out / "sweep.jsonl").write_text(json.dumps(row) + "\n" + rows[1] + "\n")
    result = sweep(inputs, out)
    result.assert_one_line_error("sweep.jsonl line 1 is not a sweep row", reason)


def test_a_row_whose_config_was_edited_is_refused(inputs, tmp_path):
    out = tmp_path / "out"
    rows = _interrupted(inputs, out)
    row = json.loads(rows[0])
    row["config"]["models"][0]["parameters"]["weight"] = 9.0  # would become best.yml
    (out / "sweep.jsonl").write_text(json.dumps(row) + "\n")
    result = sweep(inputs, out)
    result.assert_one_line_error("sweep.jsonl line 1 is not a sweep row (its config")


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


RANDOM_METHODS = {
    "dare_ties": {"density": 0.3, "weight": 1.0},
    "dare_linear": {"density": 0.3, "weight": 1.0},
    "della": {"density": 0.3, "weight": 1.0, "epsilon": 0.1},
    "della_linear": {"density": 0.3, "weight": 1.0, "epsilon": 0.1},
}


def test_every_method_the_sweep_accepts_gets_the_seed_in_its_config():
    """Whatever the method (mergekit's registry), a row's config carries the seed."""
    from mergekit.merge_methods import registry

    from mergekit_led.errors import SweepError
    from mergekit_led.sweep.grid import parse_grid
    from mergekit_led.sweep.sweeper import SweepOptions, row_config

    config = {
        "merge_method": "task_arithmetic",
        "base_model": "org/base",
        "models": [{"model": "org/a", "parameters": {"weight": 1.0}}],
    }
    accepted = 0
    for method in registry.registered_methods():
        try:
            (setting,) = parse_grid({method.spec.name: {}}, ["org/a"])
            written = row_config(config, setting, SweepOptions(seed=11))
        except SweepError:  # a method the sweep cannot run without more parameters
            continue
        accepted += 1
        assert written["random_seed"] == 11 and written["merge_method"] == method.spec.name
    assert accepted >= 5


@pytest.mark.parametrize("method", sorted(RANDOM_METHODS))
def test_a_random_methods_best_yml_carries_the_seed_and_reproduces_its_row(
    method, inputs, tmp_path
):
    """main: best.yml had no seed: two merges of it differed from each other and the row."""
    inputs["grid"].write_text(yaml.safe_dump({method: RANDOM_METHODS[method]}))
    out = tmp_path / "out"
    result = sweep(inputs, out, "--seed", "7")
    assert result.exit_code == 0, result.text
    row = json.loads((out / "sweep.jsonl").read_text())
    best = yaml.safe_load((out / "best.yml").read_text())
    assert best["random_seed"] == 7 and best == row["config"]
    merged = []
    for name in ("a", "b"):
        done = run_cli("merge", out / "best.yml", tmp_path / name)
        assert done.exit_code == 0, done.text
        merged.append(_weights(tmp_path / name))
    assert merged[0].keys() == merged[1].keys()
    assert all(torch.equal(merged[0][k], merged[1][k]) for k in merged[0])
    # the same merge under another seed differs: the seed is what decides it
    other = run_cli(
        "merge", out / "best.yml", tmp_path / "c", "--no-copy-tokenizer", "--random-seed", "8"
    )
    other.assert_one_line_error("--random-seed 8 differs from random_seed 7")
    evaluated = run_cli(
        "evaluate", tmp_path / "a", inputs["eval"], "--out", tmp_path / "ev", "--quiet"
    )
    assert evaluated.exit_code == 0, evaluated.text
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert again["harmful_compliance"] == row["metrics"]["harmful_compliance"]
    assert again["tasks"]["t"]["accuracy"] == row["metrics"]["t_accuracy"]
