"""The merges of the demo as mergekit YAML configs, and running them.

Every merge of safety + math + code is a mergekit configuration run the way
``mergekit-led merge CONFIG OUT`` runs it: ``prepare_config`` fills in the
importance stores an ``led_merging`` config asks for by ``importance_data``
(from the store cache), then ``mergekit_led.merge.merge_config`` merges. An LED
config is the one YAML a user writes: each model names its task's location
data, and the ``locate_*`` options say how the stores are computed. Each method
has a small grid of its own published hyperparameters (GRID.yml syntax): the
grids run through ``mergekit-led sweep`` on the validation split, whose default
rule picks one setting per method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

import yaml

from mergekit_led.core.parameters import DATA_PARAMETER, LOCATE_PREFIX
from mergekit_led.location.score_kinds import SCORE_KINDS, data_scores

TASKS = ("safety", "math", "code")
METHODS = ("task_arithmetic", "ties", "breadcrumbs", "model_stock", "led_merging")
METHOD_NAMES = {
    "task_arithmetic": "Task Arithmetic",
    "ties": "TIES",
    "dare_ties": "DARE-TIES",
    "breadcrumbs": "Breadcrumbs",
    "model_stock": "Model Stock",
    "led_merging": "LED-Merging",
}
# Methods whose λ is mergekit's ``lambda`` (``MergeSetting.scale``), not the weights.
SCALED_METHODS = ("ties", "dare_ties")
BREADCRUMBS_GAMMA = 0.01  # share of the largest entries Breadcrumbs drops (its paper's value)
# Score kinds the one-command flow computes from a task's data (``locate_score``):
# the data scores of the table of score kinds.
FLOW_SCORES = data_scores()
# Score kinds that need no data (the ablation's ``random``): the flow refuses them
# (``locate_score`` takes only data scores), so their stores are computed with
# ``mergekit_led.locate`` and given by path, as docs/one-command.md says. The
# rest of the same table, so the two lists cannot disagree.
DATA_FREE_SCORES = tuple(name for name in SCORE_KINDS if name not in FLOW_SCORES)
# The locate options of every store the demo computes, for the whole config:
# the models are scored in float32, their own dtype (``auto`` would read it from
# the checkpoint; naming it keeps the stores independent of how they were saved).
LOCATE_OPTIONS = {"dtype": "float32"}


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
    score_dtype: str = "float32"  # LED: the stores' dtype (``locate_score_dtype``)
    # mergekit's ``lambda`` (the merged task vector scaled after the weighted sum): the
    # λ of TIES and DARE-TIES, whose per-model weights are normalised away.
    scale: float = 1.0

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
        if self.score_dtype != "float32":
            parts.append(self.score_dtype)
        if self.scale != 1.0:
            parts.append(f"l{self.scale:g}")
        return "_".join(parts)

    def describe(self) -> str:
        """The hyperparameters in words, for tables."""
        if self.method == "led_merging":
            text = f"safety {self.safety_density:g}, utility {self.utility_density:g}, λ {self.weight:g}"
        elif self.method == "model_stock":
            return "no hyperparameters"
        elif self.method in SCALED_METHODS:
            text = f"density {self.density:g}, λ {self.scale:g}"
        elif self.density is not None:
            text = f"density {self.density:g}, λ {self.weight:g}"
        else:
            text = f"λ {self.weight:g}"
        return text

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# The grids (GRID.yml syntax, docs/sweep.md), fixed on the development seeds
# before the reported seeds were run (docs/demo_results.md): each method gets
# its own published knobs, about eight settings each, λ the same for every model.
# The keys name the demo's models by their folders (safety, math, code).
FULL_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0]},
    # mergekit's TIES divides by the summed weights (normalize: true, its default),
    # so a common λ changes nothing: its knob is the density.
    "ties": {"density": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9], "weight": 1.0},
    "breadcrumbs": {
        "density": [0.3, 0.5, 0.7, 0.9],
        "weight": [0.7, 1.0],
        "gamma": BREADCRUMBS_GAMMA,
    },
    "model_stock": {},
    "led_merging": {"density": {"safety": [0.5, 0.7, 0.9], "math, code": [0.05, 0.1, 0.2]}},
}
QUICK_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": [0.5, 1.0]},
    "ties": {"density": 0.5, "weight": 1.0},
    "breadcrumbs": {"density": 0.9, "weight": 1.0, "gamma": BREADCRUMBS_GAMMA},
    "model_stock": {},
    "led_merging": {"density": {"safety": 0.7, "math, code": [0.1, 0.2]}},
}
# The ratios of the authors' scripts (safety 0.1, utility 0.4), merged untuned for reference.
AUTHORS_LED = MergeSetting("led_merging", safety_density=0.1, utility_density=0.4)


def grid(quick: bool) -> Dict[str, dict]:
    return QUICK_GRID if quick else FULL_GRID


@dataclass
class Inputs:
    """What a merge reads: model folders and, for LED, each task's location data
    (``importance_data``), the store cache the flow computes their stores into,
    and the stores of the data-free score kinds, given by path:
    ``stores[kind][task] = {"model": path, "base": path}``."""

    base: str
    finetuned: Mapping[str, str]  # task -> checkpoint folder
    data: Mapping[str, str]  # task -> location data file
    cache: str  # the store cache folder
    stores: Dict[str, Dict[str, Dict[str, str]]] = field(default_factory=dict)
    out_dtype: Optional[str] = None  # the merged model's dtype (mergekit's ``out_dtype``)


def led_parameters(setting: MergeSetting, inputs: Inputs, task: str) -> Dict[str, object]:
    """Where a task model's importance comes from: its location data, or (for a
    data-free score kind) the two stores."""
    if setting.scores in FLOW_SCORES:
        return {DATA_PARAMETER: inputs.data[task]}
    if setting.score_dtype != "float32":
        raise ValueError(f"{setting.scores} stores are computed in float32 only")
    stores = inputs.stores[setting.scores][task]
    return {"importance": stores["model"], "base_importance": stores["base"]}


def locate_parameters(setting: MergeSetting) -> Dict[str, object]:
    """The config-wide ``locate_*`` options of ``setting``'s stores (what is not
    locate's default)."""
    if setting.scores not in FLOW_SCORES:
        return {}
    options: Dict[str, object] = dict(LOCATE_OPTIONS)
    if setting.scores != "snip":
        options["score"] = setting.scores
    if setting.score_dtype != "float32":
        options["score_dtype"] = setting.score_dtype
    return {LOCATE_PREFIX + name: value for name, value in options.items()}


def led_config(setting: MergeSetting, inputs: Inputs) -> dict:
    """The LED config a user writes for ``setting``'s stores (``importance_data`` and
    ``locate_*`` options, or a data-free kind's stores by path): what the sweep's
    builder turns into each setting, the way ``mergekit-led sweep`` turns CONFIG."""
    config: Dict[str, object] = {
        "merge_method": "led_merging",
        "base_model": inputs.base,
        "dtype": "float32",
    }
    if inputs.out_dtype:
        config["out_dtype"] = inputs.out_dtype
    config["parameters"] = {
        "election": setting.election,
        "disjoint": setting.disjoint,
        **locate_parameters(setting),
    }
    config["models"] = [
        {
            "model": inputs.finetuned[task],
            "parameters": {
                "weight": setting.weight,
                **led_density(setting, task),
                **led_parameters(setting, inputs, task),
            },
        }
        for task in TASKS
    ]
    return config


def led_density(setting: MergeSetting, task: str) -> Dict[str, float]:
    """LED's ``density`` of ``task``'s model: the safety or the utility ratio (none for a
    baseline's setting)."""
    if setting.method != "led_merging":
        return {}
    return {"density": setting.safety_density if task == "safety" else setting.utility_density}


def sweep_setting(setting: MergeSetting, inputs: Inputs):
    """``setting`` as a point of the sweep's grid (``sweep.grid.Setting``): its method and
    each model's ``weight`` / ``density`` (LED: the safety or the utility ratio); the
    parameters the method does not take (mergekit's spec) are left out: Model Stock takes
    none, Breadcrumbs also its ``gamma``."""
    from mergekit.merge_methods import registry

    from mergekit_led.sweep.grid import Setting

    takes = {parameter.name for parameter in registry.get(setting.method).spec.input_parameters}
    per_model = []
    for task in TASKS:
        values: Dict[str, object] = {"weight": setting.weight, **led_density(setting, task)}
        if setting.density is not None:
            values["density"] = setting.density
        values["gamma"] = BREADCRUMBS_GAMMA
        kept = {name: value for name, value in values.items() if name in takes}
        per_model.append((inputs.finetuned[task], tuple(sorted(kept.items()))))
    # TIES and DARE-TIES always say their λ, as their grid blocks do (so a setting built
    # here is the sweep's own setting, config for config).
    shared = (("lambda", setting.scale),) if setting.method in SCALED_METHODS else ()
    return Setting(setting.method, shared, tuple(per_model))


def setting_config(setting: MergeSetting, inputs: Inputs) -> dict:
    """The mergekit configuration (as a dict) of ``setting``, built by the sweep's builder
    (``sweep.grid.setting_config``) from the study's LED config: for LED the one YAML a
    user writes, for a baseline what ``mergekit-led sweep`` merges for its grid's block."""
    from mergekit_led.sweep.grid import setting_config as config_of_setting

    return config_of_setting(led_config(setting, inputs), sweep_setting(setting, inputs))


def prepare_stores(
    config: dict,
    *,
    cache: str,
    device: str,
    compute: bool,
    progress: bool = False,
    report: Optional[Callable[[str], None]] = None,
):
    """``config`` with its ``importance_data`` stores filled in, computed into
    ``cache`` when ``compute`` (``mergekit-led prepare --cache-dir CACHE
    --device DEVICE``), else only looked up; a ``PreparedConfig``."""
    from mergekit.config import MergeConfiguration

    from mergekit_led.prepare import StoreCache, prepare_config

    return prepare_config(
        MergeConfiguration.model_validate(config),
        cache=StoreCache(cache),
        run={"device": device},
        compute=compute,
        report=report or (lambda line: None),
        progress=progress,
    )


def store_paths(prepared) -> Dict[str, Dict[str, str]]:
    """``{task: {"model": store, "base": store}}`` of a prepared LED config."""
    models = prepared.merge_config.models
    return {
        task: {
            "model": definition.parameters["importance"],
            "base": definition.parameters["base_importance"],
        }
        for task, definition in zip(TASKS, models)
    }


def write_and_merge(
    config: dict, config_path: str, out_path: str, *, device: str, seed: int, cache: str
) -> str:
    """Write ``config`` as YAML to ``config_path`` and merge it into ``out_path``
    as ``mergekit-led merge --cache-dir CACHE`` does: its stores are filled in
    from the cache (the demo computes them all before its merges, so a merge
    only reads them), then the package's mergekit entry point merges."""
    from mergekit.options import MergeOptions

    from mergekit_led.merge import merge_config

    source = yaml.safe_dump(config, sort_keys=False)
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(source)
    prepared = prepare_stores(config, cache=cache, device=device, compute=False)
    options = MergeOptions(
        device=device,
        copy_tokenizer=True,
        lazy_unpickle=False,
        write_model_card=True,
        quiet=True,
        random_seed=seed,
    )
    return merge_config(prepared.merge_config, out_path, options=options, config_source=source)


def sweep_grid(grid_data: dict, inputs: Inputs, spec, out: str, *, device: str, seed: int):
    """Every setting of ``grid_data`` merged and evaluated on ``spec`` by
    ``mergekit-led sweep`` (its Python API), from the LED config a user writes
    (the authors' ratios, which the grid's LED block replaces); stores from the
    seed's cache. Returns the ``SweepResult`` (each method's selected row in
    ``per_method``, by the sweep's default rule, the demo's balanced score)."""
    from mergekit_led.sweep import SelectionRule, SweepOptions, parse_grid, run_sweep
    from mergekit_led.sweep.sweeper import model_names

    config = setting_config(AUTHORS_LED, inputs)
    settings = parse_grid(grid_data, model_names(config), where="the demo's grid")
    options = SweepOptions(
        device=device,
        cache_dir=inputs.cache,
        max_settings=len(settings),
        seed=seed,
        progress=False,
    )
    return run_sweep(config, settings, spec, out, rule=SelectionRule(), options=options)


def from_sweep(setting: dict, inputs: Inputs) -> MergeSetting:
    """The ``MergeSetting`` of a sweep row's setting (``Setting.as_dict()``)."""
    task_of = {path: task for task, path in inputs.finetuned.items()}
    values = {task_of[model]: params for model, params in setting["models"].items()}
    method = setting["method"]
    if method == "led_merging":
        return MergeSetting(
            method,
            weight=values.get("safety", {}).get("weight", 1.0),
            safety_density=values["safety"]["density"],
            utility_density=values["math"]["density"],
        )
    first = values.get("safety", {})
    return MergeSetting(
        method,
        weight=first.get("weight", 1.0),
        density=first.get("density"),
        scale=setting.get("shared", {}).get("lambda", 1.0),
    )
