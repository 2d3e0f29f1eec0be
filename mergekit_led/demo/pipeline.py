"""The demo end to end: world -> model family -> locate -> merge -> evaluate -> report.

Every step goes through the package's public paths: ``mergekit_led.locate``
for the scores, mergekit's YAML configs run by ``mergekit_led.merge.merge_config``
(what ``mergekit-led merge`` / ``mergekit-yaml`` run) for every merge.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List

import torch
import yaml

from mergekit_led.demo import evaluate as ev
from mergekit_led.demo import report as rp
from mergekit_led.demo import train as tr
from mergekit_led.demo import world as wd

TASKS = ("safety", "math", "code")


@dataclass
class Sizes:
    model: tr.ModelSize
    pretrain_steps: int
    finetune_steps: int
    batch_size: int
    location_samples: int
    code_items: int
    pretrain_lr: float = 3e-3
    finetune_lr: float = 0.05  # SGD with momentum (see train.train)
    chat_skills: float = 0.5  # share of skill items the base saw in the chat format


FULL = Sizes(tr.ModelSize(64, 2, 4, 192), pretrain_steps=1500, finetune_steps=300, batch_size=32,
             location_samples=64, code_items=1200)
QUICK = Sizes(tr.ModelSize(32, 1, 2, 64), pretrain_steps=100, finetune_steps=30, batch_size=16,
              location_samples=8, code_items=300)


@dataclass
class Settings:
    out: str = "demo-output"
    seed: int = 0
    device: str = "cpu"
    quick: bool = False
    # LED-Merging (the authors' scripts: safety 0.1, utility 0.4-0.5; weights 1)
    led_density: Dict[str, float] = field(default_factory=lambda: {"safety": 0.1, "math": 0.4, "code": 0.4})
    led_weight: Dict[str, float] = field(default_factory=lambda: {"safety": 1.0, "math": 1.0, "code": 1.0})
    # baselines
    ta_weight: float = 1.0
    ties_density: float = 0.5
    ties_weight: float = 1.0
    methods: tuple = ("task_arithmetic", "ties", "breadcrumbs", "model_stock", "led_merging")
    study: bool = False
    progress: bool = True

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from mergekit_led.errors import LEDError

        raise LEDError("--device cuda was asked for, but torch sees no CUDA device.")
    return device


def _log(settings: Settings, message: str) -> None:
    if settings.progress:
        from tqdm.auto import tqdm

        tqdm.write(message)


def write_jsonl(path: str, samples: List[wd.Sample]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.as_dict()) + "\n")
    return path


# --------------------------------------------------------------------------- family


def build_family(world: wd.World, settings: Settings, root: str) -> Dict[str, str]:
    """Pre-train the base, tune safety / math / code from it; return name -> path."""
    sizes = settings.sizes
    tokenizer = tr.make_tokenizer()
    seed = settings.seed
    paths = {name: os.path.join(root, name) for name in ("base", *TASKS)}
    base = tr.new_model(tokenizer, sizes.model, seed)
    tr.train(base, tokenizer, world.pretrain, steps=sizes.pretrain_steps, lr=sizes.pretrain_lr, seed=seed,
             batch_size=sizes.batch_size, device=settings.device, desc="pre-train base",
             progress=settings.progress)
    tr.save(base, tokenizer, paths["base"])
    data = {
        "safety": wd.safety_data(world),
        "math": wd.utility_data(world, "math"),
        "code": wd.utility_data(world, "code"),
    }
    for offset, task in enumerate(TASKS, start=1):
        model = copy.deepcopy(base)
        tr.train(model, tokenizer, data[task], steps=sizes.finetune_steps, lr=sizes.finetune_lr,
                 seed=seed + offset, batch_size=sizes.batch_size, device=settings.device,
                 desc=f"fine-tune {task}", optimizer="sgd", progress=settings.progress)
        tr.save(model, tokenizer, paths[task])
        del model
    return paths


# --------------------------------------------------------------------------- locate


def locate_all(family: Dict[str, str], location_files: Dict[str, str], settings: Settings, root: str):
    """SNIP scores of each fine-tuned model and of the base on each task's location set.

    Returns ``{task: {"model": store, "base": store}}`` (stores at ``scores/<task>/<model>``).
    """
    from mergekit_led.location import locate

    stores: Dict[str, Dict[str, str]] = {}
    for task in TASKS:
        stores[task] = {}
        for role, model in (("model", family[task]), ("base", family["base"])):
            out = os.path.join(root, task, "base" if role == "base" else task)
            stores[task][role] = locate(
                model, location_files[task], out, score="snip", device=settings.device,
                dtype="float32", seed=settings.seed, overwrite=True, progress=settings.progress,
            )
    return stores


# --------------------------------------------------------------------------- merge


def merge_configs(family: Dict[str, str], stores, settings: Settings) -> Dict[str, dict]:
    """mergekit YAML configs (as dicts) of every merge of safety + math + code."""
    base = family["base"]
    finetunes = [family[t] for t in TASKS]
    configs: Dict[str, dict] = {}
    common = {"base_model": base, "dtype": "float32"}
    if "task_arithmetic" in settings.methods:
        configs["Task Arithmetic"] = {
            "merge_method": "task_arithmetic", **common,
            "models": [{"model": m, "parameters": {"weight": settings.ta_weight}} for m in finetunes],
        }
    if "ties" in settings.methods:
        configs["TIES"] = {
            "merge_method": "ties", **common,
            "models": [{"model": m, "parameters": {"weight": settings.ties_weight,
                                                   "density": settings.ties_density}} for m in finetunes],
        }
    if "breadcrumbs" in settings.methods:
        configs["Breadcrumbs"] = {
            "merge_method": "breadcrumbs", **common,
            "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.9, "gamma": 0.01}}
                       for m in finetunes],
        }
    if "model_stock" in settings.methods:
        configs["Model Stock"] = {
            "merge_method": "model_stock", **common,
            "models": [{"model": m} for m in finetunes],
        }
    if "led_merging" in settings.methods:
        configs["LED-Merging"] = led_config(family, stores, settings.led_density, settings.led_weight)
    return configs


def led_config(family, stores, density: Dict[str, float], weight: Dict[str, float]) -> dict:
    return {
        "merge_method": "led_merging",
        "base_model": family["base"],
        "dtype": "float32",
        "parameters": {"election": "both", "disjoint": True},
        "models": [
            {
                "model": family[t],
                "parameters": {
                    "weight": weight[t],
                    "density": density[t],
                    "importance": stores[t]["model"],
                    "base_importance": stores[t]["base"],
                },
            }
            for t in TASKS
        ],
    }


def settings_text(config: dict) -> str:
    parts = []
    for m in config["models"]:
        params = {k: v for k, v in (m.get("parameters") or {}).items()
                  if k not in ("importance", "base_importance")}
        name = os.path.basename(str(m["model"]))
        parts.append(f"{name} {params}" if params else name)
    shared = config.get("parameters")
    return "; ".join(parts) + (f"; shared {shared}" if shared else "")


def run_merge_config(config: dict, config_path: str, out_path: str, settings: Settings) -> str:
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    from mergekit_led.merge import merge_config

    source = yaml.safe_dump(config, sort_keys=False)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(source)
    options = MergeOptions(
        device=settings.device,
        copy_tokenizer=True,
        lazy_unpickle=False,
        write_model_card=True,
        quiet=not settings.progress,
        random_seed=settings.seed,
    )
    return merge_config(MergeConfiguration.model_validate(config), out_path, options=options,
                        config_source=source)


# --------------------------------------------------------------------------- evaluate


def eval_sets(world: wd.World, split: str) -> Dict[str, List[wd.Sample]]:
    return {
        "harmful": getattr(world.harmful, split),
        "benign": getattr(world.benign, split),
        "math": getattr(world.math, split),
        "code": getattr(world.code, split),
    }


def evaluate_path(path: str, sets, device: str) -> Dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return ev.evaluate(model, tokenizer, sets, device=device)


# --------------------------------------------------------------------------- run


def run_demo(settings: Settings) -> dict:
    settings.device = resolve_device(settings.device)
    tr.set_determinism(settings.seed, threads=1 if settings.device == "cpu" else None)
    out = os.path.abspath(settings.out)
    os.makedirs(out, exist_ok=True)
    timing: Dict[str, float] = {}
    start = time.perf_counter()

    sizes = settings.sizes
    world = wd.build_world(settings.seed, code_items=sizes.code_items, chat_skills=sizes.chat_skills)
    data_dir = os.path.join(out, "data")
    location = world.location_sets(sizes.location_samples)
    location_files = {t: write_jsonl(os.path.join(data_dir, f"location_{t}.jsonl"), location[t]) for t in TASKS}
    for split in ("val", "test"):
        for name, samples in eval_sets(world, split).items():
            write_jsonl(os.path.join(data_dir, f"{split}_{name}.jsonl"), samples)

    steps = 5 if settings.study else 4
    _log(settings, f"[1/{steps}] training the model family (base, safety, math, code)")
    family = build_family(world, settings, os.path.join(out, "models"))
    timing["train_s"] = time.perf_counter() - start

    _log(settings, f"[2/{steps}] locating: SNIP scores of every model and the base on each task's location set")
    t = time.perf_counter()
    stores = locate_all(family, location_files, settings, os.path.join(out, "scores"))
    timing["locate_s"] = time.perf_counter() - t

    _log(settings, f"[3/{steps}] merging safety + math + code with mergekit")
    t = time.perf_counter()
    configs = merge_configs(family, stores, settings)
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    merged: Dict[str, str] = {}
    for name, config in configs.items():
        slug = name.lower().replace(" ", "_").replace("-", "_")
        merged[name] = run_merge_config(
            config, os.path.join(out, "configs", f"{slug}.yml"), os.path.join(out, "merges", slug), settings
        )
    timing["merge_s"] = time.perf_counter() - t

    study = None
    if settings.study:
        _log(settings, "[4/5] density / weight study of LED-Merging on the validation split")
        t = time.perf_counter()
        from mergekit_led.demo.study import run_study

        study = run_study(world, family, stores, settings, out)
        chosen = study["selected"]
        if chosen is not None:
            density = {"safety": chosen["safety_density"], "math": chosen["utility_density"],
                       "code": chosen["utility_density"]}
            weight = {task: chosen["weight"] for task in TASKS}
            name = "LED-Merging (val-selected)"
            configs[name] = led_config(family, stores, density, weight)
            merged[name] = run_merge_config(
                configs[name], os.path.join(out, "configs", "led_merging_val_selected.yml"),
                os.path.join(out, "merges", "led_merging_val_selected"), settings,
            )
        timing["study_s"] = time.perf_counter() - t

    _log(settings, f"[{steps}/{steps}] evaluating every model on the test split (greedy decoding)")
    t = time.perf_counter()
    test = eval_sets(world, "test")
    rows = [
        {"name": "Base", "kind": "model", "sources": [], "path": family["base"]},
        {"name": "Safety (Instruct)", "kind": "model", "sources": ["safety"], "path": family["safety"]},
        {"name": "Math", "kind": "model", "sources": ["math"], "path": family["math"]},
        {"name": "Code", "kind": "model", "sources": ["code"], "path": family["code"]},
    ]
    for name, path in merged.items():
        rows.append({"name": name, "kind": "merge", "sources": list(TASKS), "path": path,
                     "method": configs[name]["merge_method"], "settings_text": settings_text(configs[name])})
    from tqdm.auto import tqdm

    for row in tqdm(rows, desc="evaluate", disable=not settings.progress, leave=False):
        row["metrics"] = evaluate_path(row["path"], test, settings.device)
        row["path"] = os.path.relpath(row["path"], out)
    timing["evaluate_s"] = time.perf_counter() - t

    timing["total_s"] = time.perf_counter() - start
    result = {
        "settings": {
            "seed": settings.seed,
            "quick": settings.quick,
            "device": settings.device,
            "sizes": asdict(sizes),
            "led_density": settings.led_density,
            "led_weight": settings.led_weight,
            "ta_weight": settings.ta_weight,
            "ties_density": settings.ties_density,
            "ties_weight": settings.ties_weight,
        },
        "eval_sizes": {k: len(v) for k, v in test.items()},
        "rows": rows,
        "findings": findings(rows),
        "study": study,
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    result["paths"] = rp.write_reports(out, result)
    return result


def findings(rows: List[dict]) -> List[str]:
    """Plain statements of what the table shows (computed, not written by hand)."""
    by = {r["name"]: r["metrics"] for r in rows}
    out: List[str] = []
    safety, ta, led = by.get("Safety (Instruct)"), by.get("Task Arithmetic"), by.get("LED-Merging")
    if safety and ta:
        verdict = "less safe than" if ta["harmful_compliance"] > safety["harmful_compliance"] else "at least as safe as"
        out.append(
            f"Conflict: Task Arithmetic complies with {100 * ta['harmful_compliance']:.1f}% of harmful "
            f"requests vs {100 * safety['harmful_compliance']:.1f}% for the safety model ({verdict} it)."
        )
    others = {n: m for n, m in by.items() if n in ("Task Arithmetic", "TIES")}
    for name in ("LED-Merging", "LED-Merging (val-selected)"):
        led = by.get(name)
        if not (led and ta):
            continue
        ratio = (
            f"{100 * rp.mean_utility(led) / rp.mean_utility(ta):.0f}%" if rp.mean_utility(ta) else "n/a"
        )
        safer = all(led["harmful_compliance"] < m["harmful_compliance"] for m in others.values())
        out.append(
            f"{name}: harmful compliance {100 * led['harmful_compliance']:.1f}% "
            f"({'lower than' if safer else 'not lower than'} "
            + ", ".join(f"{n} {100 * m['harmful_compliance']:.1f}%" for n, m in others.items())
            + f"), over-refusal {100 * led['over_refusal']:.1f}%, mean utility "
            f"{100 * rp.mean_utility(led):.1f}% ({ratio} of Task Arithmetic's)."
        )
    return out
