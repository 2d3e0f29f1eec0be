"""What checking a store-cache entry against its checksums costs, next to the merge it guards.

Before a cache entry is used (``prepare``, ``merge``, the merge method under
``mergekit-yaml``), every file of it is hashed and compared with the SHA-256 its
``led_cache.json`` records (issue #18: a same-size copy with a zero tail, or two
entries' scores swapped, must never be served). This builds the float32 family
of ``bench_merge.py`` (~170M-parameter Llama, base + 2 fine-tunes) with its four
float32 stores, files them as cache entries, and measures, alternating in each
round:

- ``first lookup``: one fresh process looking up the four entries
  (``StoreCache.lookup``, the check a merge makes) with no verification stamps
  (``verified/`` removed: the first use of a copied cache), so every file is hashed;
- ``stamped lookup``: the same again, now that the first wrote its stamps: files
  whose identity (device, inode, size, mtime, ctime) is unchanged are not hashed;
- ``merge``: ``mergekit-led merge`` of the led_merging config that uses them.

Both read the stores through the page cache (the files were just written or read),
which is the usual case right after ``prepare``; from a cold disk both pay the
disk's read rate for the same bytes.

    python benchmarks/bench_cache_check.py            # full size, 3 rounds
    python benchmarks/bench_cache_check.py --quick    # tiny models, smoke run
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
from bench_merge import FULL, QUICK, STORE_ROLES

KEYS = {role: f"{index:02d}" * 16 for index, role in enumerate(STORE_ROLES)}

_LOOKUP = """
import sys, time
from mergekit_led.prepare.cache import StoreCache
cache = StoreCache(sys.argv[1])
keys = sys.argv[2:]
start = time.perf_counter()
found = [cache.lookup(key) for key in keys]
assert all(entry is not None for entry in found), "an entry failed its check"
print(time.perf_counter() - start)
"""


def build(workdir: Path, size: dict) -> dict:
    """The float32 family, its four float32 stores filed as cache entries, and the
    config merging them (reused across runs)."""
    marker = workdir / "built.json"
    if marker.exists() and json.loads(marker.read_text())["size"] == size:
        return json.loads(marker.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    import yaml
    from safetensors import safe_open

    from mergekit_led import save_importance
    from mergekit_led.prepare.cache import StoreCache
    from mergekit_led.testing import build_family, synthetic_scores

    family = build_family(
        str(workdir / "models"), finetunes=2, seed=0, noise=0.01, dtype=torch.float32, **size
    )
    with safe_open(os.path.join(family.base, "model.safetensors"), "pt") as f:
        shapes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    models = [family.finetunes[0], family.base, family.finetunes[1], family.base]
    cache = StoreCache(str(workdir / "cache"))
    entries = {}
    for index, (model, role) in enumerate(zip(models, STORE_ROLES)):
        scores = synthetic_scores(shapes, seed=index)

        def write(folder, scores=scores, model=model):
            save_importance(scores, folder, model=model, score="random", overwrite=True)

        entry, _ = cache.compute(KEYS[role], {"model": model, "score": "random"}, write)
        entries[role] = entry.path
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [
            {
                "model": model,
                "parameters": {
                    "weight": 1.0,
                    "density": 0.4,
                    "importance": entries[f"ft{index}"],
                    "base_importance": entries[f"base-task{index}"],
                },
            }
            for index, model in enumerate(family.finetunes, start=1)
        ],
    }
    (workdir / "led.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    store_bytes = sum(
        os.path.getsize(os.path.join(path, name))
        for path in entries.values()
        for name in os.listdir(path)
    )
    built = {"size": size, "cache": cache.root, "store_bytes": store_bytes}
    marker.write_text(json.dumps(built))
    return built


def timed(command: list) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (smoke run)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workdir", default="bench-output/cache-check")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    workdir = Path(args.workdir + ("-quick" if args.quick else "")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    built = build(workdir, QUICK if args.quick else FULL)

    python = sys.executable
    merge_exe = str(Path(python).parent / "mergekit-led")
    keys = list(KEYS.values())
    results = {"first_lookup": [], "stamped_lookup": [], "merge": []}
    for round_index in range(rounds):
        shutil.rmtree(Path(built["cache"]) / "verified", ignore_errors=True)
        for kind in ("first_lookup", "stamped_lookup"):
            _, printed = timed([python, "-c", _LOOKUP, built["cache"], *keys])
            results[kind].append(float(printed.strip()))
        out = workdir / "out"
        shutil.rmtree(out, ignore_errors=True)
        merge, _ = timed(
            [merge_exe, "merge", str(workdir / "led.yml"), str(out), "--quiet"]
            + ["--no-copy-tokenizer"]
        )
        results["merge"].append(merge)
        print(
            f"round {round_index + 1}/{rounds}: lookup of 4 entries "
            f"{results['first_lookup'][-1]:.2f} s first, {results['stamped_lookup'][-1]:.3f} s "
            f"stamped; merge {merge:.2f} s",
            flush=True,
        )
    shutil.rmtree(workdir / "out", ignore_errors=True)
    first = statistics.median(results["first_lookup"])
    stamped = statistics.median(results["stamped_lookup"])
    merge = statistics.median(results["merge"])
    summary = {
        "rounds": rounds,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, "
        f"torch {torch.__version__}",
        "load_average": os.getloadavg(),
        "store_bytes_hashed": built["store_bytes"],
        "median_first_lookup_seconds": first,
        "median_stamped_lookup_seconds": stamped,
        "median_merge_seconds": merge,
        "first_lookup_share_of_merge": first / merge,
        "stamped_lookup_share_of_merge": stamped / merge,
        "hash_rate_bytes_per_second": built["store_bytes"] / first,
        "raw": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
