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
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

# Densities per task (fine-tune 1, 2, 3): distinct, so a mix-up shows.
DENSITIES = (0.3, 0.5, 0.2)
FAMILY_SIZE = 3


def checkpoint_shapes(model_dir: str) -> Dict[str, tuple]:
    shapes = {}
    with safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def make_scores(shapes: Dict[str, tuple], seed: int, *, zero_names=()) -> Dict[str, torch.Tensor]:
    """Non-negative float32 scores with plenty of ties and exact zeros.

    Weights alternate between heavily tied integer scores (0..5, so about a sixth
    are zero and every threshold is a tie) and continuous scores with 20% zeros.
    Names in ``zero_names`` get all-zero scores.
    """
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for index, (name, shape) in enumerate(sorted(shapes.items())):
        if name in zero_names:
            values = torch.zeros(shape)
        elif index % 2 == 0:
            values = torch.randint(0, 6, shape, generator=g).to(torch.float32)
        else:
            values = torch.rand(shape, generator=g)
            values[torch.rand(shape, generator=g) < 0.2] = 0.0
        scores[name] = values.to(torch.float32)
    return scores


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory):
    """Base + 3 fine-tunes (hidden 32, 2 layers, vocab 96, float32)."""
    from mergekit_led.testing import build_llama_family

    root = tmp_path_factory.mktemp("llama_family")
    return build_llama_family(str(root), finetunes=FAMILY_SIZE, seed=0)


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


class TaskStores:
    """Scores and stores of one task i: fine-tune i's and the base's, on task i."""

    def __init__(self, index, model_path, model_scores, model_store, base_scores, base_store):
        self.index = index
        self.model_path = model_path
        self.model_scores = model_scores
        self.model_store = model_store
        self.base_scores = base_scores
        self.base_store = base_store


@pytest.fixture(scope="session")
def task_stores(llama_family, weight_shapes, tmp_path_factory) -> List[TaskStores]:
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
            dataset={"name": f"task{i}.jsonl", "fingerprint": f"sha256:{i:064d}",
                     "samples": 8, "answer_tokens": 40},
        )
        base_store = save_importance(
            base_scores,
            str(root / f"task{i}_base"),
            model=llama_family.base,
            score="snip",
            dataset={"name": f"task{i}.jsonl", "samples": 8, "answer_tokens": 40},
        )
        tasks.append(TaskStores(i, model_path, model_scores, model_store, base_scores, base_store))
    return tasks


@pytest.fixture(scope="session")
def task_stores_no_thresholds(llama_family, task_stores, tmp_path_factory) -> List[TaskStores]:
    """The same scores as ``task_stores``, written with thresholds=False."""
    from mergekit_led import save_importance

    root = tmp_path_factory.mktemp("stores_plain")
    tasks = []
    for t in task_stores:
        ms = save_importance(t.model_scores, str(root / f"task{t.index}_finetune"),
                             model=t.model_path, score="snip", thresholds=False)
        bs = save_importance(t.base_scores, str(root / f"task{t.index}_base"),
                             model=llama_family.base,
                             score="snip", thresholds=False)
        tasks.append(TaskStores(t.index, t.model_path, t.model_scores, ms, t.base_scores, bs))
    return tasks


def write_led_yaml(path, *, base, models, dtype="float32", parameters=None, **extra) -> str:
    """Write a mergekit YAML config for led_merging.

    ``models``: list of (model_path, parameters dict).
    """
    config = {"merge_method": "led_merging", "dtype": dtype}
    if base is not None:
        config["base_model"] = str(base)
    config["models"] = [
        {"model": str(m), "parameters": dict(p)} if p is not None else {"model": str(m)}
        for m, p in models
    ]
    if parameters:
        config["parameters"] = dict(parameters)
    config.update(extra)
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def led_models(task_stores, count, *, densities=DENSITIES, weights=None, stores=None):
    """[(model_path, parameters)] for the first ``count`` fine-tunes."""
    stores = stores or task_stores
    models = []
    for k in range(count):
        params = {
            "density": densities[k],
            "importance": stores[k].model_store,
            "base_importance": stores[k].base_store,
        }
        if weights is not None:
            params["weight"] = weights[k]
        models.append((stores[k].model_path, params))
    return models


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
