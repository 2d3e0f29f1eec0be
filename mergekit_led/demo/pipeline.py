"""The demo end to end, per seed and over seeds.

Per seed: world -> model family -> locate -> select each merge method's
setting on the validation split -> evaluate on test -> the selected LED
setting again from bfloat16 stores -> measure the world's properties ->
(ablations). Over seeds: every seed in its own process (one thread each, so a
seed's numbers do not depend on how many run at once), then ``report``
aggregates.

Every step goes through the package's public paths. Every merge is a mergekit
YAML config run the way ``mergekit-led merge`` runs it; an LED config gives
each model's location data (``importance_data``) and its stores are computed by
the one-command flow (``prepare_config``) into the seed's own store cache
(``seed-N/store-cache``), all of them in the locate step, so the merges only
read them. Only the data-free ``random`` scores of the ablations, which the
flow does not compute, come from ``mergekit_led.locate`` and are given by path.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Callable, Dict, List, Optional, Sequence

from mergekit_led.demo import (
    evaluate,
    merging,
    properties,
    report,
    score_dtype,
    train,
    world,
)
from mergekit_led.demo.merging import METHOD_NAMES, TASKS, Inputs, MergeSetting
from mergekit_led.environment import resolve_device
from mergekit_led.errors import DemoOptionError

FULL = train.Recipe(
    train.ModelSize(64, 2, 4, 192),
    pretrain_steps=800,
    pretrain_lr=0.004,
    instruct_steps=100,
    alignment_steps=40,
    utility_steps=250,
    batch_size=32,
    location_samples=64,
    code_items=900,
)
QUICK = train.Recipe(
    train.ModelSize(32, 1, 2, 64),
    pretrain_steps=60,
    instruct_steps=10,
    alignment_steps=5,
    utility_steps=15,
    batch_size=16,
    location_samples=8,
    code_items=200,
)

QUICK_EVAL_ITEMS = 16  # per evaluation set in --quick mode

MODEL_ROWS = (
    ("Base", "base", ()),
    ("Instruct", "instruct", ()),
    ("Safety (Instruct + alignment)", "safety", ("safety",)),
    ("Math", "math", ("math",)),
    ("Code", "code", ("code",)),
)
AUTHORS_ROW = "LED-Merging (authors' ratios, not tuned)"
STORE_CACHE = "store-cache"  # the flow's store cache, inside each seed's folder
# The ablations of the paper's Table 4, each one component of the selected LED setting changed.
ABLATIONS = (
    ("Location", "Random", {"scores": "random"}),
    ("Location", "Wanda", {"scores": "wanda"}),
    ("Location", "SNIP", {}),
    ("Election", "01", {"election": "model_only"}),
    ("Election", "10", {"election": "base_only"}),
    ("Election", "11", {}),
    ("Disjoint", "✗", {"disjoint": False}),
    ("Disjoint", "✓", {}),
)


@dataclass
class Settings:
    out: str = "demo-output"
    seeds: Sequence[int] = (0, 1, 2)
    jobs: int = 1
    device: str = "cpu"
    quick: bool = False
    ablations: bool = False
    progress: bool = True  # progress bars and one line per phase
    phases: bool = False  # one line per phase even without bars (seeds running in parallel)
    world: str = "toy"  # the report's world; "smollm2" runs through realmodel.study.run_real_demo
    cache_dir: Optional[str] = None  # smollm2: the real assets' cache (make real-assets)

    @property
    def recipe(self) -> train.Recipe:
        return QUICK if self.quick else FULL


def _log(settings: Settings, message: str) -> None:
    if settings.progress:
        from tqdm.auto import tqdm

        tqdm.write(message)  # between the progress bars
    elif settings.phases:
        print(message, flush=True)


def write_jsonl(path: str, samples: Sequence[world.Sample]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.as_dict()) + "\n")
    return path


def parse_seeds(text: str) -> List[int]:
    """``"N"`` (seeds 0..N-1), ``"A-B"`` (inclusive) or ``"a,b,c"``."""
    text = text.strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text:
            first, last = (int(part) for part in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise DemoOptionError(
            f"--seeds {text!r}: expected a count N, a range A-B or a list like 0,4,7."
        ) from None
    if not seeds or any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise DemoOptionError(
            f"--seeds {text!r}: needs at least one seed, no negative or repeated seed."
        )
    return seeds


def check_jobs(jobs: int) -> int:
    if jobs < 1:
        raise DemoOptionError(f"--jobs {jobs}: must be at least 1.")
    return jobs


# --------------------------------------------------------------------------- locate


def locate_stores(
    inputs: Inputs,
    setting: MergeSetting,
    root: str,
    *,
    seed: int,
    device: str,
    progress: bool,
    log_line: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, str]]:
    """The stores of ``setting``'s score kind and dtype: the importance of each
    fine-tuned model and of the base on each task's location set,
    ``{task: {"model": store, "base": store}}``.

    Data scores go through the one-command flow: ``setting``'s LED config is
    prepared (``mergekit-led prepare``), which computes every store it asks for
    into ``inputs.cache``; the densities change no store, so every later config
    of that kind and dtype finds them there. ``random`` scores, which need no
    data and which the flow refuses, are computed by ``locate`` under
    ``root/random/<task>/``, each store with its own seed, so the two sets an
    election intersects are independent draws (one ``locate_seed`` per model
    would give a model's store and its base store the same draw: random scores
    depend only on the seed and the weights' shapes)."""
    if setting.scores in merging.FLOW_SCORES:
        prepared = merging.prepare_stores(
            merging.merge_config(setting, inputs),
            cache=inputs.cache,
            device=device,
            compute=True,
            progress=progress,
            report=log_line,
        )
        return merging.store_paths(prepared)
    from mergekit_led import locate

    kind = setting.scores
    stores: Dict[str, Dict[str, str]] = {}
    for index, task in enumerate(TASKS):
        stores[task] = {}
        for role, model in (("model", inputs.finetuned[task]), ("base", inputs.base)):
            stores[task][role] = locate(
                model,
                None,
                os.path.join(root, kind, task, "base" if role == "base" else task),
                score=kind,
                device=device,
                dtype=merging.LOCATE_OPTIONS["dtype"],
                seed=seed * 100 + 2 * index + (role == "base"),
                overwrite=True,
                progress=progress,
            )
    return stores


# --------------------------------------------------------------------------- shared by the worlds


def locate_kinds(
    inputs: Inputs,
    seed_dir: str,
    *,
    ablations: bool,
    seed: int,
    device: str,
    progress: bool,
    log_line: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, Dict[str, str]]]:
    """The SNIP stores, and with ``ablations`` the Wanda and random ones too:
    ``{kind: {task: {"model": store, "base": store}}}``; the data-free kinds'
    stores are recorded in ``inputs`` for the merges that name them by path."""
    stores: Dict[str, Dict[str, Dict[str, str]]] = {}
    for kind in ("snip", "wanda", "random") if ablations else ("snip",):
        stores[kind] = locate_stores(
            inputs,
            replace(merging.AUTHORS_LED, scores=kind),
            os.path.join(seed_dir, "scores"),
            seed=seed,
            device=device,
            progress=progress,
            log_line=log_line,
        )
        if kind in merging.DATA_FREE_SCORES:
            inputs.stores[kind] = stores[kind]
    return stores


class Laps:
    """Wall seconds per stage of a seed, then its total and CPU seconds."""

    def __init__(self) -> None:
        self.timing: Dict[str, float] = {}
        self._clock = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[f"{name}_s"] = round(now - self._clock, 1)
        self._clock = now

    def finish(self) -> Dict[str, float]:
        self.timing["total_s"] = round(sum(self.timing.values()), 1)
        self.timing["cpu_s"] = round(time.process_time() - self._cpu, 1)
        return self.timing


def sweep_trials(swept, methods: Sequence[str], inputs: Inputs):
    """Each method's selected setting and its trials (every swept setting with its
    validation metrics), from a ``SweepResult``."""
    chosen: Dict[str, MergeSetting] = {}
    trials: Dict[str, List[dict]] = {}
    for method in methods:
        trials[method] = []
        for row in swept.rows:
            if row.method == method:
                setting = merging.from_sweep(row.setting, inputs)
                trials[method].append(
                    {
                        "setting": setting.as_dict(),
                        "text": setting.describe(),
                        "val": evaluate.demo_metrics(row.metrics),
                        "config": f"selection/sweep.jsonl row {row.index}",
                        "selected": row.index == swept.per_method[method],
                    }
                )
        chosen[method] = merging.from_sweep(swept.rows[swept.per_method[method]].setting, inputs)
    selection = {
        "rule": swept.rule.describe(),
        "trials": trials,
        "selected": {m: s.describe() for m, s in chosen.items()},
    }
    return chosen, selection


def write_result(seed_dir: str, result: dict) -> dict:
    """``seed_dir/result.json``: what the report aggregates."""
    with open(os.path.join(seed_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.write("\n")
    return result


# --------------------------------------------------------------------------- one seed


def run_seed(settings: Settings, seed: int) -> dict:
    """The whole pipeline for one seed; writes ``<out>/seed-<seed>/result.json``."""
    laps = Laps()
    _quiet_libraries()
    device = resolve_device(settings.device).type
    train.set_determinism(seed, threads=1 if device == "cpu" else None)
    recipe = settings.recipe
    seed_dir = os.path.join(os.path.abspath(settings.out), f"seed-{seed}")
    shutil.rmtree(seed_dir, ignore_errors=True)
    os.makedirs(seed_dir)
    lap = laps.lap

    def log(message: str) -> None:
        _log(settings, f"[seed {seed}] {message}")

    the_world = world.build_world(
        seed, code_items=recipe.code_items, chat_skills=recipe.chat_skills
    )
    data_dir = os.path.join(seed_dir, "data")
    location = the_world.location_sets(recipe.location_samples)
    location_files = {
        t: write_jsonl(os.path.join(data_dir, f"location_{t}.jsonl"), location[t]) for t in TASKS
    }
    limit = QUICK_EVAL_ITEMS if settings.quick else None
    val = evaluate.eval_sets(the_world, "val", limit)
    test = evaluate.eval_sets(the_world, "test", limit)
    val_spec = evaluate.write_eval_spec(data_dir, "val", val)
    test_spec = evaluate.write_eval_spec(data_dir, "test", test)

    log("training base, instruct, safety (light alignment), math and code")
    family = train.build_family(
        the_world,
        recipe,
        os.path.join(seed_dir, "models"),
        seed=seed,
        device=device,
        progress=settings.progress,
    )
    lap("train")

    log(
        "locating: SNIP of every fine-tuned model and of the base on each task's location "
        f"set, through the one-command flow (store cache seed-{seed}/{STORE_CACHE})"
    )
    inputs = Inputs(
        family["base"],
        {t: family[t] for t in TASKS},
        location_files,
        os.path.join(seed_dir, STORE_CACHE),
    )
    stores = locate_kinds(
        inputs,
        seed_dir,
        ablations=settings.ablations,
        seed=seed,
        device=device,
        progress=settings.progress,
        log_line=log if settings.progress else None,
    )
    lap("locate")

    log("selecting each method's setting on the validation split (mergekit-led sweep)")
    test_sets = evaluate.evaluator(test_spec, family["base"])
    swept = merging.sweep_grid(
        merging.grid(settings.quick),
        inputs,
        val_spec,
        os.path.join(seed_dir, "selection"),
        device=device,
        seed=seed,
    )
    chosen, selection = sweep_trials(swept, merging.METHODS, inputs)
    chosen_paths: Dict[str, str] = {}
    for method in merging.METHODS:
        best = swept.rows[swept.per_method[method]]
        chosen_paths[method] = merging.run_merge(
            best.config,
            os.path.join(seed_dir, "selected", "configs", f"{method}.yml"),
            os.path.join(seed_dir, "selected", "merges", method),
            device=device,
            seed=seed,
            cache=inputs.cache,
        )
    lap("select")

    log("evaluating every model and the selected merges on the test split")
    rows: List[dict] = []
    for name, key, sources in MODEL_ROWS:
        rows.append(
            {
                "name": name,
                "kind": "model",
                "sources": list(sources),
                "metrics": evaluate.evaluate_checkpoint(family[key], test_sets, device),
            }
        )
    for method in merging.METHODS:
        rows.append(
            {
                "name": METHOD_NAMES[method],
                "kind": "merge",
                "method": method,
                "sources": list(TASKS),
                "setting": chosen[method].describe(),
                "metrics": evaluate.evaluate_checkpoint(chosen_paths[method], test_sets, device),
            }
        )
    authors = _merge(merging.AUTHORS_LED, inputs, seed_dir, "reference", device, seed)
    rows.append(
        {
            "name": AUTHORS_ROW,
            "kind": "merge",
            "method": "led_merging",
            "sources": list(TASKS),
            "setting": merging.AUTHORS_LED.describe(),
            "metrics": evaluate.evaluate_checkpoint(authors, test_sets, device),
        }
    )
    lap("evaluate")

    log(
        "the selected LED-Merging setting from bfloat16 stores: merged, evaluated, its N_i compared"
    )
    half = replace(chosen["led_merging"], score_dtype="bfloat16")
    half_stores = locate_stores(
        inputs,
        half,
        os.path.join(seed_dir, "scores"),
        seed=seed,
        device=device,
        progress=settings.progress,
        log_line=log if settings.progress else None,
    )
    rows.append(
        {
            "name": report.BFLOAT16_ROW,
            "kind": "merge",
            "method": "led_merging",
            "sources": list(TASKS),
            "setting": half.describe(),
            "metrics": evaluate.evaluate_checkpoint(
                _merge(half, inputs, seed_dir, "score-dtype", device, seed), test_sets, device
            ),
        }
    )
    dtype_agreement = score_dtype.measure(stores["snip"], half_stores)
    lap("bfloat16")

    log("measuring the world's properties")
    world_properties = properties.measure(
        family, stores["snip"], location["safety"], chosen, device=device
    )
    lap("properties")

    ablation_rows: List[dict] = []
    if settings.ablations:
        log("ablations of the selected LED-Merging setting")
        led_row = next(r for r in rows if r.get("method") == "led_merging")
        for part, variant, change in ABLATIONS:
            if change:
                setting = replace(chosen["led_merging"], **change)
                path = _merge(setting, inputs, seed_dir, "ablations", device, seed)
                metrics = evaluate.evaluate_checkpoint(path, test_sets, device)
            else:
                metrics = led_row["metrics"]  # the full method: the selected LED row
            ablation_rows.append({"part": part, "variant": variant, "metrics": metrics})
        lap("ablations")

    result = {
        "seed": seed,
        "device": device,
        "quick": settings.quick,
        "recipe": asdict(recipe),
        "eval_sizes": {
            split: {k: len(v) for k, v in sets.items()}
            for split, sets in (("val", val), ("test", test))
        },
        "rows": rows,
        "selection": selection,
        "properties": world_properties,
        "ablations": ablation_rows,
        "score_dtype": dtype_agreement,
        "timing": laps.finish(),
    }
    return write_result(seed_dir, result)


def _quiet_libraries() -> None:
    """No per-checkpoint progress bars from transformers / datasets (dozens per seed)."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _merge(
    setting: MergeSetting, inputs: Inputs, seed_dir: str, group: str, device: str, seed: int
) -> str:
    root = os.path.join(seed_dir, group)
    return merging.run_merge(
        merging.merge_config(setting, inputs),
        os.path.join(root, "configs", f"{setting.slug}.yml"),
        os.path.join(root, "merges", setting.slug),
        device=device,
        seed=seed,
        cache=inputs.cache,
    )


# --------------------------------------------------------------------------- seeds


def _run_seed_quietly(settings: Settings, seed: int) -> dict:
    """A worker process: no progress bars, mergekit's logging and warnings muted."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ["TQDM_DISABLE"] = "1"
    return run_seed(replace(settings, progress=False, phases=settings.progress), seed)


SeedsRunner = Callable[[Settings, Optional[Callable[[dict], None]]], List[dict]]


def run_demo(
    settings: Settings,
    on_seed_done: Optional[Callable[[dict], None]] = None,
    *,
    run_seeds: Optional[SeedsRunner] = None,
) -> dict:
    """Every seed (``settings.jobs`` at a time), then the aggregated report.

    ``run_seeds`` runs another world's seeds (``realmodel.study.run_real_demo``
    passes its own), so this layer does not import the worlds above it."""
    settings = replace(settings, device=resolve_device(settings.device).type)
    report.require_matplotlib()
    out = os.path.abspath(settings.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DemoOptionError(f"--out {settings.out}: exists and is not a folder.")
    os.makedirs(out, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    results: List[dict] = []
    if run_seeds is not None:
        results = run_seeds(settings, on_seed_done)
    elif settings.jobs <= 1 or len(settings.seeds) == 1:
        for seed in settings.seeds:
            results.append(run_seed(settings, seed))
            if on_seed_done:
                on_seed_done(results[-1])
    else:
        _log(
            settings,
            f"running seeds {', '.join(map(str, settings.seeds))}, {settings.jobs} at a time "
            "(one process and one thread each)",
        )
        with ProcessPoolExecutor(
            max_workers=settings.jobs, mp_context=get_context("spawn")
        ) as pool:
            futures = [pool.submit(_run_seed_quietly, settings, seed) for seed in settings.seeds]
            for future in as_completed(futures):
                results.append(future.result())
                _log(
                    settings,
                    f"[seed {results[-1]['seed']}] done in {results[-1]['timing']['total_s']:.0f} s",
                )
                if on_seed_done:
                    on_seed_done(results[-1])
    results.sort(key=lambda r: settings.seeds.index(r["seed"]))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(time.process_time() - cpu_start + children.ru_utime + children.ru_stime, 1),
        "jobs": settings.jobs,
    }
    summary = report.summarize(
        results, timing=timing, quick=settings.quick, device=settings.device, world=settings.world
    )
    summary["paths"] = report.write_reports(out, summary, results)
    return summary
