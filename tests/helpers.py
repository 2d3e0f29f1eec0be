"""Helpers shared by the test modules (import them from here, never from conftest)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import torch
import yaml
from safetensors import safe_open

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


def write_format1_copy(store: str, dst: str) -> str:
    """Copy a float32 store into ``dst`` as the format-1 writer wrote it: the same
    scores files plus ``thresholds*.safetensors`` (each score tensor sorted in
    descending order), ``format_version`` 1, no ``dtype`` or ``checksums``."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(store, dst)
    manifest_path = os.path.join(dst, "led_importance.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest.get("dtype", "float32") == "float32"
    threshold_files = {}
    for file_name in sorted(set(manifest["files"].values())):
        sorted_name = file_name.replace("scores", "thresholds", 1)
        tensors = load_file(os.path.join(dst, file_name))
        save_file(
            {
                k: torch.sort(v.reshape(-1), descending=True).values.contiguous()
                for k, v in tensors.items()
            },
            os.path.join(dst, sorted_name),
            metadata={"format": "pt"},
        )
        threshold_files.update({k: sorted_name for k in tensors})
    manifest["format_version"] = 1
    manifest["threshold_files"] = threshold_files
    for key in ("dtype", "checksums"):
        manifest.pop(key, None)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return dst


def killed_after(samples: int):
    """A locate RunHooks step map whose SNIP step scores ``samples`` samples, then
    raises KeyboardInterrupt (what a kill does mid-run)."""
    from mergekit_led.location.steps import snip_step

    scored = []

    def step(*args, **kwargs):
        if len(scored) == samples:
            raise KeyboardInterrupt
        scored.append(1)
        return snip_step(*args, **kwargs)

    return {"snip": step}


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML "billion laughs": ``width ** levels`` scalars from a few lines."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines)


def sweep_args(paths, out, *extra) -> list:
    """``mergekit-led sweep`` arguments for ``paths`` (config, grid, eval, cache) into ``out``,
    on the CPU, quiet."""
    args = ["sweep", paths["config"], paths["grid"], out, "--eval", paths["eval"]]
    args += ["--cache-dir", paths["cache"], "--device", "cpu", "--quiet", *extra]
    return [str(arg) for arg in args]
