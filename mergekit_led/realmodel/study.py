"""``mergekit-led demo --world smollm2``: the demo's study on SmolLM2-135M-Instruct.

Per seed, every stage is cached in ``OUT/seed-N`` so a killed run resumes
where it stopped: the split (``make real-assets``' cache) → the family
(``models/<role>``, a folder appears only when complete) → the SNIP stores
(the one-command flow's store cache) → each method's setting selected on the
validation split (``mergekit-led sweep``, which resumes by itself) → each test
row (``rows/<name>.json``: a merge is made, evaluated, and removed, its config
kept) → the world's properties → the ablations. A seed's result has the toy
demo's shape, so ``demo.report`` aggregates it.

Seeds run one after the other, each with every core (one 135M model at a time
fills two cores; two seeds at once would only share them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, List, Optional

import yaml

from mergekit_led.demo import evaluate, merging, properties
from mergekit_led.demo.merging import METHOD_NAMES, TASKS, Inputs
from mergekit_led.demo.world import Sample
from mergekit_led.errors import StudyError
from mergekit_led.realmodel.finetune import (
    FULL_FAMILY,
    QUICK_FAMILY,
    FamilyRecipe,
    build_real_family,
    read_jsonl,
    refused,
    write_jsonl,
)

WORLD = "smollm2"
METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "model_stock", "led_merging")
MODEL_ROWS = (
    ("Instruct (SmolLM2-135M-Instruct, the merge base)", "instruct", ()),
    ("Safety (Instruct + alignment)", "safety", ("safety",)),
    ("Math", "math", ("math",)),
    ("Code", "code", ("code",)),
)
AUTHORS_ROW = "LED-Merging (authors' ratios, not tuned)"
# Merges are computed in float32 and written, loaded and evaluated in bfloat16
# (as SmolLM2 is shipped); the fine-tuned models are kept in float32 (exact task
# vectors) and evaluated in bfloat16 too, so every row is evaluated alike.
EVAL_DTYPE = "bfloat16"

# The grids (GRID.yml syntax, docs/sweep.md), fixed before the reported seeds:
# each method's own knobs at two or three published values.
FULL_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": [0.5, 1.0]},
    "ties": {"density": [0.2, 0.5], "weight": 1.0},
    "dare_ties": {"density": [0.2, 0.5], "weight": 1.0},
    "breadcrumbs": {"density": [0.5, 0.9], "weight": 1.0, "gamma": merging.BREADCRUMBS_GAMMA},
    "model_stock": {},
    "led_merging": {"density": {"safety": [0.5, 0.9], "math, code": [0.1, 0.3]}},
}
QUICK_GRID: Dict[str, dict] = {
    "task_arithmetic": {"weight": 1.0},
    "ties": {"density": 0.5, "weight": 1.0},
    "dare_ties": {"density": 0.5, "weight": 1.0},
    "breadcrumbs": {"density": 0.9, "weight": 1.0, "gamma": merging.BREADCRUMBS_GAMMA},
    "model_stock": {},
    "led_merging": {"density": {"safety": 0.9, "math, code": 0.3}},
}


@dataclass(frozen=True)
class EvalSizes:
    """How many prompts of each set, and how many new tokens each answer gets."""

    val_limit: Optional[int]  # every val set
    harmful_test_limit: Optional[int]  # HarmBench (None: all 200)
    benign_test_limit: Optional[int]
    task_test_limit: Optional[int]  # math and code test
    refusal_tokens: int = 16  # a refusal shows in the first words (greedy decoding)
    math_tokens: int = 40  # "53 + 27 = 80. The answer is 80."
    code_tokens: int = 24  # the printed output (a sorted list of six numbers is ~18 tokens)
    batch_size: int = 32


@dataclass(frozen=True)
class RealRecipe:
    family: FamilyRecipe
    location_samples: int  # per task, from the train split
    sizes: EvalSizes
    grid: Dict[str, dict]
    layers: Optional[int] = None  # keep only the first N decoder layers (--quick)


FULL = RealRecipe(
    FULL_FAMILY,
    location_samples=16,
    sizes=EvalSizes(
        val_limit=24, harmful_test_limit=None, benign_test_limit=None, task_test_limit=50
    ),
    grid=FULL_GRID,
)
QUICK = RealRecipe(
    QUICK_FAMILY,
    location_samples=2,
    sizes=EvalSizes(
        val_limit=4,
        harmful_test_limit=4,
        benign_test_limit=4,
        task_test_limit=4,
        refusal_tokens=4,
        math_tokens=4,
        code_tokens=4,
    ),
    grid=QUICK_GRID,
    layers=4,
)


# --------------------------------------------------------------------------- data


def eval_spec_data(split_dir: str, split: str, sizes: EvalSizes) -> dict:
    """The EVAL.yml of ``split``: val = Do-Not-Answer val, test = HarmBench."""

    def path(name: str) -> str:
        return os.path.join(split_dir, f"{name}.jsonl")

    test = split == "test"
    limits = {
        "harmful": sizes.harmful_test_limit if test else sizes.val_limit,
        "benign": sizes.benign_test_limit if test else sizes.val_limit,
        "task": sizes.task_test_limit if test else sizes.val_limit,
    }

    def limited(entry: dict, limit: Optional[int]) -> dict:
        return {**entry, "limit": limit} if limit is not None else entry

    return {
        "harmful": limited(
            {
                "data": path("harmbench_test" if test else "donotanswer_val"),
                "max_new_tokens": sizes.refusal_tokens,
            },
            limits["harmful"],
        ),
        "benign": limited(
            {"data": path(f"benign_{split}"), "max_new_tokens": sizes.refusal_tokens},
            limits["benign"],
        ),
        "tasks": {
            "math": limited(
                {
                    "data": path(f"math_{split}"),
                    "answer": "last_number",
                    "max_new_tokens": sizes.math_tokens,
                },
                limits["task"],
            ),
            "code": limited(
                {
                    "data": path(f"code_{split}"),
                    "answer": "first_line",
                    "normalize": False,
                    "max_new_tokens": sizes.code_tokens,
                },
                limits["task"],
            ),
        },
        "generation": {"batch_size": sizes.batch_size, "chat_template": "auto"},
    }


def write_eval_spec(folder: str, split_dir: str, split: str, sizes: EvalSizes):
    from mergekit_led.evaluation import parse_eval_spec

    data = eval_spec_data(split_dir, split, sizes)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{split}_eval.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return parse_eval_spec(data, where=f"the smollm2 world's {split} evaluation")


def location_sets(
    split_dir: str, benign_file: str, samples: int, seed: int
) -> Dict[str, List[Sample]]:
    """Per task, ``samples`` rows of its train split: safety = half refused
    Do-Not-Answer prompts, half benign prompts with the instruct model's own
    answers (as the toy demo mixes them); math / code = task rows."""
    import random

    rng = random.Random(f"{seed}-location")
    harmful = [r["prompt"] for r in read_jsonl(os.path.join(split_dir, "donotanswer_train.jsonl"))]
    benign = read_jsonl(benign_file)
    half = samples // 2
    safety = [Sample(p, r) for p, r in refused(rng.sample(harmful, half), rng)]
    safety += [Sample(r["prompt"], r["response"]) for r in rng.sample(benign, samples - half)]
    out = {"safety": safety}
    for task in ("math", "code"):
        rows = read_jsonl(os.path.join(split_dir, f"{task}_train.jsonl"))
        out[task] = [Sample(r["prompt"], r["response"]) for r in rng.sample(rows, samples)]
    return out


# --------------------------------------------------------------------------- one seed


@dataclass
class StudyOptions:
    out: str
    cache_dir: Optional[str] = None  # the real assets (make real-assets)
    device: str = "cpu"
    quick: bool = False
    ablations: bool = False  # the ablations run on this seed
    log: Callable[[str], None] = print

    @property
    def recipe(self) -> RealRecipe:
        return QUICK if self.quick else FULL


def _identity(options: StudyOptions, seed: int) -> dict:
    recipe = options.recipe
    return {
        "world": WORLD,
        "seed": seed,
        "quick": options.quick,
        "family": asdict(recipe.family),
        "location_samples": recipe.location_samples,
        "sizes": asdict(recipe.sizes),
        "grid": recipe.grid,
    }


def _claim_seed_dir(seed_dir: str, identity: dict) -> None:
    """A seed folder is resumed only by the same study: another recipe, grid or
    world in it is refused rather than mixed in."""
    path = os.path.join(seed_dir, "study.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                found = json.load(f)
            except json.JSONDecodeError as error:
                raise StudyError(
                    f"{path}: not valid JSON ({error}); remove the seed folder to restart."
                ) from error
        if found != json.loads(json.dumps(identity)):
            raise StudyError(
                f"{seed_dir} holds another study (different world, recipe, grid or --quick); "
                "use another --out or remove that seed folder."
            )
        return
    if os.path.isdir(seed_dir) and os.listdir(seed_dir):
        raise StudyError(f"{seed_dir} holds files and no study.json: not a folder this demo wrote.")
    os.makedirs(seed_dir, exist_ok=True)
    from mergekit_led.atomic import write_text

    write_text(path, json.dumps(identity, indent=2, sort_keys=True) + "\n")


class _Rows:
    """Test rows cached one JSON file each: a killed run re-evaluates only what is missing."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def get(self, key: str, compute: Callable[[], dict]) -> dict:
        from mergekit_led.atomic import write_text

        path = os.path.join(self.folder, f"{key}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        value = compute()
        write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
        return value


def _merge_and_evaluate(
    setting_config: dict,
    name: str,
    seed_dir: str,
    group: str,
    inputs: Inputs,
    test_sets,
    device: str,
    seed: int,
) -> Dict[str, float]:
    """Merge (``mergekit-led merge``), evaluate on test, remove the merged model
    (the config stays in ``<group>/configs``: merge it again to get the model)."""
    out = os.path.join(seed_dir, group, "merges", name)
    if os.path.exists(out):  # a merge of a killed run, not yet evaluated
        shutil.rmtree(out)
    path = merging.run_merge(
        setting_config,
        os.path.join(seed_dir, group, "configs", f"{name}.yml"),
        out,
        device=device,
        seed=seed,
        cache=inputs.cache,
    )
    metrics = evaluate.evaluate_checkpoint(path, test_sets, device, dtype=EVAL_DTYPE)
    shutil.rmtree(path)
    return metrics


def truncated_model(model_dir: str, layers: int, out_dir: str) -> str:
    """SmolLM2 cut to its first ``layers`` decoder layers (its own weights, tokenizer and
    chat template): the quick run's stand-in, about a third of the full model's cost."""
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_led.atomic import staged_directory

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    layers = min(layers, model.config.num_hidden_layers)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    with staged_directory(out_dir) as stage:
        model.save_pretrained(stage)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(stage)
    return out_dir


def _set_sizes(sets) -> Dict[str, int]:
    """Prompts per evaluation set of an ``Evaluator``."""
    return {prepared.set.name: len(prepared.prompt_ids) for prepared in sets.sets}


def run_real_seed(options: StudyOptions, seed: int) -> dict:
    """The whole study for one seed; writes and returns ``OUT/seed-N/result.json``."""
    from mergekit_led.demo.pipeline import (
        ABLATIONS,
        Laps,
        locate_kinds,
        sweep_trials,
        write_result,
    )
    from mergekit_led.environment import resolve_device
    from mergekit_led.realmodel.assets import fetch_real_assets, require_assets

    laps = Laps()
    lap = laps.lap
    device = resolve_device(options.device).type
    recipe = options.recipe
    seed_dir = os.path.join(os.path.abspath(options.out), f"seed-{seed}")
    _claim_seed_dir(seed_dir, _identity(options, seed))

    def log(message: str) -> None:
        options.log(f"[seed {seed}] {message}")

    require_assets(options.cache_dir)  # one line on how to fetch them, before any work
    assets = fetch_real_assets(options.cache_dir, split_seeds=[seed])  # this seed's split
    split_dir = assets.data_dir(seed)
    instruct = assets.model_dir
    if recipe.layers is not None:
        instruct = truncated_model(
            instruct,
            recipe.layers,
            os.path.join(os.path.abspath(options.out), f"smollm2-{recipe.layers}-layers"),
        )

    log(
        "family: safety (light alignment), math and code (heavy fine-tunes) from SmolLM2-135M-Instruct"
    )
    models_dir = os.path.join(seed_dir, "models")
    family = build_real_family(
        instruct, split_dir, models_dir, recipe.family, seed=seed, device=device, log=log
    )
    lap("train")

    data_dir = os.path.join(seed_dir, "data")
    location = location_sets(
        split_dir, os.path.join(models_dir, "benign_answers.jsonl"), recipe.location_samples, seed
    )
    location_files = {
        t: write_jsonl(
            os.path.join(data_dir, f"location_{t}.jsonl"), [s.as_dict() for s in location[t]]
        )
        for t in TASKS
    }
    val_spec = write_eval_spec(data_dir, split_dir, "val", recipe.sizes)
    test_spec = write_eval_spec(data_dir, split_dir, "test", recipe.sizes)
    inputs = Inputs(
        instruct,
        {t: family[t] for t in TASKS},
        location_files,
        os.path.join(seed_dir, "store-cache"),
        out_dtype=EVAL_DTYPE,
    )
    log("locating through the one-command flow")
    stores = locate_kinds(
        inputs, seed_dir, ablations=options.ablations, seed=seed, device=device, progress=False
    )
    lap("locate")

    log("selecting each method's setting on the validation split (mergekit-led sweep)")
    swept = merging.sweep_grid(
        recipe.grid, inputs, val_spec, os.path.join(seed_dir, "selection"), device=device, seed=seed
    )
    chosen, selection = sweep_trials(swept, METHODS, inputs)
    lap("select")

    log("evaluating the models and the selected merges on the test split (HarmBench)")
    test_sets = evaluate.evaluator(test_spec, instruct)
    cache = _Rows(os.path.join(seed_dir, "rows"))
    rows: List[dict] = []
    for name, key, sources in MODEL_ROWS:
        metrics = cache.get(
            key,
            lambda key=key: evaluate.evaluate_checkpoint(
                family[key], test_sets, device, dtype=EVAL_DTYPE
            ),
        )
        rows.append({"name": name, "kind": "model", "sources": list(sources), "metrics": metrics})
    merged = [(METHOD_NAMES[m], m, chosen[m], "selected") for m in METHODS]
    merged.append((AUTHORS_ROW, "led_merging", merging.AUTHORS_LED, "reference"))
    for name, method, setting, group in merged:
        metrics = cache.get(
            f"{group}-{setting.slug}",
            lambda setting=setting, group=group: _merge_and_evaluate(
                merging.merge_config(setting, inputs),
                setting.slug,
                seed_dir,
                group,
                inputs,
                test_sets,
                device,
                seed,
            ),
        )
        rows.append(
            {
                "name": name,
                "kind": "merge",
                "method": method,
                "sources": list(TASKS),
                "setting": setting.describe(),
                "metrics": metrics,
            }
        )
    lap("evaluate")

    log("measuring the world's properties")
    path = os.path.join(seed_dir, "properties.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            world_properties = json.load(f)
    else:
        from filelock import FileLock

        models = {"base": instruct, **family}
        # Several GB of flattened weights: seeds run side by side take turns here.
        with FileLock(os.path.join(os.path.abspath(options.out), ".properties.lock")):
            world_properties = properties.measure(
                models, stores["snip"], location["safety"], chosen, device=device
            )
        world_properties.pop("norm_instruct", None)  # the base is the instruct model: always 0
        from mergekit_led.atomic import write_text

        write_text(path, json.dumps(world_properties, indent=2, sort_keys=True) + "\n")
    lap("properties")

    ablation_rows: List[dict] = []
    if options.ablations:
        log("ablations of the selected LED-Merging setting")
        led_metrics = next(r["metrics"] for r in rows if r.get("method") == "led_merging")
        for part, variant, change in ABLATIONS:
            if change:
                setting = replace(chosen["led_merging"], **change)
                metrics = cache.get(
                    f"ablation-{setting.slug}",
                    lambda setting=setting: _merge_and_evaluate(
                        merging.merge_config(setting, inputs),
                        setting.slug,
                        seed_dir,
                        "ablations",
                        inputs,
                        test_sets,
                        device,
                        seed,
                    ),
                )
            else:
                metrics = led_metrics
            ablation_rows.append({"part": part, "variant": variant, "metrics": metrics})
        lap("ablations")

    result = {
        "seed": seed,
        "world": WORLD,
        "device": device,
        "quick": options.quick,
        "recipe": _identity(options, seed),
        "eval_sizes": {
            "val": _set_sizes(evaluate.evaluator(val_spec, instruct)),
            "test": _set_sizes(test_sets),
        },
        "rows": rows,
        "selection": selection,
        "properties": world_properties,
        "ablations": ablation_rows,
        "score_dtype": None,
        "timing": laps.finish(),
    }
    return write_result(seed_dir, result)


# --------------------------------------------------------------------------- seeds


def run_real_seeds(settings, on_seed_done=None) -> List[dict]:
    """The seeds of ``settings`` (a ``demo.pipeline.Settings``), one after the
    other (each uses every core); the ablations on the first seed only (the
    budget, docs/real_model_results.md)."""
    from mergekit_led.demo.pipeline import _log

    results = []
    for index, seed in enumerate(settings.seeds):
        options = StudyOptions(
            out=settings.out,
            cache_dir=settings.cache_dir,
            device=settings.device,
            quick=settings.quick,
            ablations=settings.ablations and index == 0,
            log=lambda message: _log(settings, message),
        )
        results.append(run_real_seed(options, seed))
        if on_seed_done:
            on_seed_done(results[-1])
    return results


def run_real_demo(settings, on_seed_done=None) -> dict:
    """``mergekit-led demo --world smollm2``: the demo's run and report over this world's seeds."""
    from dataclasses import replace as replaced

    from mergekit_led.demo.pipeline import run_demo

    return run_demo(replaced(settings, world=WORLD, jobs=1), on_seed_done, run_seeds=run_real_seeds)
