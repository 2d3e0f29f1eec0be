"""Cost of a sweep per setting against `mergekit-led merge` + `mergekit-led evaluate`,
and batched against one-at-a-time generation.

On the 171M float32 benchmark family of ``bench_merge.py`` (hidden 1024, 12
layers, vocab 8192; a base, two fine-tunes, stores of random scores given by
path), for the same LED settings (densities):

* separate commands: for each setting, `mergekit-led merge CONFIG OUT` then
  `mergekit-led evaluate OUT EVAL.yml --out DIR`, two processes, wall time of both;
* `mergekit-led sweep CONFIG GRID OUT --eval EVAL.yml`, one process, wall time
  divided by the number of settings.

Goal (issue #16): the sweep's cost per setting at most 1.0x the separate
commands'. Both also report CPU time (user + system of the process and its
threads), steadier on a shared machine.

Batched generation: one `Evaluator` over the evaluation sets on the base
model, with the spec's batch size and with batch size 1, best of ``--rounds``;
goal at least 3x faster, with identical answers.

    python benchmarks/bench_sweep.py              # the 171M family, 3 settings
    python benchmarks/bench_sweep.py --quick      # tiny models, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_merge  # noqa: E402  (the family and its stores)

GOAL_SWEEP = 1.0
GOAL_BATCHED = 3.0
DENSITIES = (0.2, 0.4, 0.6)


def eval_spec(workdir: Path, prompts: int, seed: int = 0) -> Path:
    from mergekit_led.testing import DEFAULT_WORDS

    rng = random.Random(seed)

    def rows(count, responses):
        out = []
        for _ in range(count):
            row = {"prompt": " ".join(rng.choice(DEFAULT_WORDS) for _ in range(rng.randint(4, 24)))}
            if responses:
                row["response"] = " ".join(rng.choice(DEFAULT_WORDS) for _ in range(3))
            out.append(row)
        return out

    spec = {"generation": {"chat_template": "none"}, "tasks": {}}  # the default batch size
    for name, responses in (("harmful", False), ("benign", False), ("task", True)):
        path = workdir / f"eval-{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(prompts, responses)))
        entry = {"data": str(path), "max_new_tokens": 16}
        if responses:
            spec["tasks"]["task"] = entry
        else:
            spec[name] = entry
    path = workdir / "eval.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def led_config(paths: dict, density: float) -> dict:
    stores = paths["stores"]["float32"]
    return {
        "merge_method": "led_merging",
        "base_model": paths["base"],
        "models": [
            {
                "model": model,
                "parameters": {
                    "density": density,
                    "importance": stores[f"ft{i}"],
                    "base_importance": stores[f"base-task{i}"],
                },
            }
            for i, model in enumerate(paths["finetunes"], start=1)
        ],
        "dtype": "float32",
    }


def timed(command: list) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{stderr[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def cli(*args) -> list:
    return [os.path.join(os.path.dirname(sys.executable), "mergekit-led"), *map(str, args)]


def separate(workdir: Path, paths: dict, spec: Path) -> dict:
    walls, cpus = [], []
    for density in DENSITIES:
        config = workdir / f"led-{density}.yml"
        config.write_text(yaml.safe_dump(led_config(paths, density), sort_keys=False))
        out, ev = workdir / f"merged-{density}", workdir / f"eval-{density}"
        shutil.rmtree(out, ignore_errors=True)
        merge = timed(cli("merge", config, out, "--quiet"))
        evaluate = timed(cli("evaluate", out, spec, "--out", ev, "--quiet", "--device", "cpu"))
        walls.append(merge[0] + evaluate[0])
        cpus.append(merge[1] + evaluate[1])
        shutil.rmtree(out, ignore_errors=True)
    return {"wall_per_setting": sum(walls) / len(walls), "cpu_per_setting": sum(cpus) / len(cpus)}


def swept(workdir: Path, paths: dict, spec: Path) -> dict:
    config = workdir / "led-sweep.yml"
    config.write_text(yaml.safe_dump(led_config(paths, 0.4), sort_keys=False))
    grid = workdir / "grid.yml"
    grid.write_text(yaml.safe_dump({"led_merging": {"density": list(DENSITIES)}}))
    out = workdir / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = timed(cli("sweep", config, grid, out, "--eval", spec, "--quiet", "--device", "cpu"))
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    return {
        "wall_per_setting": wall / len(rows),
        "cpu_per_setting": cpu / len(rows),
        "rows": len(rows),
        "merge_s": [r["seconds"]["merge"] for r in rows],
        "load_s": [r["seconds"]["load"] for r in rows],
        "evaluate_s": [r["seconds"]["evaluate"] for r in rows],
    }


def batched_vs_single(paths: dict, spec_path: Path, rounds: int) -> dict:
    from mergekit_led.evaluation import Evaluator, load_eval_spec, load_model_and_tokenizer

    spec = load_eval_spec(str(spec_path))
    model, tokenizer = load_model_and_tokenizer(paths["base"], dtype="float32")
    results = {}
    for label, batch_size in (("batched", spec.generation.batch_size), ("single", 1)):
        evaluator = Evaluator(spec, tokenizer, batch_size=batch_size)
        best, answers = None, None
        for _ in range(rounds):
            start = time.perf_counter()
            report = evaluator.evaluate(model)
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
            answers = [(a.set, a.index, a.answer) for a in report.answers]
        results[label] = {"seconds": best, "batch_size": batch_size, "answers": answers}
    return {
        "batched_s": results["batched"]["seconds"],
        "single_s": results["single"]["seconds"],
        "speedup": results["single"]["seconds"] / results["batched"]["seconds"],
        "identical_answers": results["batched"]["answers"] == results["single"]["answers"],
        "prompts": len(results["batched"]["answers"]),
        "batch_size": results["batched"]["batch_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--workdir", default="bench-output/sweep")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per evaluation set")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the generation timing")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    workdir = Path(args.workdir) / ("quick" if args.quick else "full")
    workdir.mkdir(parents=True, exist_ok=True)
    size = bench_merge.QUICK if args.quick else bench_merge.FULL
    paths = bench_merge.build(workdir / "family", size, args.rebuild)["float32"]
    spec = eval_spec(workdir, args.prompts)
    # Interleaved so that a change in the machine's load hits both alike.
    first = swept(workdir, paths, spec)
    base = separate(workdir, paths, spec)
    second = swept(workdir, paths, spec)
    sweep = {key: (first[key] + second[key]) / 2 for key in ("wall_per_setting", "cpu_per_setting")}
    generation = batched_vs_single(paths, spec, args.rounds)
    result = {
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "params": paths["params"],
        "settings": len(DENSITIES),
        "prompts_per_set": args.prompts,
        "separate": base,
        "sweep": sweep,
        "sweep_rounds": [first, second],
        "sweep_ratio_wall": sweep["wall_per_setting"] / base["wall_per_setting"],
        "sweep_ratio_cpu": sweep["cpu_per_setting"] / base["cpu_per_setting"],
        "generation": generation,
    }
    print(
        f"family {paths['params'] / 1e6:.0f}M parameters, {len(DENSITIES)} LED settings, "
        f"{args.prompts} prompts per set, {result['machine']['cores']} cores, "
        f"load {result['machine']['load_average'][0]:.1f}"
    )
    print(
        f"per setting: separate merge + evaluate {base['wall_per_setting']:.1f} s wall / "
        f"{base['cpu_per_setting']:.1f} s CPU; sweep {sweep['wall_per_setting']:.1f} s wall / "
        f"{sweep['cpu_per_setting']:.1f} s CPU -> {result['sweep_ratio_wall']:.2f}x wall, "
        f"{result['sweep_ratio_cpu']:.2f}x CPU (goal <= {GOAL_SWEEP}x): "
        f"{'met' if result['sweep_ratio_wall'] <= GOAL_SWEEP else 'NOT met'}"
    )
    print(
        f"generation of {generation['prompts']} prompts: batch {generation['batch_size']} "
        f"{generation['batched_s']:.2f} s, one at a time {generation['single_s']:.2f} s -> "
        f"{generation['speedup']:.1f}x (goal >= {GOAL_BATCHED}x): "
        f"{'met' if generation['speedup'] >= GOAL_BATCHED else 'NOT met'}; identical answers: "
        f"{generation['identical_answers']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
