"""The steps a seed runs in either world (the toy, SmolLM2): locate the stores,
select each method's setting with the sweep, build the test rows and the
ablations, and time the stages.

Every step goes through the package's public paths. An LED config gives each
model's location data (``importance_data``) and its stores are computed by the
one-command flow (``prepare_config``) into the seed's own store cache, all of
them in the locate step, so the merges only read them. Only the data-free
``random`` scores of the ablations, which the flow does not compute, come from
``mergekit_led.locate`` and are given by path.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from mergekit_led.jsonl import write_jsonl
from studies.common import evaluate, merging
from studies.common.merging import METHOD_NAMES, TASKS, Inputs, MergeSetting
from studies.common.results import AblationRow, Metrics, Row, Selection, Trial
from studies.common.sample import Sample

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

TaskStores = Dict[str, Dict[str, str]]  # task -> {"model": store, "base": store}


class StageClock:
    """The stage clock: wall seconds per stage of a seed, then its total and CPU seconds."""

    def __init__(self) -> None:
        self.timing: Dict[str, float] = {}
        self._clock = time.perf_counter()
        self._cpu = time.process_time()

    def end_stage(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[f"{name}_s"] = round(now - self._clock, 1)
        self._clock = now

    def finish(self) -> Dict[str, float]:
        self.timing["total_s"] = round(sum(self.timing.values()), 1)
        self.timing["cpu_s"] = round(time.process_time() - self._cpu, 1)
        return self.timing


# --------------------------------------------------------------------------- files


def write_location_files(data_dir: str, location: Dict[str, Sequence[Sample]]) -> Dict[str, str]:
    """Each task's location set as ``data_dir/location_<task>.jsonl`` (what the LED
    configs name as ``importance_data``); task -> path."""
    return {
        task: write_jsonl(
            os.path.join(data_dir, f"location_{task}.jsonl"), [s.as_dict() for s in location[task]]
        )
        for task in TASKS
    }


def merge_in_group(
    seed_dir: str, group: str, name: str, config: dict, inputs: Inputs, *, device: str, seed: int
) -> str:
    """``config`` merged into ``seed_dir/<group>/merges/<name>``, the config kept as
    ``seed_dir/<group>/configs/<name>.yml`` (a seed's layout in both worlds)."""
    root = os.path.join(seed_dir, group)
    return merging.write_and_merge(
        config,
        os.path.join(root, "configs", f"{name}.yml"),
        os.path.join(root, "merges", name),
        device=device,
        seed=seed,
        cache=inputs.cache,
    )


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
) -> TaskStores:
    """The stores of ``setting``'s score kind and dtype: the importance of each
    fine-tuned model and of the base on each task's location set.

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
            merging.setting_config(setting, inputs),
            cache=inputs.cache,
            device=device,
            compute=True,
            progress=progress,
            report=log_line,
        )
        return merging.store_paths(prepared)
    from mergekit_led import locate

    kind = setting.scores
    stores: TaskStores = {}
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


def locate_kinds(
    inputs: Inputs,
    seed_dir: str,
    *,
    ablations: bool,
    seed: int,
    device: str,
    progress: bool,
    log_line: Optional[Callable[[str], None]] = None,
) -> Dict[str, TaskStores]:
    """The SNIP stores, and with ``ablations`` the Wanda and random ones too,
    per score kind; the data-free kinds' stores are recorded in ``inputs`` for
    the merges that name them by path."""
    stores: Dict[str, TaskStores] = {}
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


# --------------------------------------------------------------------------- select


def sweep_trials(
    swept, methods: Sequence[str], inputs: Inputs
) -> Tuple[Dict[str, MergeSetting], Selection]:
    """Each method's selected setting, and the selection (every swept setting
    with its validation metrics), from a ``SweepResult``."""
    chosen: Dict[str, MergeSetting] = {}
    trials: Dict[str, List[Trial]] = {}
    for method in methods:
        trials[method] = []
        for row in swept.rows:
            if row.method == method:
                setting = merging.from_sweep(row.setting, inputs)
                trials[method].append(
                    Trial(
                        setting=setting,
                        text=setting.describe(),
                        val=evaluate.study_metrics(row.metrics),
                        config=f"selection/sweep.jsonl row {row.index}",
                        selected=row.index == swept.per_method[method],
                    )
                )
        chosen[method] = merging.from_sweep(swept.rows[swept.per_method[method]].setting, inputs)
    selection = Selection(
        rule=swept.rule.describe(),
        trials=trials,
        selected={m: s.describe() for m, s in chosen.items()},
    )
    return chosen, selection


# --------------------------------------------------------------------------- rows


def model_row(name: str, sources: Sequence[str], metrics: Metrics) -> Row:
    return Row(name=name, kind="model", sources=list(sources), metrics=metrics)


def merge_row(name: str, setting: MergeSetting, metrics: Metrics) -> Row:
    """A merge of every task model with ``setting``."""
    return Row(
        name=name,
        kind="merge",
        method=setting.method,
        sources=list(TASKS),
        setting=setting.describe(),
        metrics=metrics,
    )


def selected_rows(
    methods: Sequence[str],
    chosen: Dict[str, MergeSetting],
    evaluate_selected: Callable[[str, MergeSetting], Metrics],
) -> List[Row]:
    """One row per method, its selected setting's merge on test."""
    return [merge_row(METHOD_NAMES[m], chosen[m], evaluate_selected(m, chosen[m])) for m in methods]


def ablation_rows(
    selected_led: MergeSetting,
    led_metrics: Metrics,
    evaluate_setting: Callable[[MergeSetting], Metrics],
) -> List[AblationRow]:
    """The paper's ablations of the selected LED setting; a row that changes
    nothing is the full method, the selected LED row itself."""
    return [
        AblationRow(
            part=part,
            variant=variant,
            metrics=evaluate_setting(replace(selected_led, **change)) if change else led_metrics,
        )
        for part, variant, change in ABLATIONS
    ]
