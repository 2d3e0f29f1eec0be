"""Shared fixtures: a tiny offline Llama family and importance stores for it.

Everything is session-scoped and built once into pytest's tmp folders. Score
tensors are generated here (with many ties and exact zeros) and kept in memory,
so the reference (tests/reference.py) works from the raw scores, never from what
the package wrote or reads back.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from helpers import FAMILY_SIZE, checkpoint_shapes, led_models, make_scores, write_led_yaml
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory):
    """Base + 3 fine-tunes (hidden 32, 2 layers, vocab 96, float32)."""
    from mergekit_led.testing import build_family

    root = tmp_path_factory.mktemp("llama_family")
    return build_family(str(root), finetunes=FAMILY_SIZE, seed=0)


@pytest.fixture(scope="session")
def weight_shapes(llama_family) -> Dict[str, tuple]:
    return checkpoint_shapes(llama_family.base)


@pytest.fixture(scope="session")
def family_state_dicts(llama_family) -> Dict[str, Dict[str, torch.Tensor]]:
    """{"base": ..., "finetune1": ..., ...} loaded straight from the safetensors."""
    sds = {"base": load_file(os.path.join(llama_family.base, "model.safetensors"))}
    for i, path in enumerate(llama_family.finetunes, start=1):
        sds[f"finetune{i}"] = load_file(os.path.join(path, "model.safetensors"))
    return sds


class TaskFixture:
    """Scores and stores of one task i: fine-tune i's and the base's, on task i."""

    def __init__(self, index, model_path, model_scores, model_store, base_scores, base_store):
        self.index = index
        self.model_path = model_path
        self.model_scores = model_scores
        self.model_store = model_store
        self.base_scores = base_scores
        self.base_store = base_store


@pytest.fixture(scope="session")
def task_stores(llama_family, weight_shapes, tmp_path_factory) -> List[TaskFixture]:
    """For every fine-tune i: stores of I_i (on fine-tune i) and I_base,i (on base).

    Task 1's base scores of ``model.norm.weight`` are all zero (never elected).
    """
    from mergekit_led import save_importance

    root = tmp_path_factory.mktemp("stores")
    tasks = []
    for i, model_path in enumerate(llama_family.finetunes, start=1):
        model_scores = make_scores(weight_shapes, seed=100 + i)
        base_scores = make_scores(
            weight_shapes,
            seed=200 + i,
            zero_names=("model.norm.weight",) if i == 1 else (),
        )
        model_store = save_importance(
            model_scores,
            str(root / f"task{i}_finetune"),
            model=model_path,
            score="snip",
            dataset={
                "name": f"task{i}.jsonl",
                "fingerprint": f"sha256:{i:064d}",
                "samples": 8,
                "answer_tokens": 40,
            },
        )
        base_store = save_importance(
            base_scores,
            str(root / f"task{i}_base"),
            model=llama_family.base,
            score="snip",
            dataset={"name": f"task{i}.jsonl", "samples": 8, "answer_tokens": 40},
        )
        tasks.append(TaskFixture(i, model_path, model_scores, model_store, base_scores, base_store))
    return tasks


@pytest.fixture(scope="session")
def task_stores_format1(task_stores, tmp_path_factory) -> List[TaskFixture]:
    """The same scores as ``task_stores``, as format-1 stores (with sorted copies)."""
    from helpers import write_format1_copy

    root = tmp_path_factory.mktemp("stores_format1")
    tasks = []
    for t in task_stores:
        ms = write_format1_copy(t.model_store, str(root / f"task{t.index}_finetune"))
        bs = write_format1_copy(t.base_store, str(root / f"task{t.index}_base"))
        tasks.append(TaskFixture(t.index, t.model_path, t.model_scores, ms, t.base_scores, bs))
    return tasks


@pytest.fixture(scope="session")
def yaml_writer():
    return write_led_yaml


@pytest.fixture(scope="session")
def led_model_entries():
    return led_models


@pytest.fixture(scope="session")
def console_script():
    """Path of a console script installed next to the running interpreter."""

    def find(name: str) -> str:
        path = Path(sys.executable).parent / name
        if not path.exists():
            pytest.skip(f"console script {name} not found next to {sys.executable}")
        return str(path)

    return find


def subprocess_env(**overrides) -> Dict[str, str]:
    """The current environment for a child interpreter, with a few overrides."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture(scope="session")
def child_env():
    return subprocess_env
