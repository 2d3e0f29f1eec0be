"""``python -m studies.smollm2``: the study on SmolLM2-135M-Instruct.

Per seed, every stage is cached in ``OUT/seed-N`` so a killed run resumes
where it stopped: the split (``make real-assets``' cache) → the family
(``models/<role>``, a folder appears only when complete) → the SNIP stores
(the one-command flow's store cache) → each method's setting selected on the
validation split (``mergekit-led sweep``, which resumes by itself) → each test
row (``rows/<name>.json``, its ``eval.json`` and ``answers.jsonl`` in ``rows/<name>/``: a
merge is made, evaluated, and removed with a log line, its config kept) → the world's
properties → the ablations. A seed's result has the toy's shape, so
``studies.common.study_report`` aggregates it.

Seeds run one after the other, each with every core (one 135M model at a time
fills two cores; two seeds at once would only share them).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

from mergekit_led.errors import StudyError
from studies.common import evaluate, merging, properties
from studies.common.fronts import front_choices
from studies.common.merging import TASKS, Inputs, MergeSetting
from studies.common.results import AUTHORS_ROW, CurvePoint, FrontPoint, Metrics, SeedResult
from studies.common.steps import (
    StageClock,
    ablation_rows,
    locate_kinds,
    merge_in_group,
    merge_row,
    model_row,
    selected_rows,
    sweep_trials,
    write_location_files,
)
from studies.smollm2.finetune import Checkpoint, build_real_family, read_curve
from studies.smollm2.recipe import (
    EVAL_DTYPE,
    FULL,
    METHODS,
    MODEL_ROWS,
    QUICK,
    WORLD,
    RealRecipe,
    SafetyGoal,
    location_sets,
    write_real_eval_spec,
)

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
        "curve_every": recipe.curve_every,
        "goal": asdict(recipe.goal) if recipe.goal else None,
        "front_points": recipe.front_points,
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


# The rows/ file name prefix of each group of merges (as the reported seeds cached them).
ROW_PREFIX = {"front": "front", "reference": "reference", "ablations": "ablation"}


def _read_cached(path: str, kind):
    """A stage's cached JSON file, checked against what this study writes there:
    a damaged or edited file is a one-line error, not a traceback."""
    from pydantic import TypeAdapter

    try:
        with open(path, encoding="utf-8") as f:
            return TypeAdapter(kind).validate_json(f.read())
    except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        reason = " ".join(str(error).split())
        raise StudyError(
            f"{path}: not a result this study wrote ({reason}); remove it to compute it again."
        ) from error


class _RowCache:
    """Test metrics cached one JSON file per row: a killed run re-evaluates only what is missing."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def report_dir(self, key: str) -> str:
        """Where row ``key``'s evaluation (``eval.json``, ``answers.jsonl``) is kept; asked
        for only while the row is computed, so what is there is a killed run's half."""
        folder = os.path.join(self.folder, key)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        return folder

    def get(self, key: str, compute: Callable[[], Metrics]) -> Metrics:
        from mergekit_led.atomic import write_text

        path = os.path.join(self.folder, f"{key}.json")
        if os.path.isfile(path):
            return _read_cached(path, Metrics)
        value = compute()
        write_text(path, json.dumps(value.model_dump(), indent=2, sort_keys=True) + "\n")
        return value


@dataclass
class RealSeed:
    """One seed of the study: its folder, its test sets, its cached rows."""

    options: StudyOptions
    seed: int
    seed_dir: str
    device: str
    inputs: Inputs
    test_sets: object  # an evaluation.Evaluator
    rows: _RowCache

    def merged_metrics(self, setting: MergeSetting, group: str) -> Metrics:
        """``setting`` merged (``mergekit-led merge``) and evaluated on test, once:
        the metrics are cached in ``rows/<row>.json``, the evaluation's ``eval.json`` and
        ``answers.jsonl`` kept in ``rows/<row>/``, and the merged model removed after,
        saying so (its config stays in ``<group>/configs``: merge it again to get it)."""
        key = f"{ROW_PREFIX[group]}-{setting.slug}"
        return self.rows.get(key, lambda: self._merge_and_evaluate(setting, group, key))

    def model_metrics(self, key: str, path: str) -> Metrics:
        """A fine-tuned model (kept in float32) evaluated on test like the merges, in
        bfloat16, once; its answers kept in ``rows/<key>/`` like a merge's."""
        return self.rows.get(
            key,
            lambda: evaluate.evaluate_checkpoint(
                path,
                self.test_sets,
                self.device,
                dtype=EVAL_DTYPE,
                report_dir=self.rows.report_dir(key),
            ),
        )

    def _merge_and_evaluate(self, setting: MergeSetting, group: str, key: str) -> Metrics:
        out = os.path.join(self.seed_dir, group, "merges", setting.slug)
        if os.path.exists(out):  # a merge of a killed run, not yet evaluated
            shutil.rmtree(out)
        path = merge_in_group(
            self.seed_dir,
            group,
            setting.slug,
            merging.setting_config(setting, self.inputs),
            self.inputs,
            device=self.device,
            seed=self.seed,
        )
        metrics = evaluate.evaluate_checkpoint(
            path,
            self.test_sets,
            self.device,
            dtype=EVAL_DTYPE,
            report_dir=self.rows.report_dir(key),
        )
        # A 135M merge per row would fill the disk over a study's dozens of rows.
        shutil.rmtree(path)
        self.options.log(
            f"[seed {self.seed}] {key}: merge evaluated and removed "
            f"(config in {group}/configs, answers in rows/{key}/)"
        )
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


def run_real_seed(options: StudyOptions, seed: int) -> SeedResult:
    """The whole study for one seed; writes and returns ``OUT/seed-N/result.json``."""
    from mergekit_led.environment import resolve_device

    clock = StageClock()
    device = resolve_device(options.device).type
    recipe = options.recipe
    seed_dir = os.path.join(os.path.abspath(options.out), f"seed-{seed}")
    _claim_seed_dir(seed_dir, _identity(options, seed))

    def log(message: str) -> None:
        options.log(f"[seed {seed}] {message}")

    split_dir, instruct = _split_and_model(options, seed)
    data_dir = os.path.join(seed_dir, "data")
    log("family: safety, math and code fine-tuned from SmolLM2-135M-Instruct")
    checkpoint = None
    if recipe.curve_every:
        curve_spec = write_real_eval_spec(data_dir, split_dir, "curve", recipe.sizes)
        checkpoint = safety_checkpoint(
            evaluate.load_evaluator(curve_spec, instruct), recipe.curve_every, log, recipe.goal
        )
    models_dir = os.path.join(seed_dir, "models")
    family = build_real_family(
        instruct,
        split_dir,
        models_dir,
        recipe.family,
        seed=seed,
        device=device,
        log=log,
        safety_checkpoint=checkpoint,
    )
    safety_curve = [
        CurvePoint(step=point["step"], metrics=evaluate.study_metrics(point["metrics"]))
        for point in read_curve(family["safety"])
    ]
    clock.end_stage("train")

    location = location_sets(
        split_dir, os.path.join(models_dir, "benign_answers.jsonl"), recipe.location_samples, seed
    )
    location_files = write_location_files(data_dir, location)
    val_spec = write_real_eval_spec(data_dir, split_dir, "val", recipe.sizes)
    test_spec = write_real_eval_spec(data_dir, split_dir, "test", recipe.sizes)
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
    clock.end_stage("locate")

    log("selecting each method's setting on the validation split (mergekit-led sweep)")
    swept = merging.sweep_grid(
        recipe.grid, inputs, val_spec, os.path.join(seed_dir, "selection"), device=device, seed=seed
    )
    chosen, selection = sweep_trials(swept, METHODS, inputs)
    clock.end_stage("select")

    log("evaluating the models and each method's validation front on the test split (HarmBench)")
    run = RealSeed(
        options,
        seed,
        seed_dir,
        device,
        inputs,
        evaluate.load_evaluator(test_spec, instruct),
        _RowCache(os.path.join(seed_dir, "rows")),
    )
    rows = [
        model_row(name, sources, run.model_metrics(key, family[key]))
        for name, key, sources in MODEL_ROWS
    ]
    fronts = {
        method: [
            FrontPoint(
                setting=choice.trial.setting,
                text=choice.trial.text,
                val=choice.trial.val,
                test=run.merged_metrics(choice.trial.setting, "front"),
                on_front=choice.on_front,
                selected=choice.trial.selected,
            )
            for choice in front_choices(selection.trials[method], recipe.front_points)
        ]
        for method in METHODS
    }
    # The one-rule selection is one of its method's front points: its row is cached.
    rows += selected_rows(METHODS, chosen, lambda m, s: run.merged_metrics(s, "front"))
    authors = run.merged_metrics(merging.AUTHORS_LED, "reference")
    rows.append(merge_row(AUTHORS_ROW, merging.AUTHORS_LED, authors))
    clock.end_stage("evaluate")

    log("measuring the world's properties")
    world_properties = _properties(
        run, {"base": instruct, **family}, stores["snip"], location, chosen
    )
    clock.end_stage("properties")

    ablations = []
    if options.ablations:
        log("ablations of the selected LED-Merging setting")
        led_metrics = next(row.metrics for row in rows if row.method == "led_merging")
        ablations = ablation_rows(
            chosen["led_merging"], led_metrics, lambda s: run.merged_metrics(s, "ablations")
        )
        clock.end_stage("ablations")

    return SeedResult(
        seed=seed,
        world=WORLD,
        device=device,
        quick=options.quick,
        recipe=_identity(options, seed),
        eval_sizes={
            "val": _set_sizes(evaluate.load_evaluator(val_spec, instruct)),
            "test": _set_sizes(run.test_sets),
        },
        rows=rows,
        selection=selection,
        properties=world_properties,
        ablations=ablations,
        fronts=fronts,
        safety_curve=safety_curve,
        timing=clock.finish(),
    ).write(seed_dir)


def safety_checkpoint(
    evaluator,
    every: int,
    log: Callable[[str], None] = lambda message: None,
    goal: Optional[SafetyGoal] = None,
):
    """How the safety fine-tune's training curve is measured: every ``every`` steps, a
    bfloat16 copy of the model in training (as every row is evaluated) on the curve's
    sets (``recipe.curve_spec_data``), as evaluate's flat metrics; each point logged.
    With ``goal``, training stops at the first checkpoint that meets it."""
    import copy

    import torch

    def measure(model, step: int) -> Dict[str, float]:
        twin = copy.deepcopy(model).to(getattr(torch, EVAL_DTYPE))
        metrics = evaluator.evaluate(twin, name="the safety fine-tune in training").metrics()
        log(
            f"safety step {step}: HarmBench val compliance {metrics['harmful_compliance']:.3f}, "
            f"over-refusal {metrics['over_refusal']:.3f}, math {metrics['math_accuracy']:.3f}, "
            f"code {metrics['code_accuracy']:.3f}"
        )
        return metrics

    return Checkpoint(every=every, measure=measure, stop=goal.met if goal else None)


def _split_and_model(options: StudyOptions, seed: int):
    """This seed's split folder, and the instruct model (cut to its first layers in --quick)."""
    from studies.smollm2.assets import fetch_real_assets, require_assets

    require_assets(options.cache_dir)  # one line on how to fetch them, before any work
    assets = fetch_real_assets(options.cache_dir, split_seeds=[seed])  # this seed's split
    instruct = assets.model_dir
    layers = options.recipe.layers
    if layers is not None:
        instruct = truncated_model(
            instruct, layers, os.path.join(os.path.abspath(options.out), f"smollm2-{layers}-layers")
        )
    return assets.data_dir(seed), instruct


def _properties(run: RealSeed, models, snip_stores, location, chosen) -> Dict[str, float]:
    """The world's properties, measured once per seed (``properties.json``)."""
    path = os.path.join(run.seed_dir, "properties.json")
    if os.path.isfile(path):
        return _read_cached(path, Dict[str, float])
    from filelock import FileLock

    from mergekit_led.atomic import write_text

    # Several GB of flattened weights: seeds run side by side take turns here.
    with FileLock(os.path.join(os.path.abspath(run.options.out), ".properties.lock")):
        measured = properties.measure(
            models, snip_stores, location["safety"], chosen, device=run.device
        )
    measured.pop("norm_instruct", None)  # the base is the instruct model: always 0
    write_text(path, json.dumps(measured, indent=2, sort_keys=True) + "\n")
    return measured


# --------------------------------------------------------------------------- seeds


def run_real_seeds(settings, on_seed_done=None) -> List[SeedResult]:
    """The seeds of ``settings`` (a ``studies.toy.pipeline.Settings``), one after the
    other (each uses every core); the ablations on the first seed only (the
    budget, docs/real_model_results.md)."""
    from studies.toy.pipeline import phase_log

    results = []
    for index, seed in enumerate(settings.seeds):
        options = StudyOptions(
            out=settings.out,
            cache_dir=settings.cache_dir,
            device=settings.device,
            quick=settings.quick,
            ablations=settings.ablations and index == 0,
            log=lambda message: phase_log(settings, message),
        )
        results.append(run_real_seed(options, seed))
        if on_seed_done:
            on_seed_done(results[-1])
    return results


def run_real_demo(settings, on_seed_done=None):
    """``python -m studies.smollm2``: the toy's run and report over this world's seeds."""
    from dataclasses import replace as replaced

    from studies.toy.pipeline import run_demo

    return run_demo(replaced(settings, world=WORLD, jobs=1), on_seed_done, run_seeds=run_real_seeds)
