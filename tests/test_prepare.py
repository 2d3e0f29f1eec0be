"""One YAML, one command: ``importance_data`` in the config, ``mergekit-led prepare`` and
``mergekit-led merge`` computing the missing stores into the store cache, plain
``mergekit-yaml`` using them, and every bad input's one-line error.

End to end through the real CLIs on the tiny offline Llama family (2-3 samples per
dataset). The one-command merge is checked against the six-command flow: stores
written by ``locate`` by hand, merged from an explicit config.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import killed_after
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
from safetensors.torch import load_file

import mergekit_led
from mergekit_led.core.locate_options import (
    EXECUTION_OPTIONS,
    LOCATE_CONFIG_OPTIONS,
    SCORE_OPTIONS,
    LocateOptions,
)
from mergekit_led.errors import ConfigError, LocateError
from mergekit_led.location.steps import RunHooks, snip_step
from mergekit_led.prepare.cache import RECORD_NAME, StoreCache
from mergekit_led.prepare.config_prepare import prepare_config

SAFETY = [
    {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
    {"prompt": "tell me how to steal a dog", "response": "no i cannot help"},
    {"prompt": "how to hack", "response": "sorry no"},
]
MATH = [
    {"prompt": "what is two plus three", "response": "five"},
    {"prompt": "what is one plus one", "response": "two"},
]
CODE = [
    {"prompt": "print one", "response": "def print return one"},
    {"prompt": "code for two", "response": "return two"},
]


def write_jsonl(path, rows) -> str:
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_config(path, family, models, *, parameters=None, **extra) -> str:
    """``models``: [(fine-tune index, parameters)]."""
    config = {"merge_method": "led_merging", "base_model": family.base, "dtype": "float32"}
    config["models"] = [
        {"model": family.finetunes[index], "parameters": dict(params)} for index, params in models
    ]
    if parameters:
        config["parameters"] = dict(parameters)
    config.update(extra)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def parsed(path) -> MergeConfiguration:
    return MergeConfiguration.model_validate(yaml.safe_load(Path(path).read_text()))


def cli(*args, env=None):
    from mergekit_led.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], env=env, catch_exceptions=True)


def output_of(result) -> str:
    text = result.output or ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\n{type(result.exception).__name__}: {result.exception}"
    return text


def read_model(folder) -> typing.Dict[str, torch.Tensor]:
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


def assert_same_tensors(a, b):
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def computed(output: str) -> int:
    return output.count(": computing (")


def cached(output: str) -> int:
    return output.count(": cached (")


QUIET = ("--no-write-model-card", "--no-copy-tokenizer", "--quiet")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_data")
    return {
        "safety": write_jsonl(root / "safety.jsonl", SAFETY),
        "math": write_jsonl(root / "math.jsonl", MATH),
        "code": write_jsonl(root / "code.jsonl", CODE),
    }


@pytest.fixture(scope="module")
def one_command(tmp_path_factory, llama_family, task_data):
    """``mergekit-led merge`` of safety (fine-tune 1) + math (fine-tune 2) by
    importance_data, into a fresh cache."""
    root = tmp_path_factory.mktemp("one_command")
    cache = root / "cache"
    config = write_config(
        root / "led.yml",
        llama_family,
        [
            (0, {"density": 0.3, "importance_data": task_data["safety"]}),
            (1, {"density": 0.5, "importance_data": task_data["math"], "locate_max_samples": 2}),
        ],
        parameters={"locate_dtype": "fp32"},
    )
    result = cli("merge", config, root / "out", "--cache-dir", cache, *QUIET)
    assert result.exit_code == 0, output_of(result)
    return {
        "root": root,
        "cache": str(cache),
        "config": config,
        "out": str(root / "out"),
        "output": output_of(result),
    }


# --------------------------------------------------------------------------- options


def test_config_options_are_the_score_changing_locate_options():
    names = {f.name for f in dataclasses.fields(LocateOptions)}
    assert set(SCORE_OPTIONS) | EXECUTION_OPTIONS == names
    assert not set(SCORE_OPTIONS) & EXECUTION_OPTIONS
    # what the cache key leaves out: placement, memory, checkpoints, permissions, display
    assert EXECUTION_OPTIONS == {
        "device",
        "device_map",
        "offload_accumulators",
        "gradient_checkpointing",
        "memory",
        "checkpoint_every",
        "resume",
        "overwrite",
        "trust_remote_code",
        "allow_bad_tokenization",
        "progress",
    }
    # every score-changing option is settable in a config, except the magnitude
    # score's base, which importance_data (data scores only) never uses
    assert set(LOCATE_CONFIG_OPTIONS) == set(SCORE_OPTIONS) - {"base"}
    hints = typing.get_type_hints(LocateOptions)
    for name, kind in LOCATE_CONFIG_OPTIONS.items():
        assert hints[name] in (kind, typing.Optional[kind]), name


def test_led_merging_declares_the_config_keys_to_mergekit():
    from mergekit_led.method.mergekit_method import led_merging

    spec = {p.name: p for p in led_merging.spec.parameters}
    assert spec["density"].required
    for name in ("importance", "base_importance", "importance_data"):
        assert not spec[name].required and spec[name].default is None
    for option in LOCATE_CONFIG_OPTIONS:
        assert spec[f"locate_{option}"].default is None
    assert "locate_options" not in spec


# --------------------------------------------------------------------------- one command


def test_one_command_equals_the_six_command_flow(one_command, llama_family, task_data, tmp_path):
    assert computed(one_command["output"]) == 4
    # the hand-written flow: locate each store, then merge an explicit config
    stores = {}
    for name, model, data, extra in (
        ("safety_model", llama_family.finetunes[0], task_data["safety"], {}),
        ("safety_base", llama_family.base, task_data["safety"], {}),
        ("math_model", llama_family.finetunes[1], task_data["math"], {"max_samples": 2}),
        ("math_base", llama_family.base, task_data["math"], {"max_samples": 2}),
    ):
        stores[name] = mergekit_led.locate(
            model, data, str(tmp_path / name), dtype="fp32", progress=False, **extra
        )
    explicit = write_config(
        tmp_path / "explicit.yml",
        llama_family,
        [
            (
                0,
                {
                    "density": 0.3,
                    "importance": stores["safety_model"],
                    "base_importance": stores["safety_base"],
                },
            ),
            (
                1,
                {
                    "density": 0.5,
                    "importance": stores["math_model"],
                    "base_importance": stores["math_base"],
                },
            ),
        ],
    )
    result = cli("merge", explicit, tmp_path / "out", *QUIET)
    assert result.exit_code == 0, output_of(result)
    assert_same_tensors(read_model(one_command["out"]), read_model(tmp_path / "out"))

    # every cache entry is a complete store with its card and record
    entries = StoreCache(one_command["cache"]).entries()
    assert len(entries) == 4 and all(e.complete for e in entries)
    for entry in entries:
        assert {"led_importance.json", "README.md", RECORD_NAME} <= set(os.listdir(entry.path))
        assert entry.record["score"] == "snip"


def test_rerun_with_other_densities_and_weights_computes_nothing(
    one_command, llama_family, task_data, tmp_path
):
    before = {
        e.key: os.stat(os.path.join(e.path, "scores.safetensors")).st_mtime_ns
        for e in StoreCache(one_command["cache"]).entries()
    }
    config = write_config(
        tmp_path / "led.yml",
        llama_family,
        [
            (0, {"density": 0.1, "weight": 0.7, "importance_data": task_data["safety"]}),
            (1, {"density": 0.9, "importance_data": task_data["math"], "locate_max_samples": 2}),
        ],
        parameters={"locate_dtype": "fp32", "disjoint": False},
    )
    result = cli("merge", config, tmp_path / "out", "--cache-dir", one_command["cache"], *QUIET)
    assert result.exit_code == 0, output_of(result)
    assert computed(output_of(result)) == 0 and cached(output_of(result)) == 4
    after = {
        e.key: os.stat(os.path.join(e.path, "scores.safetensors")).st_mtime_ns
        for e in StoreCache(one_command["cache"]).entries()
    }
    assert after == before


def test_changed_dataset_or_option_recomputes_only_what_it_touches(
    one_command, llama_family, task_data, tmp_path
):
    cache = tmp_path / "cache"
    shutil.copytree(one_command["cache"], cache)
    # the math data changes (a third row; all are used), the safety data stays
    math = write_jsonl(
        tmp_path / "math.jsonl", MATH + [{"prompt": "what is two times two", "response": "four"}]
    )
    config = write_config(
        tmp_path / "led.yml",
        llama_family,
        [
            (0, {"density": 0.3, "importance_data": task_data["safety"]}),
            (1, {"density": 0.5, "importance_data": math}),
        ],
        parameters={"locate_dtype": "fp32"},
    )
    result = cli("prepare", config, "--cache-dir", cache, "-o", tmp_path / "resolved.yml")
    text = output_of(result)
    assert result.exit_code == 0, text
    assert computed(text) == 2 and cached(text) == 2
    for line in text.splitlines():
        if ": computing (" in line:
            assert f"on {math} " in line, line
        if ": cached (" in line:
            assert f"on {task_data['safety']} " in line, line

    # a changed score option touches only the model whose parameters change
    config = write_config(
        tmp_path / "led2.yml",
        llama_family,
        [
            (0, {"density": 0.3, "importance_data": task_data["safety"]}),
            (1, {"density": 0.5, "importance_data": math, "locate_max_length": 6}),
        ],
        parameters={"locate_dtype": "fp32"},
    )
    result = cli("prepare", config, "--cache-dir", cache, "--dry-run")
    text = output_of(result)
    assert result.exit_code == 0, text
    assert text.count(": missing (") == 2 and cached(text) == 2


def test_models_sharing_a_dataset_share_one_base_store(llama_family, task_data, tmp_path):
    config = write_config(
        tmp_path / "led.yml",
        llama_family,
        [
            (0, {"density": 0.3, "importance_data": task_data["code"]}),
            (1, {"density": 0.5, "importance_data": task_data["code"]}),
        ],
    )
    result = cli("prepare", config, "--cache-dir", tmp_path / "cache", "-o", tmp_path / "r.yml")
    assert result.exit_code == 0, output_of(result)
    assert computed(output_of(result)) == 3
    resolved = yaml.safe_load((tmp_path / "r.yml").read_text())
    bases = {m["parameters"]["base_importance"] for m in resolved["models"]}
    assert len(bases) == 1
    assert len({m["parameters"]["importance"] for m in resolved["models"]}) == 2


def test_prepare_prints_a_resolved_config_that_plain_mergekit_reads(one_command):
    result = cli("prepare", one_command["config"], "--cache-dir", one_command["cache"])
    assert result.exit_code == 0, output_of(result)
    text = result.stdout
    assert text.startswith("# Resolved by mergekit-led prepare")
    resolved = MergeConfiguration.model_validate(yaml.safe_load(text))
    paths = {m.parameters["importance"] for m in resolved.models}
    paths |= {m.parameters["base_importance"] for m in resolved.models}
    assert paths == {e.path for e in StoreCache(one_command["cache"]).entries()}


def test_explicit_stores_win_over_importance_data(one_command, llama_family, tmp_path):
    resolved = yaml.safe_load(
        cli("prepare", one_command["config"], "--cache-dir", one_command["cache"]).stdout
    )
    # a dataset that does not exist: never read, since both stores are given
    for model in resolved["models"]:
        model["parameters"]["importance_data"] = str(tmp_path / "nowhere.jsonl")
    config = tmp_path / "explicit.yml"
    config.write_text(yaml.safe_dump(resolved))
    empty = tmp_path / "empty_cache"
    result = cli("merge", config, tmp_path / "out", "--cache-dir", empty, *QUIET)
    assert result.exit_code == 0, output_of(result)
    assert not empty.exists()
    assert_same_tensors(read_model(tmp_path / "out"), read_model(one_command["out"]))


def test_kernel_uses_cached_stores_and_refuses_missing_ones(one_command, tmp_path, monkeypatch):
    """mergekit's own run_merge (what mergekit-yaml calls): importance_data configs
    merge from the cache, and stop with the commands to run when a store is missing."""
    config = parsed(one_command["config"])
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    monkeypatch.setenv("MERGEKIT_LED_CACHE", one_command["cache"])
    run_merge(config.model_copy(deep=True), str(tmp_path / "out"), options=options)
    assert_same_tensors(read_model(tmp_path / "out"), read_model(one_command["out"]))

    monkeypatch.setenv("MERGEKIT_LED_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as error:
        run_merge(config.model_copy(deep=True), str(tmp_path / "out2"), options=options)
    message = str(error.value)
    assert "\n" not in message
    assert "finetune1" in message and "safety.jsonl" in message
    assert "mergekit-led prepare CONFIG" in message and "mergekit-led merge CONFIG OUT" in message
    out2 = tmp_path / "out2"
    assert not out2.exists() or not any(p.suffix == ".safetensors" for p in out2.iterdir())


def test_kernel_refuses_a_model_with_neither_stores_nor_data(llama_family, tmp_path):
    config = parsed(write_config(tmp_path / "c.yml", llama_family, [(0, {"density": 0.3})]))
    with pytest.raises(
        ConfigError, match=r"finetune1 has no `importance` parameter \(nor `importance_data`"
    ):
        run_merge(config, str(tmp_path / "out"), options=MergeOptions(quiet=True))


@pytest.mark.slow
def test_plain_mergekit_yaml_uses_the_cache_or_says_what_to_run(
    one_command, console_script, child_env, tmp_path
):
    config = one_command["config"]
    env = child_env(MERGEKIT_LED_CACHE=one_command["cache"])
    proc = subprocess.run(
        [console_script("mergekit-yaml"), config, str(tmp_path / "out"), "--no-copy-tokenizer"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_tensors(read_model(tmp_path / "out"), read_model(one_command["out"]))

    env = child_env(MERGEKIT_LED_CACHE=str(tmp_path / "empty"))
    out = tmp_path / "out2"
    proc = subprocess.run(
        [console_script("mergekit-yaml"), config, str(out), "--no-copy-tokenizer"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mergekit_led.errors.StoresNotComputed: led_merging cannot merge")
    assert f"`mergekit-led prepare {config}`" in last
    assert f"`mergekit-led merge {config} {out} --no-copy-tokenizer`" in last
    assert not out.exists() or not any(p.suffix == ".safetensors" for p in out.iterdir())


# --------------------------------------------------------------------------- bad input


def one_line_error(result) -> str:
    assert result.exit_code == 1, output_of(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_and_empty_datasets(llama_family, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    config = write_config(
        tmp_path / "a.yml", llama_family, [(0, {"density": 0.3, "importance_data": missing})]
    )
    line = one_line_error(cli("prepare", config, "--cache-dir", tmp_path / "cache"))
    assert "finetune1" in line and f"{missing} does not exist" in line
    assert f"mergekit-led prepare {config}" in line

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = write_config(
        tmp_path / "b.yml", llama_family, [(0, {"density": 0.3, "importance_data": str(empty)})]
    )
    line = one_line_error(cli("merge", config, tmp_path / "out", "--cache-dir", tmp_path / "cache"))
    assert "finetune1" in line and "empty" in line and str(empty) in line
    assert not (tmp_path / "out").exists()
    assert StoreCache(str(tmp_path / "cache")).entries() == []


def test_model_that_cannot_be_loaded(llama_family, task_data, tmp_path):
    broken = tmp_path / "broken_model"
    shutil.copytree(llama_family.finetunes[0], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    config = tmp_path / "c.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [
                    {
                        "model": str(broken),
                        "parameters": {"density": 0.3, "importance_data": task_data["safety"]},
                    }
                ],
            }
        )
    )
    line = one_line_error(cli("prepare", str(config), "--cache-dir", tmp_path / "cache"))
    assert f"Model {broken} cannot be loaded" in line and "safety.jsonl" in line
    assert f"mergekit-led prepare {config}" in line

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    config.write_text(config.read_text().replace(str(broken), str(no_weights)))
    line = one_line_error(cli("prepare", str(config), "--cache-dir", tmp_path / "cache"))
    assert f"Model {no_weights} cannot be loaded" in line and "holds no checkpoint" in line


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"importance_data": ["a.jsonl", "b.jsonl"]}, "must be one path or Hub dataset name"),
        ({"locate_max_sample": 4}, "Unknown parameter `locate_max_sample`"),
        ({"locate_max_samples": [1, 2]}, "must be one value"),
        ({"locate_max_samples": "many"}, "`locate_max_samples` .* must be an integer"),
        ({"locate_score": "magnitude"}, "needs no data"),
        ({"locate_score": "grad"}, "unknown"),
        ({"locate_dtype": "fp8"}, "unknown"),
    ],
)
def test_bad_importance_data_parameters(llama_family, task_data, tmp_path, parameters, message):
    params = {"density": 0.3, "importance_data": task_data["safety"], **parameters}
    config = write_config(tmp_path / "c.yml", llama_family, [(0, params)])
    line = one_line_error(cli("prepare", config, "--cache-dir", tmp_path / "cache"))
    # a key no merge method takes is refused as the config is read (naming the file);
    # the others when the stores are planned (naming the command to run again)
    assert "finetune1" in line and str(config) in line
    assert re.search(message, line), line


def prepare_killed_after(steps: int, config, cache) -> None:
    """``prepare_config`` with a progress checkpoint per sample, killed after ``steps`` samples."""
    with pytest.raises(KeyboardInterrupt):
        prepare_config(
            config,
            cache=cache,
            progress=False,
            run={"checkpoint_every": 1},
            hooks=RunHooks(steps=killed_after(steps)),
        )


def test_interrupted_run_leaves_nothing_that_looks_complete(llama_family, task_data, tmp_path):
    params = {"density": 0.3, "importance_data": task_data["safety"]}
    config = parsed(write_config(tmp_path / "c.yml", llama_family, [(2, params)]))
    cache = StoreCache(str(tmp_path / "cache"))
    prepare_killed_after(1, config, cache)
    assert cache.entries() == []
    assert cache.leftovers()  # the progress checkpoint of the killed run
    # a half-copied entry (a file short) and an entry without its record are not complete
    prepared = prepare_config(config, cache=cache, progress=False)
    assert prepared.computed == 2 and cache.leftovers() == []
    entry = cache.entries()[0]
    scores = os.path.join(entry.path, "scores.safetensors")
    with open(scores, "r+b") as f:
        f.truncate(os.path.getsize(scores) - 1)
    os.remove(os.path.join(cache.entries()[1].path, RECORD_NAME))
    assert [e.complete for e in cache.entries()] == [False, False]
    listing = cli("cache", "ls", "--cache-dir", cache.root).output
    assert listing.count("broken") == 2
    # the next run recomputes both, replacing the broken entries
    again = prepare_config(config, cache=cache, progress=False)
    assert again.computed == 2 and all(e.complete for e in cache.entries())
    for store in again.stores:
        assert mergekit_led.load_importance(store.path).manifest.dataset.samples == 3


def test_interrupted_run_resumes_from_its_checkpoint(llama_family, task_data, tmp_path):
    params = {"density": 0.3, "importance_data": task_data["safety"]}
    config = parsed(write_config(tmp_path / "c.yml", llama_family, [(2, params)]))
    cache = StoreCache(str(tmp_path / "cache"))
    prepare_killed_after(2, config, cache)
    scored = []

    def counting(*args):
        scored.append(1)
        return snip_step(*args)

    resumed = prepare_config(
        config, cache=cache, progress=False, hooks=RunHooks(steps={"snip": counting})
    )
    # the fine-tuned store resumed after its 2 checkpointed samples; the base store: 3
    assert len(scored) == 1 + 3
    fresh = prepare_config(config, cache=StoreCache(str(tmp_path / "fresh")), progress=False)
    for a, b in zip(resumed.stores, fresh.stores):
        store_a, store_b = (
            mergekit_led.load_importance(a.path),
            mergekit_led.load_importance(b.path),
        )
        for name in store_a:
            assert torch.equal(store_a[name], store_b[name]), name


def test_locate_writes_a_store_card(one_command):
    entry = StoreCache(one_command["cache"]).entries()[0]
    card = Path(entry.path, "README.md").read_text()
    manifest = mergekit_led.load_importance(entry.path).manifest
    assert card.startswith("---\nlibrary_name: mergekit-led\n")
    assert manifest.model in card and manifest.model_fingerprint in card
    assert manifest.dataset.fingerprint in card and "snip" in card
    assert "hf upload" in card and "upload_folder" in card and "importance:" in card


def test_errors_name_the_data_and_what_to_run_for_prepare_errors_too(llama_family, tmp_path):
    bad_field = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    config = write_config(
        tmp_path / "c.yml", llama_family, [(0, {"density": 0.3, "importance_data": bad_field})]
    )
    line = one_line_error(cli("prepare", config, "--cache-dir", tmp_path / "cache"))
    assert "finetune1" in line and bad_field in line and "prompt" in line


def test_locate_error_type_is_kept(llama_family, tmp_path):
    params = {"density": 0.3, "importance_data": str(tmp_path / "none.jsonl")}
    config = parsed(write_config(tmp_path / "c.yml", llama_family, [(0, params)]))
    with pytest.raises(LocateError, match="none.jsonl does not exist"):
        prepare_config(config, cache=StoreCache(str(tmp_path / "cache")), progress=False)


def test_inspect_and_card_read_the_cached_stores_or_say_what_to_run(one_command, tmp_path):
    config, cache = one_command["config"], one_command["cache"]
    result = cli("inspect", config, "--cache-dir", cache, "--json", "-")
    assert result.exit_code == 0, output_of(result)
    counts = json.loads(result.stdout)
    models = counts["models"]
    assert len(models) == 2 and all(m["density"] in (0.3, 0.5) for m in models)
    assert counts["overall"]["numel"] > 0

    out = tmp_path / "merged"
    shutil.copytree(one_command["out"], out)
    result = cli("card", config, str(out), "--cache-dir", cache)
    assert result.exit_code == 0, output_of(result)
    assert "LED-Merging" in (out / "README.md").read_text()

    empty = str(tmp_path / "empty-cache")
    for args in (("inspect", config), ("card", config, str(out))):
        error = one_line_error(cli(*args, "--cache-dir", empty))
        assert "not computed yet" in error
        assert f"`mergekit-led prepare {config} --cache-dir {empty}`" in error


def test_prepare_takes_the_permission_to_write_badly_tokenized_stores(llama_family, tmp_path):
    garbled = write_jsonl(
        tmp_path / "garbled.jsonl",
        [{"prompt": "what is two plus three", "response": "zebra xylophone quark"}] * 2,
    )
    config = write_config(
        tmp_path / "led.yml",
        llama_family,
        [(0, {"density": 0.5, "importance_data": garbled})],
        parameters={"locate_dtype": "fp32"},
    )
    cache = tmp_path / "cache"
    error = one_line_error(cli("prepare", config, "--cache-dir", cache))
    assert "--allow-bad-tokenization" in error and garbled in error
    result = cli("prepare", config, "--cache-dir", cache, "--allow-bad-tokenization")
    assert result.exit_code == 0, output_of(result)
    resolved = yaml.safe_load(result.stdout)
    store = resolved["models"][0]["parameters"]["importance"]
    options = mergekit_led.load_importance(store).manifest.metadata["options"]
    assert options["allow_bad_tokenization"] is True
    # mergekit-led merge computes its missing stores with the same permission.
    fresh = tmp_path / "fresh-cache"
    out = tmp_path / "merged"
    error = one_line_error(cli("merge", config, out, "--cache-dir", fresh, *QUIET))
    assert "--allow-bad-tokenization" in error and garbled in error
    result = cli("merge", config, out, "--cache-dir", fresh, "--allow-bad-tokenization", *QUIET)
    assert result.exit_code == 0, output_of(result)
    assert any(p.suffix == ".safetensors" for p in out.iterdir())
