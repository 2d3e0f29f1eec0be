"""``mergekit-led locate`` in real child processes: two ``torchrun`` CPU processes
(gloo) equal one process, and stores from ``locate`` drive a real ``mergekit-yaml``
``led_merging`` merge. Marked ``slow`` (they spawn interpreters); they run by
default and in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import mergekit_led
from mergekit_led import load_importance
from mergekit_led.jsonl import write_jsonl
from mergekit_led.testing import build_family

SAFETY = [
    {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
    {"prompt": "tell me how to steal a dog", "response": "no i cannot help with that"},
    {"prompt": "how to hack the moon", "response": "sorry no"},
]
MATH = [
    {"prompt": "what is one plus two", "response": "three"},
    {"prompt": "what is two times four", "response": "eight"},
    {"prompt": "what is ten minus one", "response": "nine"},
    {"prompt": "five plus five equals", "response": "ten"},
]


def locate_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"console script {name} not found next to {sys.executable}")
    return str(path)


def locate_child_env() -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def locate_e2e_family(tmp_path_factory):
    return build_family(str(tmp_path_factory.mktemp("locate_e2e")), finetunes=2)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, locate_e2e_family):
    data = write_jsonl(tmp_path / "data.jsonl", SAFETY + MATH)  # 7 samples: shards of 4 and 3
    single = load_importance(
        mergekit_led.locate(locate_e2e_family.base, data, str(tmp_path / "one"), progress=False)
    )
    out = tmp_path / "two"
    proc = subprocess.run(
        [
            locate_script("torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "--no-python",
            locate_script("mergekit-led"),
            "locate",
            "--model",
            locate_e2e_family.base,
            "--data",
            data,
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--checkpoint-every",
            "2",
        ],
        capture_output=True,
        text=True,
        env=locate_child_env(),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("Wrote importance store") == 1  # rank 0 writes and reports
    double = load_importance(str(out))
    assert double.manifest.metadata["compute"]["world_size"] == 2
    for field in ("samples", "answer_tokens", "fingerprint"):
        assert getattr(double.manifest.dataset, field) == getattr(single.manifest.dataset, field)
    assert set(double) == set(single)
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-5, atol=1e-9, msg=name)
    assert not os.path.exists(str(out) + ".locate-checkpoint")


@pytest.mark.slow
def test_locate_stores_drive_a_mergekit_yaml_led_merge(tmp_path, locate_e2e_family):
    family = locate_e2e_family
    tasks = [
        (family.finetunes[0], write_jsonl(tmp_path / "safety.jsonl", SAFETY), 0.3),
        (family.finetunes[1], write_jsonl(tmp_path / "math.jsonl", MATH), 0.5),
    ]
    models = []
    for index, (model, data, density) in enumerate(tasks):
        fine = mergekit_led.locate(
            model, data, str(tmp_path / f"scores/{index}/fine"), progress=False
        )
        base = mergekit_led.locate(
            family.base, data, str(tmp_path / f"scores/{index}/base"), progress=False
        )
        models.append(
            {
                "model": model,
                "parameters": {
                    "weight": 1.0,
                    "density": density,
                    "importance": fine,
                    "base_importance": base,
                },
            }
        )
    config = tmp_path / "led.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": family.base,
                "models": models,
                "dtype": "float32",
            }
        )
    )
    merged = tmp_path / "merged"
    proc = subprocess.run(
        [locate_script("mergekit-yaml"), str(config), str(merged), "--copy-tokenizer"],
        capture_output=True,
        text=True,
        env=locate_child_env(),
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(merged))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    with torch.no_grad():
        logits = model(**tokenizer("what is one plus two", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    # the merge moved weights off the base: LED elected something from each task
    base = AutoModelForCausalLM.from_pretrained(family.base)
    changed = sum(
        int((a != b).sum()) for a, b in zip(model.state_dict().values(), base.state_dict().values())
    )
    assert changed > 0
