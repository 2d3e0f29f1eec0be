"""Configs attacked through their YAML and their keys (issue #18, items 6, 7 and 9).

A YAML alias bomb is refused before mergekit's schema walks it; keys no merge
method takes are refused (with a suggestion), the parameters of mergekit's other
methods stay accepted; a bool is not a count; the same model twice is refused
before any store is computed.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from helpers import alias_bomb as bomb

from .support import hidden_leftovers, run_cli


def led_config(family, tasks, *, model_parameters=None, shared=None) -> dict:
    parameters = {
        "density": 0.3,
        "importance": tasks[0].model_store,
        "base_importance": tasks[0].base_store,
        **(model_parameters or {}),
    }
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [{"model": family.finetunes[0], "parameters": parameters}],
    }
    if shared:
        config["parameters"] = shared
    return config


@pytest.mark.parametrize("where", ["parameters", "density", "importance_data", "locate_seed"])
@pytest.mark.parametrize("command", ["merge", "inspect", "prepare", "card"])
def test_alias_bomb_is_refused_at_once(command, where, tmp_path, llama_family, task_stores):
    """main: merge, inspect, prepare and card ran for minutes in mergekit's schema
    validation."""
    text = yaml.safe_dump(led_config(llama_family, task_stores), sort_keys=False)
    laughs = bomb()
    value = f"*a{laughs.count(chr(10))}"
    if where == "parameters":
        text += f"parameters:\n  laughs: {value}\n"
    else:
        text = text.replace("    density: 0.3\n", f"    {where}: {value}\n    density: 0.3\n")
        if where == "density":
            text = text.replace("    density: 0.3\n", "", 1)
    config = tmp_path / "bomb.yml"
    config.write_text(laughs + "\n" + text)
    args = {
        "merge": ("merge", config, tmp_path / "out"),
        "inspect": ("inspect", config),
        "prepare": ("prepare", config, "--cache-dir", tmp_path / "cache"),
        "card": ("card", config, tmp_path / "out"),
    }[command]
    started = time.monotonic()
    result = run_cli(*args)
    result.assert_one_line_error(str(config), "aliases")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_moderate_aliases_still_load(tmp_path, llama_family, task_stores):
    """Anchors for shared parameters, the way people use them, are fine."""
    text = yaml.safe_dump(led_config(llama_family, task_stores), sort_keys=False)
    text = text.replace("    density: 0.3\n", "    density: &d 0.3\n")
    text += "parameters: &shared {election: both}\n"
    config = tmp_path / "c.yml"
    config.write_text(text)
    from mergekit_led.config.yaml_file import load_yaml_bounded

    assert load_yaml_bounded(text, what="c")["parameters"] == {"election": "both"}
    assert run_cli("inspect", config).exit_code == 0


@pytest.mark.parametrize(
    "scope,key,value,suggestion",
    [
        ("shared", "disjont", False, "disjoint"),
        ("shared", "elction", "model_only", "election"),
        ("model", "weigth", 0.2, "weight"),
        ("model", "densty", 0.5, "density"),
    ],
)
def test_misspelt_keys_are_refused(
    scope, key, value, suggestion, tmp_path, llama_family, task_stores
):
    """main: merged with exit 0, bit-identical to the merge without them."""
    where = {"shared": {"shared": {key: value}}, "model": {"model_parameters": {key: value}}}
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(led_config(llama_family, task_stores, **where[scope])))
    for args in (("merge", config, tmp_path / "out"), ("inspect", config)):
        result = run_cli(*args)
        result.assert_one_line_error(f"Unknown parameter `{key}`", f"Did you mean `{suggestion}`")
    assert not (tmp_path / "out").exists() and hidden_leftovers(tmp_path, "out") == []


def test_parameters_of_mergekits_other_methods_stay_accepted(
    tmp_path, llama_family, task_stores, caplog
):
    """A config switched from ties keeps its `normalize`/`int8_mask`: accepted, with a
    warning that led_merging ignores them."""
    config = tmp_path / "c.yml"
    shared = {"normalize": True, "int8_mask": True}
    config.write_text(
        yaml.safe_dump(
            led_config(llama_family, task_stores, shared=shared, model_parameters={"epsilon": 0.1})
        )
    )
    result = run_cli("inspect", config)
    assert result.exit_code == 0, result.text
    assert "led_merging ignores it" in caplog.text and "`normalize`" in caplog.text


def test_every_registered_method_parameter_is_known():
    from mergekit.merge_methods.registry import registered_methods

    from mergekit_led.config.name_checks import method_parameters

    ours, everyone = method_parameters()
    assert {"density", "weight", "election", "disjoint", "importance_data"} <= ours
    for method in registered_methods():
        assert {p.name for p in method.spec.parameters} <= everyone


@pytest.mark.parametrize("key", ["locate_max_samples", "locate_seed", "locate_max_length"])
def test_a_bool_is_not_a_count(key, tmp_path, llama_family):
    """main: `locate_max_samples: true` was taken as 1."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    config = tmp_path / "c.yml"
    model = {"density": 0.3, "importance_data": str(data), key: True}
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [{"model": llama_family.finetunes[0], "parameters": model}],
            }
        )
    )
    result = run_cli("prepare", config, "--cache-dir", tmp_path / "cache")
    result.assert_one_line_error(f"`{key}`", "must be an integer", "True")
    assert not (tmp_path / "cache" / "stores").exists()


def test_the_same_model_twice_is_refused_before_any_store(tmp_path, llama_family):
    """main: both stores were computed, then mergekit's 'Duplicate merge inputs' traceback."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    entry = {
        "model": llama_family.finetunes[0],
        "parameters": {"density": 0.3, "importance_data": str(data)},
    }
    config = tmp_path / "c.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [entry, entry],
            }
        )
    )
    cache = tmp_path / "cache"
    for args in (("merge", config, tmp_path / "out", "--cache-dir", cache), ("prepare", config)):
        result = run_cli(*args, *(() if args[0] == "merge" else ("--cache-dir", cache)))
        result.assert_one_line_error(llama_family.finetunes[0], "listed twice")
    assert not cache.exists() and not (tmp_path / "out").exists()
