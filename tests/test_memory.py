"""The locate memory plan: its arithmetic, reading configs, the pre-run check,
``locate --plan`` and ``prepare --plan``, and the plan against measured peaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import mergekit_led
from mergekit_led.errors import MemoryPlanError
from mergekit_led.location import memory
from mergekit_led.location.memory import Setup, judge, model_shape, plan_memory
from mergekit_led.location.memory_budget import GIB, Budget, parse_memory
from mergekit_led.location.memory_shape import ModelShape
from mergekit_led.location.steps import RunHooks
from mergekit_led.testing import build_family

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    {"prompt": "what is two plus three", "response": "five"},
    {"prompt": "tell me about the moon", "response": "the moon is a friend of the sun"},
]

# Llama-3-8B's shape (hidden 4096, 32 layers, MLP 14336, 32 heads, 8 kv heads, vocab 128256).
LLAMA3_8B = ModelShape(
    model="llama3-8b",
    architecture="LlamaForCausalLM",
    parameters=8_030_261_248,
    largest=128256 * 4096,
    tied_head=False,
    vocab=128256,
    hidden=4096,
    layers=32,
    intermediate=14336,
    heads=32,
    kv_width=8 * 128,
    dtype="bfloat16",
    max_positions=8192,
)


def cli(*args):
    from mergekit_led.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_family(str(tmp_path_factory.mktemp("memory_family")), finetunes=1)


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return str(path)


# --------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    "text, expected",
    [("24GB", 24 * 10**9), ("24 GiB", 24 * 2**30), ("800MB", 800 * 10**6), ("1.5g", 1.5e9)],
)
def test_memory_sizes(text, expected):
    assert parse_memory(text) == int(expected)


@pytest.mark.parametrize("text", ["", "lots", "24 parsecs", "-3GB", "0GB"])
def test_bad_memory_sizes_are_one_line_errors(text):
    with pytest.raises(MemoryPlanError, match="--memory"):
        parse_memory(text)


def test_plan_parts_follow_the_documented_formula():
    setup = Setup(dtype="bfloat16", tokens=1024, answer_tokens=256, device_type="cuda")
    plan = plan_memory(LLAMA3_8B, setup, base_overhead=0)
    P, b, T, A = LLAMA3_8B.parameters, 2, 1024, 256
    h, i, kv, a, n, V = 4096, 14336, 1024, 32, 32, 128256
    assert plan.part("weights") == P * b
    assert plan.part("accumulators (float32)") == 4 * P
    layers = n * T * (h * (8 + 7 * b) + 2 * kv * b + 4 * i * b + 4 * a)
    head = T * h * (4 + 2 * b) + A * V * (2 * b + 12)
    assert plan.part("activations: layers") == layers
    assert plan.part("activations: final norm and answer logits") == head
    # the untied head's gradient widened beside the activations, or the
    # embedding's at the end of the backward pass (10 bytes per element) without them
    assert plan.part("gradients") == max(V * h * (b + 4), V * h * 10 - layers - head)
    assert plan.device_total == sum(p.bytes for p in plan.parts)


def test_flags_lower_the_plan_where_they_act():
    base = Setup(dtype="bfloat16", tokens=1024, answer_tokens=256, device_type="cuda")
    plain = plan_memory(LLAMA3_8B, base)
    offloaded = plan_memory(LLAMA3_8B, replace(base, offload_accumulators=True))
    checkpointed = plan_memory(LLAMA3_8B, replace(base, gradient_checkpointing=True))
    assert plain.device_total - offloaded.device_total > 0.95 * 4 * LLAMA3_8B.parameters
    assert offloaded.host_total == 4 * LLAMA3_8B.parameters
    assert checkpointed.device_total < plain.device_total
    # on the CPU the accumulators stay in the same memory
    cpu = replace(base, device_type="cpu")
    assert (
        plan_memory(LLAMA3_8B, cpu).device_total
        == plan_memory(LLAMA3_8B, replace(cpu, offload_accumulators=True)).device_total
    )


def test_judge_names_the_cheapest_flags_that_fit_or_why_nothing_does():
    setup = Setup(dtype="bfloat16", tokens=1024, answer_tokens=256, device_type="cuda")
    budget = Budget(80 * 10**9, "--memory 80GB", "cuda", "cuda")
    verdict = judge(LLAMA3_8B, setup, budget)
    assert verdict.fits  # 16 GB weights + 32 GB accumulators + activations on an 80 GB card
    small = Budget(24 * 10**9, "--memory 24GB", "cuda", "cuda")
    verdict = judge(LLAMA3_8B, setup, small)
    assert not verdict.fits and verdict.fitting is not None
    assert "--offload-accumulators" in verdict.fitting.setup.flags()
    tiny = Budget(10 * 10**9, "--memory 10GB", "cuda", "cuda")
    verdict = judge(LLAMA3_8B, setup, tiny)
    assert verdict.fitting is None and "--device-map auto" in verdict.reason
    assert "\n" not in memory.refusal(verdict)


# --------------------------------------------------------------------------- reading


def test_shape_from_a_local_config_counts_every_parameter_once(tmp_path):
    from safetensors import safe_open

    tied = build_family(str(tmp_path), finetunes=0, tie_embeddings=True)
    shape = model_shape(tied.base)
    with safe_open(os.path.join(tied.base, "model.safetensors"), "pt") as f:
        stored = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    assert shape.parameters == stored
    assert shape.tied_head and shape.vocab == 96 and shape.layers == 2


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def test_unreadable_config_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MemoryPlanError, match="config cannot be read"):
        model_shape(str(tmp_path))
    result = cli("locate", "--model", tmp_path, "--plan")
    assert result.exit_code == 1
    assert (
        result.output.startswith("Error: Cannot plan the memory of")
        and result.output.count("\n") == 1
    )


# --------------------------------------------------------------------------- commands


def _no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded although its plan does not fit")


def test_a_run_that_cannot_fit_stops_before_loading(tmp_path, family, pairs):
    with pytest.raises(MemoryPlanError, match="needs about .* but the budget is"):
        mergekit_led.locate(
            family.base,
            pairs,
            str(tmp_path / "store"),
            memory="1MB",
            progress=False,
            hooks=RunHooks(load_model=_no_loading),
        )
    assert not (tmp_path / "store").exists()
    result = cli(
        "locate",
        "--model",
        family.base,
        "--data",
        pairs,
        "--out",
        tmp_path / "s",
        "--memory",
        "1MB",
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: Locate of ") and result.output.count("\n") == 1
    assert "--memory 1MB" in result.output


def test_bad_memory_option_is_refused_before_anything_runs(tmp_path, family, pairs):
    result = cli(
        "locate",
        "--model",
        family.base,
        "--data",
        pairs,
        "--out",
        tmp_path / "s",
        "--memory",
        "big",
    )
    assert result.exit_code == 1
    assert result.output == (
        "Error: --memory 'big' is not a memory size; write e.g. 24GB, 24GiB or 800MB.\n"
    )


def test_a_run_that_fits_is_unchanged(tmp_path, family, pairs):
    out = mergekit_led.locate(
        family.base, pairs, str(tmp_path / "store"), memory="64GB", progress=False
    )
    assert mergekit_led.load_importance(out).manifest.metadata["options"]["memory"] == "64GB"


def test_locate_plan_prints_the_plan_and_writes_nothing(tmp_path, family, pairs):
    result = cli("locate", "--model", family.base, "--data", pairs, "--plan", "--memory", "24GB")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"memory plan for {family.base}")
    # the longest sample and answer of the data, with BOS and EOS
    assert "15 tokens per sample (9 answer tokens)" in lines[0]
    for part in ("weights", "gradients", "accumulators (float32)", "overhead", "total on the"):
        assert any(line.strip().startswith(part) for line in lines), part
    assert "fits." in lines  # then a time per sample where this machine's rate was measured
    assert not list(tmp_path.iterdir()) or [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
    # without data: samples of --max-length tokens, all answer
    result = cli(
        "locate", "--model", family.base, "--plan", "--max-length", "64", "--memory", "1MB"
    )
    assert result.exit_code == 0, result.output
    assert "64 tokens per sample (64 answer tokens)" in result.output
    assert "does not fit, with any flags" in result.output
    # a GPU's plan on a machine without one, from its memory
    result = cli(
        "locate",
        "--model",
        family.base,
        "--plan",
        "--max-length",
        "64",
        "--device",
        "cuda",
        "--memory",
        "80GB",
    )
    assert result.exit_code == 0, result.output
    assert "on cuda" in result.output and "CUDA context" in result.output


def test_locate_needs_out_unless_planning(family, pairs):
    result = cli("locate", "--model", family.base, "--data", pairs)
    assert result.exit_code == 2 and "--out" in result.output


def test_prepare_plan_covers_every_store_and_computes_nothing(tmp_path, family, pairs):
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [
            {"model": family.finetunes[0], "parameters": {"density": 0.5, "importance_data": pairs}}
        ],
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    cache = tmp_path / "cache"
    result = cli("prepare", path, "--cache-dir", cache, "--plan", "--memory", "8GB")
    assert result.exit_code == 0, result.output
    assert result.output.count("memory plan for") == 2  # the fine-tune's store and the base's
    assert result.output.count(": to compute") == 2
    assert "2 of 2 stores to compute" in result.output
    assert not (cache / "stores").exists() or not list((cache / "stores").iterdir())


# --------------------------------------------------------------------------- against measurements

MEASURE = """
import json, resource, sys
import mergekit_led
model, data, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
mergekit_led.locate(model, data, out, overwrite=True, progress=False, device="cpu", **options)
print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def _measured_peak(model, data, out, options) -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, model, data, str(out), json.dumps(options)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["maxrss"]


@pytest.mark.slow
def test_plan_is_within_15_percent_of_the_measured_peak(tmp_path):
    """Peak RSS of locate in a child process against the plan, on a 0.1M-parameter
    model (which measures the overhead term on this machine, as the plan's CPU
    overhead was measured) and on a 74M-parameter Llama in float32 and bfloat16,
    with and without offloading and gradient checkpointing."""
    words = "the a an is are what how why who where when sun moon water fire tree book".split()
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": " ".join(words[(j + k) % 16] for k in range(90)),
                    "response": " ".join(words[(j * 3 + k) % 16] for k in range(30)),
                }
            )
            + "\n"
            for j in range(3)
        )
    )
    tiny = build_family(str(tmp_path / "tiny"), finetunes=0)
    overhead = _measured_peak(tiny.base, str(data), tmp_path / "tiny-store", {})
    import torch

    failures = []
    for dtype in ("float32", "bfloat16"):
        model = build_family(
            str(tmp_path / dtype),
            finetunes=0,
            dtype=getattr(torch, dtype),
            hidden=768,
            layers=4,
            heads=12,
            kv_heads=4,
            intermediate=2048,
            vocab=32000,
        ).base
        shape = model_shape(model)
        flag_sets = [{}, {"offload_accumulators": True}, {"gradient_checkpointing": True}]
        if dtype == "float32":
            flag_sets.append({"offload_accumulators": True, "gradient_checkpointing": True})
        for flags in flag_sets:
            measured = _measured_peak(model, str(data), tmp_path / "store", flags)
            # 1 BOS + 90 prompt words + 30 answer words + EOS
            setup = Setup(dtype=dtype, tokens=122, answer_tokens=31, device_type="cpu", **flags)
            planned = plan_memory(shape, setup, base_overhead=overhead).device_total
            ratio = planned / measured
            if not 0.85 <= ratio <= 1.15:
                failures.append(
                    f"{dtype} {flags}: plan {planned / GIB:.3f} GiB, "
                    f"measured {measured / GIB:.3f} GiB ({ratio:.3f})"
                )
    assert not failures, failures


def test_time_estimates_only_where_a_rate_was_measured(monkeypatch):
    from mergekit_led.location import rates

    setup = Setup(dtype="bfloat16", tokens=1000, answer_tokens=100, device_type="cuda")
    budget = Budget(80 * GIB, "--memory 80GiB", "cuda", "cuda")
    verdict = judge(LLAMA3_8B, setup, budget)
    assert rates.estimate_seconds_per_sample(verdict, device="a GPU never measured") is None
    rate = rates.MeasuredRate(LLAMA3_8B.parameters * 1000 / 2.0, 1.5, 4.0, "a test")
    monkeypatch.setitem(rates.MEASURED, ("a measured GPU", "bfloat16"), rate)
    assert rates.estimate_seconds_per_sample(verdict, device="a measured GPU") == 2.0
    checkpointed = judge(LLAMA3_8B, replace(setup, gradient_checkpointing=True), budget)
    assert rates.estimate_seconds_per_sample(checkpointed, device="a measured GPU") == 3.0
    lines = memory.render(verdict, seconds_per_sample=2.0)
    assert lines[-1].startswith("time: 2.00 s per sample")
