"""The merges of the demo as mergekit YAML configs, and running them.

Every merge of safety + math + code is a mergekit configuration run by
``mergekit_led.merge.merge_config`` (what ``mergekit-led merge`` and
``mergekit-yaml`` run). Each method has a small grid of its own published
hyperparameters; the selection rule (``selection``) picks one setting per
method on the validation split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import yaml

TASKS = ("safety", "math", "code")
METHODS = ("task_arithmetic", "ties", "breadcrumbs", "model_stock", "led_merging")
METHOD_NAMES = {
    "task_arithmetic": "Task Arithmetic",
    "ties": "TIES",
    "breadcrumbs": "Breadcrumbs",
    "model_stock": "Model Stock",
    "led_merging": "LED-Merging",
}
BREADCRUMBS_GAMMA = 0.01  # share of the largest entries Breadcrumbs drops (its paper's value)


@dataclass(frozen=True)
class MergeSetting:
    """One point of a method's grid. ``density``/``weight`` map a task to its value;
    a single float applies to every model. LED's ``election``/``disjoint`` and
    ``scores`` (which importance stores) only change in the ablations."""

    method: str
    weight: float = 1.0
    density: Optional[float] = None
    safety_density: Optional[float] = None  # LED: the safety model's ratio
    utility_density: Optional[float] = None  # LED: the math and code models' ratio
    election: str = "both"
    disjoint: bool = True
    scores: str = "snip"

    @property
    def slug(self) -> str:
        parts = [self.method, f"w{self.weight:g}"]
        if self.density is not None:
            parts.append(f"d{self.density:g}")
        if self.safety_density is not None:
            parts += [f"s{self.safety_density:g}", f"u{self.utility_density:g}"]
        if self.method == "led_merging" and (self.election, self.disjoint, self.scores) != (
            "both",
            True,
            "snip",
        ):
            parts += [self.scores, self.election, "disjoint" if self.disjoint else "nodisjoint"]
        return "_".join(parts)

    def describe(self) -> str:
        """The hyperparameters in words, for tables."""
        if self.method == "led_merging":
            text = f"safety {self.safety_density:g}, utility {self.utility_density:g}, λ {self.weight:g}"
        elif self.method == "model_stock":
            return "no hyperparameters"
        elif self.density is not None:
            text = f"density {self.density:g}, λ {self.weight:g}"
        else:
            text = f"λ {self.weight:g}"
        return text

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# The grids, fixed on the development seeds before the reported seeds were run
# (docs/demo_results.md): each method gets its own published knobs, about eight
# settings each, λ the same for every model.
FULL_GRIDS: Dict[str, List[MergeSetting]] = {
    "task_arithmetic": [
        MergeSetting("task_arithmetic", weight=w) for w in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
    ],
    # mergekit's TIES divides by the summed weights (normalize: true, its default),
    # so a common λ changes nothing: its knob is the density.
    "ties": [MergeSetting("ties", density=d) for d in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)],
    "breadcrumbs": [
        MergeSetting("breadcrumbs", weight=w, density=d)
        for d in (0.3, 0.5, 0.7, 0.9)
        for w in (0.7, 1.0)
    ],
    "model_stock": [MergeSetting("model_stock")],
    "led_merging": [
        MergeSetting("led_merging", safety_density=s, utility_density=u)
        for s in (0.5, 0.7, 0.9)
        for u in (0.05, 0.1, 0.2)
    ],
}
QUICK_GRIDS: Dict[str, List[MergeSetting]] = {
    "task_arithmetic": [MergeSetting("task_arithmetic", weight=w) for w in (0.5, 1.0)],
    "ties": [MergeSetting("ties", density=0.5)],
    "breadcrumbs": [MergeSetting("breadcrumbs", weight=1.0, density=0.9)],
    "model_stock": [MergeSetting("model_stock")],
    "led_merging": [
        MergeSetting("led_merging", safety_density=0.7, utility_density=0.1),
        MergeSetting("led_merging", safety_density=0.5, utility_density=0.2),
    ],
}
# The ratios of the authors' scripts (safety 0.1, utility 0.4), merged untuned for reference.
AUTHORS_LED = MergeSetting("led_merging", safety_density=0.1, utility_density=0.4)


def grids(quick: bool) -> Dict[str, List[MergeSetting]]:
    return QUICK_GRIDS if quick else FULL_GRIDS


@dataclass
class Inputs:
    """What a merge reads: model folders and, for LED, importance stores
    ``stores[kind][task] = {"model": path, "base": path}``."""

    base: str
    finetuned: Mapping[str, str]  # task -> checkpoint folder
    stores: Dict[str, Dict[str, Dict[str, str]]] = field(default_factory=dict)


def merge_config(setting: MergeSetting, inputs: Inputs) -> dict:
    """The mergekit configuration (as a dict) of ``setting``."""
    common = {"merge_method": setting.method, "base_model": inputs.base, "dtype": "float32"}
    models = [inputs.finetuned[t] for t in TASKS]
    if setting.method == "task_arithmetic":
        params = [{"weight": setting.weight} for _ in models]
    elif setting.method == "ties":
        params = [{"weight": setting.weight, "density": setting.density} for _ in models]
    elif setting.method == "breadcrumbs":
        params = [
            {"weight": setting.weight, "density": setting.density, "gamma": BREADCRUMBS_GAMMA}
            for _ in models
        ]
    elif setting.method == "model_stock":
        return {**common, "models": [{"model": m} for m in models]}
    elif setting.method == "led_merging":
        stores = inputs.stores[setting.scores]
        params = [
            {
                "weight": setting.weight,
                "density": setting.safety_density if task == "safety" else setting.utility_density,
                "importance": stores[task]["model"],
                "base_importance": stores[task]["base"],
            }
            for task in TASKS
        ]
        common["parameters"] = {"election": setting.election, "disjoint": setting.disjoint}
    else:
        raise ValueError(f"unknown merge method {setting.method!r}")
    return {**common, "models": [{"model": m, "parameters": p} for m, p in zip(models, params)]}


def run_merge(config: dict, config_path: str, out_path: str, *, device: str, seed: int) -> str:
    """Write ``config`` as YAML to ``config_path`` and merge it into ``out_path``
    through the package's mergekit entry point."""
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    from mergekit_led.merge import merge_config as run_config

    source = yaml.safe_dump(config, sort_keys=False)
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(source)
    options = MergeOptions(
        device=device,
        copy_tokenizer=True,
        lazy_unpickle=False,
        write_model_card=True,
        quiet=True,
        random_seed=seed,
    )
    return run_config(
        MergeConfiguration.model_validate(config), out_path, options=options, config_source=source
    )
