"""Wall time and peak RSS of `mergekit-yaml` with led_merging vs task_arithmetic and ties.

Builds a ~170M-parameter Llama family offline (hidden 1024, 12 layers, vocab
8192; a random base and two perturbed fine-tunes; float32), writes importance
stores of random scores, then runs the real `mergekit-yaml` console script for
each method, alternating methods within each round. Reports per-method medians
and the median over rounds of LED's per-round ratio to task_arithmetic.

Goal (issue #2): LED at most 1.25x task_arithmetic's wall time and peak RSS.

    python benchmarks/bench_merge.py              # full size, 5 rounds
    python benchmarks/bench_merge.py --quick      # tiny models, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mergekit_led import save_importance
from mergekit_led.testing import build_llama_family, random_scores

FULL = dict(hidden=1024, layers=12, vocab=8192, intermediate=2816, heads=16)
QUICK = dict(hidden=64, layers=2, vocab=256, intermediate=128, heads=4)
METHODS = ("task_arithmetic", "ties", "led_merging")
GOAL = 1.25


def build(workdir: Path, size: dict, rebuild: bool) -> dict:
    """Models and stores, reused across runs unless --rebuild."""
    marker = workdir / "built.json"
    if marker.exists() and not rebuild and json.loads(marker.read_text()) == size:
        return json.loads((workdir / "paths.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    family = build_llama_family(str(workdir / "models"), finetunes=2, seed=0, noise=0.01, **size)
    from safetensors import safe_open

    with safe_open(os.path.join(family.base, "model.safetensors"), "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    params = sum(torch.Size(s).numel() for s in shapes.values())
    stores = {}
    for index, (model, tag) in enumerate(
        [
            (family.finetunes[0], "ft1"),
            (family.base, "base-task1"),
            (family.finetunes[1], "ft2"),
            (family.base, "base-task2"),
        ]
    ):
        stores[tag] = save_importance(
            random_scores(shapes, seed=index),
            str(workdir / "stores" / tag),
            model=model,
            score="random",
            overwrite=True,
        )
    paths = {
        "base": family.base,
        "finetunes": family.finetunes,
        "stores": stores,
        "params": params,
        "build_seconds": time.perf_counter() - start,
    }
    (workdir / "paths.json").write_text(json.dumps(paths))
    marker.write_text(json.dumps(size))
    return paths


def write_config(workdir: Path, method: str, paths: dict) -> Path:
    models = []
    for index, model in enumerate(paths["finetunes"], start=1):
        parameters = {"weight": 1.0}
        if method == "ties":
            parameters["density"] = 0.5
        if method == "led_merging":
            parameters.update(
                density=0.4,
                importance=paths["stores"][f"ft{index}"],
                base_importance=paths["stores"][f"base-task{index}"],
            )
        models.append({"model": model, "parameters": parameters})
    import yaml

    config = {
        "merge_method": method,
        "base_model": paths["base"],
        "models": models,
        "dtype": "float32",
    }
    path = workdir / f"{method}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_once(config: Path, out: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one `mergekit-yaml` process."""
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / "mergekit-yaml"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), str(config), str(out), "--quiet", "--no-copy-tokenizer"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"mergekit-yaml failed for {config}:\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workdir", default="bench-output/merge")
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    workdir = Path(args.workdir + ("-quick" if args.quick else "")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    paths = build(workdir, QUICK if args.quick else FULL, args.rebuild)
    configs = {m: write_config(workdir, m, paths) for m in METHODS}
    results = {m: {"seconds": [], "rss": []} for m in METHODS}
    for round_index in range(rounds):
        # Rotate the order each round so no method always runs first (cold caches).
        order = METHODS[round_index % 3 :] + METHODS[: round_index % 3]
        for method in order:
            seconds, rss = run_once(configs[method], workdir / f"out-{method}")
            results[method]["seconds"].append(seconds)
            results[method]["rss"].append(rss)
            print(f"round {round_index + 1}/{rounds} {method:16s} {seconds:7.2f} s  {rss / 2**30:6.2f} GiB", flush=True)

    def ratios(key: str, method: str) -> list:
        return [a / b for a, b in zip(results[method][key], results["task_arithmetic"][key])]

    summary = {
        "params": paths["params"],
        "rounds": rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "methods": {
            m: {
                "median_seconds": statistics.median(results[m]["seconds"]),
                "median_peak_rss_gib": statistics.median(results[m]["rss"]) / 2**30,
                "median_time_ratio_vs_task_arithmetic": statistics.median(ratios("seconds", m)),
                "median_rss_ratio_vs_task_arithmetic": statistics.median(ratios("rss", m)),
            }
            for m in METHODS
        },
        "raw": results,
    }
    led = summary["methods"]["led_merging"]
    summary["goal_met"] = {
        "time": led["median_time_ratio_vs_task_arithmetic"] <= GOAL,
        "rss": led["median_rss_ratio_vs_task_arithmetic"] <= GOAL,
    }
    lines = [
        f"Merge of a {paths['params'] / 1e6:.0f}M-parameter Llama family (base + 2 fine-tunes, float32), "
        f"`mergekit-yaml`, {rounds} alternating rounds, {summary['machine']}.",
        "",
        "| method | median wall time | time / task_arithmetic | median peak RSS | RSS / task_arithmetic |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        r = summary["methods"][m]
        lines.append(
            f"| {m} | {r['median_seconds']:.2f} s | {r['median_time_ratio_vs_task_arithmetic']:.3f}x "
            f"| {r['median_peak_rss_gib']:.2f} GiB | {r['median_rss_ratio_vs_task_arithmetic']:.3f}x |"
        )
    lines.append("")
    lines.append(
        f"Goal (LED <= {GOAL}x task_arithmetic): time {'met' if summary['goal_met']['time'] else 'NOT met'}, "
        f"peak RSS {'met' if summary['goal_met']['rss'] else 'NOT met'}."
    )
    table = "\n".join(lines)
    print("\n" + table)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out_dir / f"merge{suffix}.md").write_text(table + "\n")
    (out_dir / f"merge{suffix}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
