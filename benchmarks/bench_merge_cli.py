"""Wall time and peak RSS of `mergekit-led merge` against plain `mergekit-yaml` on one
led_merging config.

`mergekit-led merge` runs the same mergekit merge after LED's whole-config checks,
into a staging folder, and writes the card's LED-Merging section from the election
statistics the merge method records while merging (no second pass over the
stores). This measures what all of that costs on the family of
`bench_merge.py` (~170M-parameter Llama, base + 2 fine-tunes, float32), with the
two commands alternating within each round.

Goal (issue #7): `mergekit-led merge` at most 1.05x `mergekit-yaml`'s wall time.

    python benchmarks/bench_merge_cli.py            # full size, 5 rounds
    python benchmarks/bench_merge_cli.py --quick    # tiny models, smoke run
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
from bench_merge import FULL, QUICK, build, write_config

GOAL = 1.05
COMMANDS = {
    "mergekit-yaml": ["mergekit-yaml"],
    "mergekit-led merge": ["mergekit-led", "merge"],
}


def run_once(command: list, config: Path, out: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one process merging ``config`` into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / command[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), *command[1:], str(config), str(out), "--quiet", "--no-copy-tokenizer"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed for {config}:\n{stderr[-3000:]}")
    if not (out / "README.md").is_file():
        raise RuntimeError(f"{' '.join(command)} wrote no model card in {out}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workdir", default="bench-output/merge")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    workdir = Path(args.workdir + ("-quick" if args.quick else "")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    paths = build(workdir, QUICK if args.quick else FULL, rebuild=False)["float32"]
    config = write_config(workdir, "float32", "led_merging/float32", paths)
    results = {name: {"seconds": [], "rss": []} for name in COMMANDS}
    names = list(COMMANDS)
    for round_index in range(rounds):
        order = names[round_index % 2 :] + names[: round_index % 2]
        for name in order:
            out = workdir / f"out-cli-{name.replace(' ', '-')}"
            seconds, rss = run_once(COMMANDS[name], config, out)
            results[name]["seconds"].append(seconds)
            results[name]["rss"].append(rss)
            print(
                f"round {round_index + 1}/{rounds} {name:20s} {seconds:7.2f} s  {rss / 2**30:6.2f} GiB",
                flush=True,
            )

    def ratios(key: str) -> list:
        return [
            a / b for a, b in zip(results["mergekit-led merge"][key], results["mergekit-yaml"][key])
        ]

    time_ratio = statistics.median(ratios("seconds"))
    rss_ratio = statistics.median(ratios("rss"))
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, torch {torch.__version__}"
    lines = [
        f"LED merge of a {paths['params'] / 1e6:.0f}M-parameter Llama family (base + 2 fine-tunes, "
        f"float32), {rounds} alternating rounds, {machine}.",
        "",
        "| command | median wall time | median peak RSS |",
        "|---|---|---|",
    ]
    for name in COMMANDS:
        lines.append(
            f"| `{name}` | {statistics.median(results[name]['seconds']):.2f} s "
            f"| {statistics.median(results[name]['rss']) / 2**30:.2f} GiB |"
        )
    lines += [
        "",
        f"`mergekit-led merge` / `mergekit-yaml` (median of per-round ratios): time {time_ratio:.3f}x, "
        f"peak RSS {rss_ratio:.3f}x. Goal (time <= {GOAL}x): {'met' if time_ratio <= GOAL else 'NOT met'}.",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (out_dir / f"merge-cli{suffix}.md").write_text(table + "\n")
    summary = {"time_ratio": time_ratio, "rss_ratio": rss_ratio, "goal": GOAL, "raw": results}
    (out_dir / f"merge-cli{suffix}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
