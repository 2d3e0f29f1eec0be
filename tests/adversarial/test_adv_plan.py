"""Issue 29: hostile inputs to ``locate --plan``: a config.json of 300,000
layers and a 400-digit ``--memory``, refused in one line before any work."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from .support import run_cli


@pytest.mark.parametrize("key,value", [("num_hidden_layers", 300_000), ("num_hidden_layers", 1025)])
def test_a_config_of_300000_layers_is_refused_before_building(key, value, tmp_path, llama_family):
    """main: 2 GB and a minute building the model on the meta device, then killed."""
    model = tmp_path / "model"
    shutil.copytree(llama_family.base, model)
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    result = run_cli("locate", "--model", model, "--plan")
    result.assert_one_line_error(
        f"Cannot plan the memory of {model}", f"{key} {value:,}", "refused before building it"
    )
    assert time.perf_counter() - start < 20


def test_a_mixture_of_a_million_experts_is_refused(tmp_path):
    from transformers import MixtralConfig

    from mergekit_led.errors import MemoryPlanError
    from mergekit_led.location.memory_shape import shape_from_config

    config = MixtralConfig(
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_local_experts=1_000_000,
        vocab_size=16,
    )
    with pytest.raises(MemoryPlanError, match="num_local_experts 1,000,000"):
        shape_from_config(config, "moe")


@pytest.mark.parametrize("size", ["9" * 400, "9" * 400 + "GB", "9" * 300 + ".5", "2000000000TB"])
def test_a_memory_size_too_large_is_a_one_line_error(size, llama_family):
    """main: `--memory` of 400 digits was an OverflowError traceback."""
    result = run_cli("locate", "--model", llama_family.base, "--plan", "--memory", size)
    result.assert_one_line_error("--memory", "more than any machine has")
    assert "OverflowError" not in result.text
