"""Importance stores and models on the Hugging Face Hub, for real and offline: a
Hub cache laid out as ``huggingface_hub`` writes it (``models--org--repo/snapshots/
<commit>/...`` and ``refs/``), read by the real CLIs in fresh processes with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import mergekit_led
from mergekit_led.prepare.cache import StoreCache
from mergekit_led.store.hub import HubReference, parse_hub_reference
from mergekit_led.store.store_card import hub_model_id

STORES_COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
SAFETY = [
    {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
    {"prompt": "how to hack", "response": "sorry no"},
]


def hub_repo(cache: Path, repo_id: str, commit: str, refs=("main",)) -> Path:
    """An empty snapshot of ``repo_id`` in a Hub cache folder, named by ``refs``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory, llama_family):
    """A Hub cache holding ``led-test/led-stores`` (safety stores of fine-tune 1,
    fine-tune 2 and the base, in folders) and the model ``led-test/finetune1``."""
    root = tmp_path_factory.mktemp("hub")
    data = root / "safety.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in SAFETY))
    local = {}
    for name, model in (
        ("finetune1", llama_family.finetunes[0]),
        ("finetune2", llama_family.finetunes[1]),
        ("base", llama_family.base),
    ):
        local[name] = mergekit_led.locate(
            model, str(data), str(root / "local" / name), progress=False
        )
    cache = root / "hub_cache"
    stores = hub_repo(cache, "led-test/led-stores", STORES_COMMIT, refs=("main", "v1"))
    for name, path in local.items():
        shutil.copytree(path, stores / "safety" / name)
    model = hub_repo(cache, "led-test/finetune1", MODEL_COMMIT)
    for item in os.listdir(llama_family.finetunes[0]):
        shutil.copy(os.path.join(llama_family.finetunes[0], item), model / item)
    return {"root": root, "cache": str(cache), "data": str(data), "local": local}


def write_config(path: Path, family, importance: str, base_importance: str) -> str:
    path.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": family.base,
                "dtype": "float32",
                "models": [
                    {
                        "model": family.finetunes[0],
                        "parameters": {
                            "density": 0.3,
                            "importance": importance,
                            "base_importance": base_importance,
                        },
                    }
                ],
            }
        )
    )
    return str(path)


def run(console_script, child_env, hub, *args, cache_dir=None):
    env = child_env(
        HF_HUB_CACHE=hub["cache"],
        HF_HUB_OFFLINE="1",
        MERGEKIT_LED_CACHE=cache_dir or str(hub["root"] / "led_cache"),
    )
    return subprocess.run(
        [console_script(args[0]), *map(str, args[1:])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def read_model(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_store_references_follow_mergekit_model_references():
    assert parse_hub_reference("org/repo") == HubReference("org/repo")
    assert parse_hub_reference("org/repo@v1") == HubReference("org/repo", None, "v1")
    assert parse_hub_reference("org/repo/safety/base@main") == HubReference(
        "org/repo", "safety/base", "main"
    )
    for local in (
        "/abs/store",
        "./store",
        "~/store",
        "store",
        "a/../b",
        "org/repo@a@b",
        "org/repo@",
    ):
        assert parse_hub_reference(local) is None, local
    assert (
        hub_model_id(f"/x/models--org--repo/snapshots/{STORES_COMMIT}")
        == f"org/repo@{STORES_COMMIT}"
    )
    assert hub_model_id("org/repo") == "org/repo"
    assert hub_model_id("/a/local/checkpoint") is None


@pytest.mark.slow
def test_merge_with_hub_stores_offline(hub, llama_family, console_script, child_env, tmp_path):
    config = write_config(
        tmp_path / "hub.yml",
        llama_family,
        "led-test/led-stores/safety/finetune1@v1",
        f"led-test/led-stores/safety/base@{STORES_COMMIT}",
    )
    proc = run(
        console_script,
        child_env,
        hub,
        "mergekit-led",
        "merge",
        config,
        tmp_path / "out",
        "--no-copy-tokenizer",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(
        console_script,
        child_env,
        hub,
        "mergekit-yaml",
        config,
        tmp_path / "yaml_out",
        "--no-copy-tokenizer",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    local = write_config(
        tmp_path / "local.yml", llama_family, hub["local"]["finetune1"], hub["local"]["base"]
    )
    from mergekit_led.cli import main

    result = CliRunner().invoke(
        main, ["merge", local, str(tmp_path / "local_out"), "--no-copy-tokenizer"]
    )
    assert result.exit_code == 0, result.output
    expected = read_model(tmp_path / "local_out")
    for out in ("out", "yaml_out"):
        merged = read_model(tmp_path / out)
        assert set(merged) == set(expected)
        for name in expected:
            assert torch.equal(merged[name], expected[name]), (out, name)
    # the merged model's card names the stores as fetched
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"models--led-test--led-stores/snapshots/{STORES_COMMIT}/safety/finetune1" in card


@pytest.mark.slow
def test_hub_store_of_another_model_is_refused(
    hub, llama_family, console_script, child_env, tmp_path
):
    config = write_config(
        tmp_path / "wrong.yml",
        llama_family,
        "led-test/led-stores/safety/finetune2",
        "led-test/led-stores/safety/base",
    )
    proc = run(console_script, child_env, hub, "mergekit-led", "merge", config, tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "Error: Importance store led-test/led-stores/safety/finetune2 "
        "(`importance` of model " + llama_family.finetunes[0]
    )
    assert f"computed on model {llama_family.finetunes[1]}" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "reference, message",
    [
        (
            "led-test/nothing/safety",
            "Importance store led-test/nothing/safety does not exist as a "
            "local folder and cannot be fetched from the Hugging Face Hub (repo led-test/nothing)",
        ),
        (
            "led-test/led-stores/code/base",
            f"the Hub repo led-test/led-stores (commit {STORES_COMMIT}) has no folder 'code/base'",
        ),
        (
            "led-test/led-stores/safety/base@v2",
            "cannot be fetched from the Hugging Face Hub (repo led-test/led-stores at revision v2)",
        ),
    ],
)
def test_missing_hub_stores_are_one_clear_line(
    hub, llama_family, console_script, child_env, tmp_path, reference, message
):
    config = write_config(
        tmp_path / "missing.yml", llama_family, "led-test/led-stores/safety/finetune1", reference
    )
    proc = run(console_script, child_env, hub, "mergekit-led", "merge", config, tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: ") and message in line, line


@pytest.mark.slow
def test_hub_model_is_keyed_by_repo_and_commit(
    hub, llama_family, console_script, child_env, tmp_path
):
    config = tmp_path / "hub_model.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": llama_family.base,
                "models": [
                    {
                        "model": "led-test/finetune1",
                        "parameters": {"density": 0.3, "importance_data": hub["data"]},
                    }
                ],
            }
        )
    )
    cache = tmp_path / "cache"
    proc = run(
        console_script,
        child_env,
        hub,
        "mergekit-led",
        "prepare",
        config,
        "-o",
        tmp_path / "resolved.yml",
        "--no-progress",
        cache_dir=str(cache),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {e.record["model"]: e for e in StoreCache(str(cache)).entries()}
    entry = records["led-test/finetune1"]
    assert entry.record["model_identity"] == f"hub:led-test/finetune1@{MODEL_COMMIT}"
    # the same weights as the local fine-tune 1, so the same scores (to float rounding:
    # the two runs are different processes, whose CPU kernels may sum in another order)
    hub_scores = mergekit_led.load_importance(entry.path)
    local_scores = mergekit_led.load_importance(hub["local"]["finetune1"])
    assert hub_scores.manifest.model_fingerprint == local_scores.manifest.model_fingerprint
    for name in local_scores:
        torch.testing.assert_close(hub_scores[name], local_scores[name], rtol=1e-4, atol=1e-8)
    card = Path(entry.path, "README.md").read_text()
    assert "base_model: led-test/finetune1\n" in card
    assert f"`led-test/finetune1@{MODEL_COMMIT}`" in card
    resolved = yaml.safe_load((tmp_path / "resolved.yml").read_text())
    assert resolved["models"][0]["parameters"]["importance"] == entry.path
