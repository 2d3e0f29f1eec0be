"""Exact k-th largest score without a sorted copy: time per method, on CPU.

For score tensors of 1M, 16M and 64M elements (and 128M with ``--huge``) in
float32 and bfloat16, at densities 0.1 and 0.5, times every way of finding the
threshold ``t`` (the k-th largest score, ``k = floor(density * N)``) and reports
the median of several runs and its ratio to one ``scores >= t`` pass, the
comparison every election does anyway. Each method's threshold is checked
against a plain descending sort. Also timed: reading the whole tensor from a
safetensors file in the page cache (what a merge pays per score tensor), and
today's one-element read of a sorted copy.

Scores are ``|randn * randn|`` (heavy-tailed, like SNIP's ``|w * grad|``) with
5% exact zeros.

    python benchmarks/bench_selection.py            # 1M, 16M, 64M
    python benchmarks/bench_selection.py --huge     # also 128M
    python benchmarks/bench_selection.py --quick    # 1M only, smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mergekit_led.core import kth_largest

DENSITIES = (0.1, 0.5)
INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16}
# Methods slower than this many comparison passes on the 16M tensor are skipped
# on larger ones (their cost only grows), unless --all.
SLOW_RATIO = 40.0


def make_scores(numel: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(numel, generator=g).mul_(torch.randn(numel, generator=g)).abs_()
    scores[torch.rand(numel, generator=g) < 0.05] = 0.0
    return scores


def plain_sort(scores: torch.Tensor) -> np.ndarray:
    """The reference: ascending float32 values (float32 holds every bfloat16 exactly)."""
    return np.sort(scores.to(torch.float32).numpy())


def bits_to_float(value: int, dtype: torch.dtype) -> float:
    return float(torch.tensor(value, dtype=INT_VIEW[dtype]).view(dtype))


# --------------------------------------------------------------------------- methods


def numpy_partition(scores: torch.Tensor, k: int) -> float:
    """numpy's introselect on the bit patterns (exact for non-negative floats)."""
    bits = scores.view(INT_VIEW[scores.dtype]).numpy()
    position = bits.size - k
    return bits_to_float(int(np.partition(bits, position)[position]), scores.dtype)


def torch_kthvalue(scores: torch.Tensor, k: int) -> float:
    """What election.kth_largest does today."""
    return float(torch.kthvalue(scores, scores.numel() - k + 1).values)


def torch_topk(scores: torch.Tensor, k: int) -> float:
    numel = scores.numel()
    if k <= numel - k + 1:
        return float(torch.topk(scores, k, sorted=False).values.min())
    return float(torch.topk(scores, numel - k + 1, largest=False, sorted=False).values.max())


def radix_histogram(scores: torch.Tensor, k: int) -> float:
    """Histogram of the top 16 bits (torch.bincount), then an exact selection
    among the bucket that holds rank k (bfloat16: the histogram is exact)."""
    bits = scores.view(INT_VIEW[scores.dtype])
    wide = scores.dtype == torch.float32
    # -0.0 is the most negative pattern; clamping it to +0.0 keeps the order.
    top = (bits >> 16 if wide else bits).clamp_min(0)
    counts = torch.bincount(top, minlength=1 << 15)
    from_top = counts.flip(0).cumsum(0)
    bucket = counts.numel() - 1 - int(torch.searchsorted(from_top, k))
    above = int(from_top[counts.numel() - 2 - bucket]) if bucket < counts.numel() - 1 else 0
    if not wide:
        return bits_to_float(bucket, scores.dtype)
    candidates = bits.numpy()[(top == bucket).numpy()]
    position = candidates.size - (k - above)
    return bits_to_float(int(np.partition(candidates, position)[position]), scores.dtype)


def led_selection(scores: torch.Tensor, k: int) -> float:
    return kth_largest.kth_largest(scores, k)


METHODS: dict[str, Callable[[torch.Tensor, int], float]] = {
    "kth_largest.kth_largest": led_selection,
    "numpy.partition": numpy_partition,
    "radix histogram": radix_histogram,
    "torch.topk": torch_topk,
    "torch.kthvalue (today, no sorted copy)": torch_kthvalue,
}


# --------------------------------------------------------------------------- timing


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def bench_size(numel: int, dtype: torch.dtype, args, skip: set, folder: str) -> list[dict]:
    scores = make_scores(numel, seed=numel % 9973).to(dtype)
    rows = []
    # The store files a merge reads: the scores, and today's sorted copy.
    path = os.path.join(folder, "scores.safetensors")
    ordered = plain_sort(scores)
    sorted_copy = torch.from_numpy(ordered[::-1].copy()).to(dtype)
    save_file({"w": scores, "w.sorted": sorted_copy}, path)
    del sorted_copy

    def mapped() -> torch.Tensor:
        # safetensors maps the file: the bytes are read when first touched.
        with safe_open(path, "pt") as handle:
            return handle.get_tensor("w")

    mapped().clone()  # warm the page cache
    for density in DENSITIES:
        k = kth_largest.elected_count(numel, density)
        expected = float(ordered[ordered.size - k])
        reference_mask = scores >= expected
        top_mask_ok = torch.equal(kth_largest.top_mask(scores, density), reference_mask)
        del reference_mask

        def read_sorted(k: int = k) -> float:
            with safe_open(path, "pt") as handle:
                return float(handle.get_slice("w.sorted")[k - 1 : k][0])

        runs: dict[str, Callable[[], object]] = {
            "compare": lambda t=expected: scores >= t,
            "read": lambda: mapped().clone(),
            "mapped compare": lambda t=expected: mapped() >= t,
            "sorted read": read_sorted,
            "top_mask": lambda d=density: kth_largest.top_mask(scores, d),
        }
        thresholds = {}
        for name, method in METHODS.items():
            if name not in skip:
                thresholds[name] = method(scores, k)
                runs[name] = lambda method=method, k=k: method(scores, k)
        # Round robin, so that load from other processes hits every method alike.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.repeats):
            for name, run in runs.items():
                if name in args.slow and round_index >= max(1, args.repeats // 2):
                    continue
                times[name].append(timed(run))
        ms = {name: statistics.median(values) for name, values in times.items()}
        row = {
            "numel": numel,
            "dtype": str(dtype).replace("torch.", ""),
            "density": density,
            "compare_ms": ms["compare"],
            "read_ms": ms["read"],
            "mapped_compare_ms": ms["mapped compare"],
            "sorted_read_ms": ms["sorted read"],
            "sorted_read_ok": read_sorted() == expected,
            "top_mask_ms": ms["top_mask"],
            "top_mask_ok": top_mask_ok,
            "methods": {
                name: {"ms": ms[name], "ok": threshold == expected}
                for name, threshold in thresholds.items()
            },
        }
        for name, result in row["methods"].items():
            too_slow = result["ms"] > SLOW_RATIO * ms["compare"]
            if numel >= args.skip_after and too_slow and not args.all:
                skip.add(name)
        rows.append(row)
        print(format_row(row), flush=True)
    os.remove(path)
    return rows


def format_row(row: dict) -> str:
    base = row["compare_ms"]
    cells = [f"{row['numel'] / 2**20:.0f}M", row["dtype"], f"{row['density']}", f"{base:.2f}"]
    cells.append(f"{row['read_ms']:.2f} ({row['read_ms'] / base:.2f}x)")
    mapped = row["mapped_compare_ms"]
    cells.append(f"{mapped:.2f} ({mapped / base:.2f}x)")
    cells.append(f"{row['sorted_read_ms']:.3f} ({'ok' if row['sorted_read_ok'] else 'WRONG'})")
    cells.append(
        f"{row['top_mask_ms']:.2f} ({row['top_mask_ms'] / base:.2f}x, "
        f"{'ok' if row['top_mask_ok'] else 'WRONG'})"
    )
    for name in METHODS:
        result = row["methods"].get(name)
        if result is None:
            cells.append("skipped")
        else:
            verdict = "=" if result["ok"] else "WRONG"
            cells.append(f"{result['ms']:.2f} ({result['ms'] / base:.2f}x, {verdict})")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1M only (smoke run)")
    parser.add_argument("--huge", action="store_true", help="also 128M elements")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="never skip slow methods")
    args = parser.parse_args()
    sizes = [1 << 20] if args.quick else [1 << 20, 16 << 20, 64 << 20]
    if args.huge:
        sizes.append(128 << 20)
    args.skip_after = 16 << 20
    args.slow = {"torch.kthvalue (today, no sorted copy)", "torch.topk"}

    print(
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}; "
        f"median of {args.repeats} runs (slow methods: {max(1, args.repeats // 2)}); "
        "x = ratio to one `scores >= t` pass; '=' = threshold equals a plain sort's."
    )
    header = [
        "N",
        "dtype",
        "density",
        "`scores >= t` ms",
        "full read (copy) from page cache ms",
        "`scores >= t` on the mapped file ms",
        "sorted-copy read ms (today)",
        "kth_largest.top_mask ms (threshold + mask)",
        *[f"{name} ms" for name in METHODS],
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-selection-") as folder:
        for dtype in (torch.float32, torch.bfloat16):
            skip: set = set()
            for numel in sizes:
                rows.extend(bench_size(numel, dtype, args, skip, folder))
    wrong = [
        (row["numel"], row["dtype"], row["density"], name)
        for row in rows
        for name, result in row["methods"].items()
        if not result["ok"]
    ] + [
        (row["numel"], row["dtype"], row["density"], "top_mask")
        for row in rows
        if not row["top_mask_ok"]
    ]
    print("\nall thresholds equal the reference" if not wrong else f"\nWRONG: {wrong}")


if __name__ == "__main__":
    main()
