"""The merge kernel alone: one weight's Elect + Disjoint + Merge, and its selections.

Times, on one weight (8192 x 1024 by default, two fine-tunes, density 0.4,
election ``both``), in float32 and bfloat16:

- ``task_arithmetic``: mergekit's own arithmetic for the same weight
  (``base + sum(theta_i - base)``), the yardstick;
- ``whole tensors``: the pure functions of ``core.elect_merge`` composed on whole
  tensors (elect, disjoint, ``merge_masked``), what the kernel did before
  ``elect_and_merge``;
- ``elect_and_merge`` with the chunk size and worker threads it picks for this
  machine, the same chunks in the calling thread alone (1 worker), and each
  chunk size of ``--chunks`` (the data behind ``merge_chunk_size``);
- ``top_mask`` (the exact selection, values checked on the way) of one score
  tensor, and ``torch.aminmax`` (a separate value check) for comparison.

Every timing is the best of ``--repeat`` runs, in milliseconds; every chunked
result is checked equal, bit for bit, to the whole-tensor composition.

    python benchmarks/bench_merge_kernel.py
    taskset -c 0,1 python benchmarks/bench_merge_kernel.py   # as on a 2-core machine
    python benchmarks/bench_merge_kernel.py --load 2         # beside two busy processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from busy import busy_processes, load_average  # noqa: E402

from mergekit_led.core import elect_merge as el  # noqa: E402
from mergekit_led.core.kth_largest import top_mask  # noqa: E402


def best_ms(function: Callable[[], object], repeat: int) -> float:
    function()  # warm-up: allocator, caches, thread pools
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return round(best * 1e3, 2)


def measure(dtype: torch.dtype, shape, chunks, repeat: int) -> Dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=generator).to(dtype)
    finetuned = [
        (base.float() + 0.01 * torch.randn(shape, generator=generator)).to(dtype) for _ in range(2)
    ]
    scores = [torch.rand(shape, generator=generator).to(dtype) for _ in range(4)]
    tops = [(top_mask(scores[0], 0.4), top_mask(scores[1], 0.4))]
    tops.append((top_mask(scores[2], 0.4), top_mask(scores[3], 0.4)))
    weights = [1.0, 1.0]

    def whole_tensors() -> torch.Tensor:
        elected = [el.elect(m, b, el.Election.both) for m, b in tops]
        return el.merge_masked(base, finetuned, el.disjoint(elected), weights, masks_disjoint=True)

    reference = whole_tensors()
    row = {
        "task_arithmetic": best_ms(
            lambda: (base + ((finetuned[0] - base) + (finetuned[1] - base))).to(dtype), repeat
        ),
        "whole tensors": best_ms(whole_tensors, repeat),
    }
    picked = el.merge_chunk_size()
    original, original_workers = el.merge_chunk_size, el.merge_workers
    try:
        el.merge_workers = lambda numel: 1
        row[f"elect_and_merge, chunk {picked >> 10}K, 1 worker"] = best_ms(
            lambda: el.elect_and_merge(base, finetuned, tops, weights, el.Election.both), repeat
        )
        # The kernel before issue 28: 256K chunks in the calling thread, each
        # operation on torch's own threads.
        el.merge_chunk_size = lambda: 1 << 18
        row["previous: chunk 256K, calling thread, torch threads"] = best_ms(
            lambda: el.elect_and_merge(base, finetuned, tops, weights, el.Election.both), repeat
        )
        el.merge_chunk_size, el.merge_workers = original, original_workers
        for chunk in [picked, *chunks]:
            el.merge_chunk_size = lambda chunk=chunk: chunk
            merged, _ = el.elect_and_merge(base, finetuned, tops, weights, el.Election.both)
            if not torch.equal(merged, reference):
                raise AssertionError(f"chunk {chunk}: the merge differs from the whole-tensor one")
            label = f"elect_and_merge, chunk {chunk >> 10}K" + (
                " (picked)" if chunk == picked else ""
            )
            row[label] = best_ms(
                lambda: el.elect_and_merge(base, finetuned, tops, weights, el.Election.both),
                repeat,
            )
    finally:
        el.merge_chunk_size, el.merge_workers = original, original_workers
    row["top_mask, values checked (one store)"] = best_ms(
        lambda: top_mask(scores[0], 0.4, validate=True), repeat
    )
    row["aminmax (a separate value check)"] = best_ms(lambda: torch.aminmax(scores[0]), repeat)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--chunks",
        default="16384,65536,262144",
        help="comma-separated chunk sizes to time besides the picked one",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="N busy processes")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",") if c]
    shape = (args.rows, args.cols)
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "shape": list(shape),
        "milliseconds": {},
    }
    print(
        f"one {shape[0]} x {shape[1]} weight, two fine-tunes, density 0.4; "
        f"{results['machine']['cpus_usable']} usable CPUs, "
        f"{results['machine']['torch_threads']} torch threads; best of {args.repeat}, ms; "
        f"{args.load} busy processes; load average {load_average() or '?'}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        with busy_processes(args.load):
            row = measure(dtype, shape, chunks, args.repeat)
        results["milliseconds"][str(dtype).replace("torch.", "")] = row
        yardstick = row["task_arithmetic"]
        print(f"\n{dtype}")
        for label, ms in row.items():
            print(f"  {label:55s} {ms:9.2f} ms  {ms / yardstick:6.2f}x task_arithmetic")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
