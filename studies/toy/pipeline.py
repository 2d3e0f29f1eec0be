"""The demo end to end, per seed and over seeds.

Per seed (``run_seed``, step by step): the toy world and its files -> the model
family -> locate -> select each merge method's setting on the validation split
-> evaluate on test -> the selected LED setting again from bfloat16 stores ->
measure the world's properties -> (ablations). The steps both worlds share are
in ``demo.steps``. Over seeds (``run_demo``): every seed in its own process (one
thread each, so a seed's numbers do not depend on how many run at once), then
``summary`` aggregates and ``report`` writes the files.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mergekit_led.environment import resolve_device
from mergekit_led.errors import DemoOptionError
from studies.common import evaluate, merging, properties, score_dtype, study_report
from studies.common.merging import TASKS, Inputs, MergeSetting
from studies.common.results import (
    AUTHORS_ROW,
    BFLOAT16_ROW,
    Metrics,
    Row,
    RunTiming,
    SeedResult,
    Summary,
)
from studies.common.sample import Sample
from studies.common.steps import (
    StageClock,
    TaskStores,
    ablation_rows,
    locate_kinds,
    locate_stores,
    merge_in_group,
    merge_row,
    model_row,
    selected_rows,
    sweep_trials,
    write_location_files,
)
from studies.common.summary import summarize
from studies.toy import eval_spec, train, world

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
STORE_CACHE = "store-cache"  # the flow's store cache, inside each seed's folder


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
    world: str = (
        "toy"  # the report's world; "smollm2" runs through studies.smollm2.study.run_real_demo
    )
    cache_dir: Optional[str] = None  # smollm2: the real assets' cache (make real-assets)

    @property
    def recipe(self) -> train.Recipe:
        return QUICK if self.quick else FULL


def phase_log(settings: Settings, message: str) -> None:
    if settings.progress:
        from tqdm.auto import tqdm

        tqdm.write(message)  # between the progress bars
    elif settings.phases:
        print(message, flush=True)


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


# --------------------------------------------------------------------------- one seed


@dataclass
class ToyData:
    """A toy seed's world and the files its steps read."""

    world: world.World
    location: Dict[str, List[Sample]]  # per task
    location_files: Dict[str, str]
    eval_sizes: Dict[str, Dict[str, int]]  # split -> set -> prompts
    val_spec: object  # EvalSpec
    test_spec: object


@dataclass
class ToySeed:
    """One toy seed's run: where it writes, how it logs, the stages' clock."""

    settings: Settings
    seed: int
    seed_dir: str
    device: str
    clock: StageClock

    def log(self, message: str) -> None:
        phase_log(self.settings, f"[seed {self.seed}] {message}")

    def merge(
        self,
        setting: MergeSetting,
        inputs: Inputs,
        group: str,
        name: Optional[str] = None,
        config: Optional[dict] = None,
    ) -> str:
        """``setting`` merged into ``<group>/merges/<name>`` (its slug by default),
        its config (``config``, else the setting's) in ``<group>/configs/<name>.yml``."""
        return merge_in_group(
            self.seed_dir,
            group,
            name or setting.slug,
            config or merging.setting_config(setting, inputs),
            inputs,
            device=self.device,
            seed=self.seed,
        )


def run_seed(settings: Settings, seed: int) -> SeedResult:
    """The whole pipeline for one seed; writes ``<out>/seed-<seed>/result.json``."""
    _quiet_libraries()
    device = resolve_device(settings.device).type
    train.set_determinism(seed, threads=1 if device == "cpu" else None)
    seed_dir = os.path.join(os.path.abspath(settings.out), f"seed-{seed}")
    shutil.rmtree(seed_dir, ignore_errors=True)
    os.makedirs(seed_dir)
    run = ToySeed(settings, seed, seed_dir, device, StageClock())

    data = _world_data(run)
    run.log("training base, instruct, safety (light alignment), math and code")
    family = train.train_family(
        data.world,
        settings.recipe,
        os.path.join(seed_dir, "models"),
        seed=seed,
        device=device,
        progress=settings.progress,
    )
    run.clock.end_stage("train")

    run.log(
        "locating: SNIP of every fine-tuned model and of the base on each task's location "
        f"set, through the one-command flow (store cache seed-{seed}/{STORE_CACHE})"
    )
    inputs = Inputs(
        family["base"],
        {t: family[t] for t in TASKS},
        data.location_files,
        os.path.join(seed_dir, STORE_CACHE),
    )
    stores = locate_kinds(
        inputs,
        seed_dir,
        ablations=settings.ablations,
        seed=seed,
        device=device,
        progress=settings.progress,
        log_line=run.log if settings.progress else None,
    )
    run.clock.end_stage("locate")

    run.log("selecting each method's setting on the validation split (mergekit-led sweep)")
    swept = merging.sweep_grid(
        merging.grid(settings.quick),
        inputs,
        data.val_spec,
        os.path.join(seed_dir, "selection"),
        device=device,
        seed=seed,
    )
    chosen, selection = sweep_trials(swept, merging.METHODS, inputs)
    run.clock.end_stage("select")

    run.log("evaluating every model and the selected merges on the test split")
    test_sets = evaluate.load_evaluator(data.test_spec, family["base"])

    def on_test(path: str) -> Metrics:
        return evaluate.evaluate_checkpoint(path, test_sets, device)

    rows = [model_row(name, sources, on_test(family[key])) for name, key, sources in MODEL_ROWS]
    best = {m: swept.rows[swept.per_method[m]].config for m in merging.METHODS}  # the sweep's
    rows += selected_rows(
        merging.METHODS,
        chosen,
        lambda m, s: on_test(run.merge(s, inputs, "selected", m, config=best[m])),
    )
    authors = on_test(run.merge(merging.AUTHORS_LED, inputs, "reference"))
    rows.append(merge_row(AUTHORS_ROW, merging.AUTHORS_LED, authors))
    run.clock.end_stage("evaluate")

    half_row, half_stores = _bfloat16_row(run, inputs, chosen["led_merging"], on_test)
    rows.append(half_row)
    dtype_agreement = score_dtype.measure(stores["snip"], half_stores)
    run.clock.end_stage("bfloat16")

    run.log("measuring the world's properties")
    world_properties = properties.measure(
        family, stores["snip"], data.location["safety"], chosen, device=device
    )
    run.clock.end_stage("properties")

    ablations = []
    if settings.ablations:
        run.log("ablations of the selected LED-Merging setting")
        led_metrics = next(row.metrics for row in rows if row.method == "led_merging")
        ablations = ablation_rows(
            chosen["led_merging"], led_metrics, lambda s: on_test(run.merge(s, inputs, "ablations"))
        )
        run.clock.end_stage("ablations")

    return SeedResult(
        seed=seed,
        device=device,
        quick=settings.quick,
        recipe=asdict(settings.recipe),
        eval_sizes=data.eval_sizes,
        rows=rows,
        selection=selection,
        properties=world_properties,
        ablations=ablations,
        score_dtype=dtype_agreement,
        timing=run.clock.finish(),
    ).write(seed_dir)


def _world_data(run: ToySeed) -> ToyData:
    """The seed's world, its location sets and its val and test EVAL.yml files."""
    recipe = run.settings.recipe
    the_world = world.build_world(
        run.seed, code_items=recipe.code_items, chat_skills=recipe.chat_skills
    )
    data_dir = os.path.join(run.seed_dir, "data")
    location = the_world.location_sets(recipe.location_samples)
    location_files = write_location_files(data_dir, location)
    limit = QUICK_EVAL_ITEMS if run.settings.quick else None
    val = eval_spec.eval_sets(the_world, "val", limit)
    test = eval_spec.eval_sets(the_world, "test", limit)
    return ToyData(
        world=the_world,
        location=location,
        location_files=location_files,
        eval_sizes={
            split: {name: len(samples) for name, samples in sets.items()}
            for split, sets in (("val", val), ("test", test))
        },
        val_spec=eval_spec.write_toy_eval_spec(data_dir, "val", val),
        test_spec=eval_spec.write_toy_eval_spec(data_dir, "test", test),
    )


def _bfloat16_row(
    run: ToySeed, inputs: Inputs, selected: MergeSetting, on_test: Callable[[str], Metrics]
) -> Tuple[Row, TaskStores]:
    """The selected LED setting again from bfloat16 stores, evaluated on test, and
    those stores (their N_i are compared with the float32 stores')."""
    run.log(
        "the selected LED-Merging setting from bfloat16 stores: merged, evaluated, its N_i compared"
    )
    half = replace(selected, score_dtype="bfloat16")
    stores = locate_stores(
        inputs,
        half,
        os.path.join(run.seed_dir, "scores"),
        seed=run.seed,
        device=run.device,
        progress=run.settings.progress,
        log_line=run.log if run.settings.progress else None,
    )
    return merge_row(BFLOAT16_ROW, half, on_test(run.merge(half, inputs, "score-dtype"))), stores


def _quiet_libraries() -> None:
    """No per-checkpoint progress bars from transformers / datasets (dozens per seed)."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


# --------------------------------------------------------------------------- seeds


def _run_seed_quietly(settings: Settings, seed: int) -> SeedResult:
    """A worker process: no progress bars, mergekit's logging and warnings muted."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ["TQDM_DISABLE"] = "1"
    return run_seed(replace(settings, progress=False, phases=settings.progress), seed)


SeedDone = Callable[[SeedResult], None]
SeedsRunner = Callable[[Settings, Optional[SeedDone]], List[SeedResult]]


def run_demo(
    settings: Settings,
    on_seed_done: Optional[SeedDone] = None,
    *,
    run_seeds: Optional[SeedsRunner] = None,
) -> Summary:
    """Every seed (``settings.jobs`` at a time), then the aggregated report.

    ``run_seeds`` runs another world's seeds (``studies.smollm2.study.run_real_demo``
    passes its own), so this layer does not import the worlds above it."""
    settings = replace(settings, device=resolve_device(settings.device).type)
    study_report.require_matplotlib()
    out = os.path.abspath(settings.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise DemoOptionError(f"--out {settings.out}: exists and is not a folder.")
    os.makedirs(out, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    results: List[SeedResult] = []
    if run_seeds is not None:
        results = run_seeds(settings, on_seed_done)
    elif settings.jobs <= 1 or len(settings.seeds) == 1:
        for seed in settings.seeds:
            results.append(run_seed(settings, seed))
            if on_seed_done:
                on_seed_done(results[-1])
    else:
        phase_log(
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
                phase_log(
                    settings,
                    f"[seed {results[-1].seed}] done in {results[-1].timing['total_s']:.0f} s",
                )
                if on_seed_done:
                    on_seed_done(results[-1])
    results.sort(key=lambda r: settings.seeds.index(r.seed))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing = RunTiming(
        wall_s=round(time.perf_counter() - start, 1),
        cpu_s=round(time.process_time() - cpu_start + children.ru_utime + children.ru_stime, 1),
        jobs=settings.jobs,
    )
    summary = summarize(
        results, timing=timing, quick=settings.quick, device=settings.device, world=settings.world
    )
    summary.paths = study_report.write_reports(out, summary, results)
    return summary
