"""Wall time, peak RSS and bytes read of `mergekit-yaml` with led_merging vs task_arithmetic.

Builds a ~170M-parameter Llama family offline (hidden 1024, 12 layers, vocab
8192; a random base and two perturbed fine-tunes) twice: in float32 (merged with
`dtype: float32`) and saved in bfloat16 (merged with `dtype: bfloat16`, the
realistic case). For each family it writes importance stores of random scores
in float32 and in bfloat16, then runs the real `mergekit-yaml` for
task_arithmetic, ties (float32 family only) and led_merging with each store
dtype, rotating the order of the methods in every round. Reports per-method
medians, the median over rounds of each method's per-round ratio to
task_arithmetic, and the bytes each merge reads.

Goal (issues #2 and #8): LED at most 1.25x task_arithmetic's wall time and peak
RSS, for both store dtypes and both families. On a shared machine the wall time
of a run depends on what else runs; CPU time (user + system of all the merge's
threads, from ``wait4``) is reported next to it as the steadier measure of work.

Bytes read: "weights" are the input models' tensor bytes and "scores" the
stores' score bytes, each read once per merge (from the files' sizes); "rchar"
is measured, the bytes the merge process read through read(2)/pread(2)
(Python's imports and configs included; mergekit maps the weights with mmap,
which rchar does not count, while the stores are read with preadv, which it
does), so LED's rchar minus task_arithmetic's checks the scores column.

With ``--format1-baseline SRC`` (a source tree of an earlier mergekit-led, e.g.
``git archive 4c55801 mergekit_led | tar -x -C /tmp/old``), the float32 family is
also merged by that code from format-1 copies of the float32 stores (scores plus
sorted copies, 8 bytes per weight): the before/after of the compact stores,
measured in the same rounds.

With ``--load N``, N busy processes (one spinning core each, ``busy.py``) run
beside every merge of every method, the same for all: the ratios then say how a
method holds up on a machine shared with other work. The load average
(``/proc/loadavg``) before and after the rounds is printed with the table.

    python benchmarks/bench_merge.py              # full size, 5 rounds
    python benchmarks/bench_merge.py --quick      # tiny models, smoke run
    python benchmarks/bench_merge.py --no-ties --load 2   # beside two busy processes
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
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402  (the benchmarks' shared shapes)
from busy import busy_processes, load_average  # noqa: E402

from mergekit_led import save_importance
from mergekit_led.testing import build_family, synthetic_scores

FULL = dict(hidden=1024, layers=12, vocab=8192, intermediate=2816, heads=16)
QUICK = dict(hidden=64, layers=2, vocab=256, intermediate=128, heads=4)
# --size 1b: Llama-3.2-1B's shape, the bfloat16 family with bfloat16 stores only.
ONE_B = shapes.ONE_B
FAMILIES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
STORE_DTYPES = ("float32", "bfloat16")
GOAL = 1.25
# Wall time beside --load busy processes (issue 28); peak RSS keeps GOAL.
LOADED_TIME_GOAL = 1.5
STORE_ROLES = ("ft1", "base-task1", "ft2", "base-task2")

# Runs mergekit-yaml's own entry point and records /proc/self/io at exit.
_RUNNER = """
import atexit, os, sys
def _dump():
    with open("/proc/self/io") as f:
        io = dict(line.split(": ") for line in f.read().splitlines())
    with open(os.environ["BENCH_IO_FILE"], "w") as out:
        out.write(io["rchar"])
atexit.register(_dump)
from mergekit.scripts.run_yaml import main
sys.argv[0] = "mergekit-yaml"
sys.exit(main())
"""


BASELINE = "led_merging/format1"


def methods_for(
    family: str, with_ties: bool, baseline: bool, store_dtypes=STORE_DTYPES
) -> List[str]:
    methods = ["task_arithmetic"]
    if with_ties and family == "float32":
        methods.append("ties")
    methods += [f"led_merging/{dtype}" for dtype in store_dtypes]
    if baseline and family == "float32":
        methods.append(BASELINE)
    return methods


def format1_copy(store: str, dst: str) -> str:
    """``store`` (float32, format 2) as the format-1 writer wrote it: the same scores
    plus ``thresholds.safetensors`` (every tensor sorted in descending order)."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    if os.path.exists(dst):
        return dst
    shutil.copytree(store, dst + ".tmp")
    manifest_path = os.path.join(dst + ".tmp", "led_importance.json")
    manifest = json.loads(Path(manifest_path).read_text())
    scores = load_file(os.path.join(dst + ".tmp", "scores.safetensors"))
    save_file(
        {
            k: torch.from_numpy(np.sort(v.reshape(-1).numpy())[::-1].copy())
            for k, v in scores.items()
        },
        os.path.join(dst + ".tmp", "thresholds.safetensors"),
        metadata={"format": "pt"},
    )
    manifest.update(format_version=1, threshold_files={k: "thresholds.safetensors" for k in scores})
    for key in ("dtype", "checksums"):
        manifest.pop(key, None)
    Path(manifest_path).write_text(json.dumps(manifest, indent=2))
    os.rename(dst + ".tmp", dst)
    return dst


def tensor_bytes(folder: str) -> int:
    """Bytes of tensor data in a folder's safetensors files (headers excluded)."""
    from safetensors import safe_open

    total = 0
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    lazy = f.get_slice(key)
                    numel = torch.Size(lazy.get_shape()).numel()
                    total += numel * _itemsize(lazy.get_dtype())
    return total


def _itemsize(safetensors_dtype: str) -> int:
    return {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}[safetensors_dtype]


def build(
    workdir: Path,
    size: dict,
    rebuild: bool,
    families=tuple(FAMILIES),
    store_dtypes=STORE_DTYPES,
) -> dict:
    """Models and stores, reused across runs unless --rebuild."""
    marker = workdir / "built.json"
    settings = {**size, "families": list(families), "store_dtypes": list(store_dtypes)}
    if size in (FULL, QUICK):  # the marker these sizes always had
        settings = size
    if marker.exists() and not rebuild and json.loads(marker.read_text()) == settings:
        return json.loads((workdir / "paths.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    from safetensors import safe_open

    paths: Dict[str, dict] = {}
    for family_name in families:
        dtype = FAMILIES[family_name]
        start = time.perf_counter()
        family = build_family(
            str(workdir / f"models-{family_name}"),
            finetunes=2,
            seed=0,
            noise=0.01,
            dtype=dtype,
            **size,
        )
        with safe_open(os.path.join(family.base, "model.safetensors"), "pt") as f:
            shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
        models = [family.finetunes[0], family.base, family.finetunes[1], family.base]
        stores: Dict[str, Dict[str, str]] = {dtype: {} for dtype in store_dtypes}
        for index, (model, role) in enumerate(zip(models, STORE_ROLES)):
            scores = synthetic_scores(shapes, seed=index)
            for store_dtype in store_dtypes:
                stores[store_dtype][role] = save_importance(
                    scores,
                    str(workdir / f"stores-{family_name}" / f"{store_dtype}-{role}"),
                    model=model,
                    score="random",
                    dtype=store_dtype,
                    overwrite=True,
                )
        paths[family_name] = {
            "base": family.base,
            "finetunes": family.finetunes,
            "stores": stores,
            "params": sum(torch.Size(s).numel() for s in shapes.values()),
            "weight_bytes": sum(tensor_bytes(m) for m in [family.base, *family.finetunes]),
            "score_bytes": {
                d: sum(tensor_bytes(stores[d][r]) for r in STORE_ROLES) for d in store_dtypes
            },
            "store_disk_bytes": {
                d: {
                    r: sum(
                        os.path.getsize(os.path.join(stores[d][r], f))
                        for f in os.listdir(stores[d][r])
                    )
                    for r in STORE_ROLES
                }
                for d in store_dtypes
            },
            "build_seconds": time.perf_counter() - start,
        }
    (workdir / "paths.json").write_text(json.dumps(paths))
    marker.write_text(json.dumps(settings))
    return paths


def write_config(workdir: Path, family: str, method: str, paths: dict) -> Path:
    import yaml

    merge_method, _, store_dtype = method.partition("/")
    models = []
    for index, model in enumerate(paths["finetunes"], start=1):
        parameters = {"weight": 1.0}
        if merge_method == "ties":
            parameters["density"] = 0.5
        if merge_method == "led_merging":
            stores = paths["stores"]["float32" if store_dtype == "format1" else store_dtype]
            if store_dtype == "format1":
                stores = {r: format1_copy(p, p + "-format1") for r, p in stores.items()}
            parameters.update(
                density=0.4,
                importance=stores[f"ft{index}"],
                base_importance=stores[f"base-task{index}"],
            )
        models.append({"model": model, "parameters": parameters})
    config = {
        "merge_method": merge_method,
        "base_model": paths["base"],
        "models": models,
        "dtype": family,
    }
    path = workdir / f"{family}-{method.replace('/', '-')}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_once(config: Path, out: Path, source: str = "") -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds (user + system, all threads), peak RSS (bytes) and
    rchar of one `mergekit-yaml` process."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.NamedTemporaryFile(suffix=".io") as io_file:
        env = dict(os.environ, BENCH_IO_FILE=io_file.name)
        if source:
            env["PYTHONPATH"] = source
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RUNNER,
                str(config),
                str(out),
                "--quiet",
                "--no-copy-tokenizer",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"mergekit-yaml failed for {config}:\n{stderr[-3000:]}")
        rchar = int(Path(io_file.name).read_text())
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss * 1024, rchar  # Linux reports ru_maxrss in KiB


def _label(method: str) -> str:
    if method == BASELINE:
        return "led_merging (format-1 float32 stores, baseline code)"
    name, _, store_dtype = method.partition("/")
    return f"{name} ({store_dtype} stores)" if store_dtype else name


def summarize(results: dict, paths: dict, methods: List[str]) -> dict:
    def ratios(key: str, method: str) -> list:
        return [a / b for a, b in zip(results[method][key], results["task_arithmetic"][key])]

    summary = {}
    for m in methods:
        store_dtype = m.partition("/")[2]
        score_bytes = paths["score_bytes"][store_dtype] if store_dtype in STORE_DTYPES else 0
        if store_dtype == "format1":  # the scores, and one element of each sorted copy
            score_bytes = paths["score_bytes"]["float32"]
        summary[m] = {
            "median_seconds": statistics.median(results[m]["seconds"]),
            "median_peak_rss_gib": statistics.median(results[m]["rss"]) / 2**30,
            "median_time_ratio_vs_task_arithmetic": statistics.median(ratios("seconds", m)),
            "median_cpu_seconds": statistics.median(results[m]["cpu"]),
            "median_cpu_ratio_vs_task_arithmetic": statistics.median(ratios("cpu", m)),
            "median_rss_ratio_vs_task_arithmetic": statistics.median(ratios("rss", m)),
            "weight_bytes": paths["weight_bytes"],
            "score_bytes": score_bytes,
            "median_rchar": statistics.median(results[m]["rchar"]),
        }
    return summary


def sorted_copy_check_cost(store_path: str, density: float = 0.4) -> dict:
    """What format 1's sorted copies would still save, measured in this process.

    Format 1 kept each score tensor sorted, so the threshold was one element
    read; a sorted copy can be stale (the scores rewritten after it), so using it
    safely means proving ``count(S > t) < k <= count(S >= t)`` on the scores.
    Compared here over every weight of one store: the exact selection the merge
    runs (``top_mask``) vs that proof given a known-correct ``t`` (the mask
    comparison plus two counts). Best of 3 per weight.
    """
    from mergekit_led import load_importance
    from mergekit_led.core.elect_merge import elected_count, kth_largest, top_mask

    store = load_importance(store_path)
    select = verify = 0.0
    for name in store:
        scores = store[name]
        k = elected_count(scores.numel(), density)
        if k:
            threshold = kth_largest(scores, k)
            select += _best_of_3(top_mask, scores, density)
            verify += _best_of_3(_prove_threshold, scores, threshold, k)
    return {"exact_selection_seconds": select, "verified_sorted_copy_seconds": verify}


def _prove_threshold(scores: torch.Tensor, threshold: float, k: int) -> bool:
    """The mask from a given threshold, and the counts proving it is the k-th largest."""
    mask = scores >= threshold
    return int(torch.count_nonzero(scores > threshold)) < k <= int(torch.count_nonzero(mask))


def _best_of_3(function, *args) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        function(*args)
        best = min(best, time.perf_counter() - start)
    return best


def run_rounds(
    rounds: int, plan: dict, configs: dict, results: dict, workdir: Path, baseline_source: str
) -> None:
    """Every method of every family once per round, appending to ``results``."""
    for round_index in range(rounds):
        for family, methods in plan.items():
            # Rotate the order each round so no method always runs first (cold caches).
            shift = round_index % len(methods)
            for method in methods[shift:] + methods[:shift]:
                source = baseline_source if method == BASELINE else ""
                seconds, cpu, rss, rchar = run_once(
                    configs[family, method], workdir / "out", source
                )
                entry = results[family][method]
                entry["seconds"].append(seconds)
                entry["cpu"].append(cpu)
                entry["rss"].append(rss)
                entry["rchar"].append(rchar)
                print(
                    f"round {round_index + 1}/{rounds} {family:8s} {method:22s} "
                    f"{seconds:7.2f} s  cpu {cpu:7.2f} s  {rss / 2**30:6.2f} GiB  "
                    f"rchar {rchar / 2**20:8.1f} MiB",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workdir", default="bench-output/merge")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-ties", action="store_true", help="skip ties (7x slower)")
    parser.add_argument(
        "--format1-baseline",
        default=None,
        metavar="SRC",
        help="also merge the float32 family with the mergekit-led source tree SRC from "
        "format-1 copies of the float32 stores",
    )
    parser.add_argument(
        "--size",
        choices=("full", "1b"),
        default="full",
        help="1b: a Llama-3.2-1B-shaped bfloat16 family with bfloat16 stores only (~20 GB disk)",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="run N busy processes beside every merge (the same for every method)",
    )
    args = parser.parse_args()
    if args.load < 0:
        parser.error("--load must be 0 or more")
    rounds = args.rounds or (2 if args.quick else 5)
    one_b = args.size == "1b" and not args.quick
    suffix = "-quick" if args.quick else ("-1b" if one_b else "")
    workdir = Path(args.workdir + suffix).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    families = ("bfloat16",) if one_b else tuple(FAMILIES)
    store_dtypes = ("bfloat16",) if one_b else STORE_DTYPES
    size = QUICK if args.quick else (ONE_B if one_b else FULL)
    all_paths = build(workdir, size, args.rebuild, families, store_dtypes)
    plan = {
        f: methods_for(f, not args.no_ties, bool(args.format1_baseline), store_dtypes)
        for f in families
    }
    baseline_source = os.path.abspath(args.format1_baseline or "")
    configs = {(f, m): write_config(workdir, f, m, all_paths[f]) for f in families for m in plan[f]}
    results = {
        f: {m: {"seconds": [], "cpu": [], "rss": [], "rchar": []} for m in plan[f]}
        for f in families
    }
    load_before = load_average()
    with busy_processes(args.load):
        run_rounds(rounds, plan, configs, results, workdir, baseline_source)
    load_after = load_average()

    shutil.rmtree(workdir / "out", ignore_errors=True)
    check = None
    if "float32" in all_paths:
        check = sorted_copy_check_cost(all_paths["float32"]["stores"]["float32"]["ft1"])

    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, torch {torch.__version__}"
    summary = {
        "rounds": rounds,
        "busy_processes": args.load,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": machine,
        "families": {
            f: {
                "params": all_paths[f]["params"],
                "store_disk_bytes": all_paths[f]["store_disk_bytes"],
                "methods": summarize(results[f], all_paths[f], plan[f]),
            }
            for f in families
        },
        "raw": results,
        "sorted_copy_check": check,
    }
    lines = [
        f"`mergekit-yaml` on a {all_paths[families[0]]['params'] / 1e6:.0f}M-parameter Llama "
        f"family (base + 2 fine-tunes), {rounds} rounds with the method order rotated, "
        f"{machine}; {args.load} busy processes beside every merge; load average "
        f"{load_before or '?'} before, {load_after or '?'} after (1, 5, 15 min).",
        "",
        "| family, merge dtype | method (store dtype) | median wall time | time / TA "
        "| median CPU time | CPU / TA | median peak RSS | RSS / TA | weights read "
        "| scores read | rchar (measured) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    goal_met = True
    time_goal = LOADED_TIME_GOAL if args.load else GOAL
    for family in families:
        params = all_paths[family]["params"]
        for m, r in summary["families"][family]["methods"].items():
            if m.startswith("led_merging") and m != BASELINE:
                goal_met &= r["median_time_ratio_vs_task_arithmetic"] <= time_goal
                goal_met &= r["median_rss_ratio_vs_task_arithmetic"] <= GOAL
            lines.append(
                f"| {family} | {_label(m)} "
                f"| {r['median_seconds']:.2f} s "
                f"| {r['median_time_ratio_vs_task_arithmetic']:.3f}x "
                f"| {r['median_cpu_seconds']:.2f} s "
                f"| {r['median_cpu_ratio_vs_task_arithmetic']:.3f}x "
                f"| {r['median_peak_rss_gib']:.2f} GiB "
                f"| {r['median_rss_ratio_vs_task_arithmetic']:.3f}x "
                f"| {r['weight_bytes'] / 2**30:.2f} GiB ({r['weight_bytes'] / params:.0f} B/w) "
                f"| {r['score_bytes'] / 2**30:.2f} GiB ({r['score_bytes'] / params:.0f} B/w) "
                f"| {r['median_rchar'] / 2**30:.2f} GiB |"
            )
    summary["goal_met"] = goal_met
    if BASELINE in plan.get("float32", ()):
        runs = results["float32"]
        versus = {
            f"{dtype}_{key}": statistics.median(
                a / b for a, b in zip(runs[f"led_merging/{dtype}"][key], runs[BASELINE][key])
            )
            for dtype in STORE_DTYPES
            for key in ("seconds", "cpu")
        }
        summary["versus_format1_baseline"] = versus
        lines += [
            "",
            f"Against the baseline code with format-1 stores ({baseline_source}), same rounds: "
            f"float32 stores {versus['float32_seconds']:.3f}x wall, {versus['float32_cpu']:.3f}x "
            f"CPU; bfloat16 stores {versus['bfloat16_seconds']:.3f}x wall, "
            f"{versus['bfloat16_cpu']:.3f}x CPU (medians of per-round ratios).",
        ]
    lines += [
        "",
        f"Goal (every LED row <= {time_goal}x task_arithmetic in time, <= {GOAL}x in peak "
        f"RSS{', with busy processes beside it' if args.load else ''}): "
        f"{'met' if goal_met else 'NOT met'}. B/w: bytes per weight of one model.",
    ]
    if check is not None:
        lines += [
            "",
            "Format 1's sorted copies, per store of the float32 family (density 0.4, in one "
            f"process): exact selection {check['exact_selection_seconds']:.2f} s; proving a "
            f"sorted copy's threshold against the scores "
            f"{check['verified_sorted_copy_seconds']:.2f} s.",
        ]
    table = "\n".join(lines)
    print("\n" + table)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    name = f"merge{suffix}" + (f"-load{args.load}" if args.load else "")
    (out_dir / f"{name}.md").write_text(table + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
