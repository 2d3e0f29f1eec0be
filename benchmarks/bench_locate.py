"""Wall time and peak RSS of `mergekit-led locate` (SNIP) against a bare
forward+backward loop over the same samples and model, on the CPU.

Builds a ~29M-parameter Llama offline (hidden 512, 8 layers, vocab 8192, MLP
1024; float32) and 32 samples of 128 tokens (96 prompt words, 31 answer
tokens). Every measurement runs in its own child interpreter, so each peak
RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that measurement alone;
``locate`` and the loop alternate within each round.

- locate: ``mergekit_led.locate(...)``, the library call, in-process in the
  child: tokenizer + data + model loading, one forward and one backward per
  sample, store writing (model build excluded).
- bare loop: tokenizer and ``from_pretrained`` and, per sample, ``model(ids, labels=...)
  .loss.backward()`` then ``zero_grad(set_to_none=True)``.
- authors' cost: one forward+backward per transformer layer per sample (their
  locate script computes each layer's gradients in its own backward pass),
  run for real on a few samples and scaled to all of them.

Goals (issue #3): locate <= 1.25x the loop's wall time; peak RSS <= 10% above
libraries + model + float32 accumulators + activations.

    python benchmarks/bench_locate.py              # full size, 3 rounds
    python benchmarks/bench_locate.py --quick      # tiny model, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

FULL = dict(hidden=512, layers=8, vocab=8192, intermediate=1024, heads=8, max_positions=256)
QUICK = dict(hidden=64, layers=2, vocab=256, intermediate=128, heads=4, max_positions=64)
TIME_GOAL = 1.25
RSS_GOAL = 1.10


# --------------------------------------------------------------------------- setup


def build(workdir: Path, settings: dict) -> dict:
    """The model, a tiny model of the same family (for the library baselines) and
    the JSONL data; reused when already built with these settings. Runs in a child."""
    marker = workdir / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return json.loads((workdir / "paths.json").read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    from mergekit_led.testing import DEFAULT_WORDS, build_family

    family = build_family(str(workdir / "models"), finetunes=0, seed=0, **settings["size"])
    tiny = build_family(str(workdir / "tiny"), finetunes=0, seed=0, **QUICK)
    rng = random.Random(0)
    data = workdir / "data.jsonl"
    with open(data, "w") as f:
        for _ in range(settings["samples"]):
            row = {
                "prompt": " ".join(
                    rng.choice(DEFAULT_WORDS) for _ in range(settings["prompt_words"])
                ),
                "response": " ".join(
                    rng.choice(DEFAULT_WORDS) for _ in range(settings["answer_words"])
                ),
            }
            f.write(json.dumps(row) + "\n")
    tiny_data = workdir / "tiny.jsonl"
    tiny_data.write_text("".join(data.read_text().splitlines(keepends=True)[:2]))
    from safetensors import safe_open

    with safe_open(os.path.join(family.base, "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    paths = {
        "model": family.base,
        "data": str(data),
        "params": params,
        "tiny_model": tiny.base,
        "tiny_data": str(tiny_data),
    }
    (workdir / "paths.json").write_text(json.dumps(paths))
    marker.write_text(json.dumps(settings))
    return paths


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


# --------------------------------------------------------------------------- children


def _tokenized(model: str, data: str):
    """The bare loop's samples, tokenised exactly as locate does (spec section 1)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    samples = []
    with open(data) as f:
        for line in f:
            row = json.loads(line)
            prompt = tokenizer(row["prompt"]).input_ids
            answer = tokenizer(row["response"], add_special_tokens=False).input_ids
            samples.append((prompt + answer + [tokenizer.eos_token_id], len(answer) + 1))
    return samples


def run_locate(model: str, data: str, out: Path) -> dict:
    # Packages are imported before the clock starts, as in run_bare; what they
    # import lazily on first use is timed on both sides.
    import datasets  # noqa: F401
    import transformers  # noqa: F401

    import mergekit_led
    import mergekit_led.location.locator  # noqa: F401
    from mergekit_led import load_importance

    start, cpu_start = time.perf_counter(), time.process_time()
    mergekit_led.locate(
        model, data, str(out), overwrite=True, progress=False, device="cpu", dtype="fp32"
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    metadata = load_importance(str(out)).manifest.metadata
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "scoring_seconds": metadata["scoring_seconds"],
    }


def run_bare(model_path: str, data: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    start, cpu_start = time.perf_counter(), time.process_time()
    samples = _tokenized(model_path, data)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    loaded = time.perf_counter()
    for ids, answer_length in samples:
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[0, : len(ids) - answer_length] = -100
        model(input_ids=input_ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
    end = time.perf_counter()
    cpu_seconds = time.process_time() - cpu_start
    return {"seconds": end - start, "cpu_seconds": cpu_seconds, "loop_seconds": end - loaded}


def child(kind: str, paths: dict, workdir: Path, authors_samples: int, settings: dict) -> dict:
    result: dict = {}
    if kind == "build":
        result = build(workdir, settings)
    elif kind == "libs-bare":  # everything the loop loads, on a 0.1M-parameter model
        run_bare(paths["tiny_model"], paths["tiny_data"])
    elif kind == "libs-locate":  # everything locate loads and runs, on the same tiny model
        run_locate(paths["tiny_model"], paths["tiny_data"], workdir / "tiny-store")
    elif kind == "model":
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval()
        with torch.no_grad():  # weights may be mapped from the file: make them resident
            checksum = sum(float(p.sum()) for p in model.parameters())
        result["param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        result["checksum"] = checksum
    elif kind == "locate":
        result = run_locate(paths["model"], paths["data"], workdir / "store")
    elif kind == "bare":
        result = run_bare(paths["model"], paths["data"])
    elif kind == "authors":
        import torch
        from transformers import AutoModelForCausalLM

        samples = _tokenized(paths["model"], paths["data"])
        model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval()
        layers = model.model.layers
        model.requires_grad_(False)
        subset = samples[:authors_samples]
        start = time.perf_counter()
        for ids, answer_length in subset:
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, : len(ids) - answer_length] = -100
            for layer in layers:  # one backward per transformer layer
                layer.requires_grad_(True)
                model(input_ids=input_ids, labels=labels).loss.backward()
                layer.requires_grad_(False)
                model.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        result["measured_seconds"] = elapsed
        result["measured_samples"] = len(subset)
        result["layers"] = len(layers)
        result["seconds"] = elapsed * len(samples) / len(subset)
    else:
        raise SystemExit(f"unknown child kind {kind}")
    import torch

    result["torch"] = torch.__version__
    result["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def run_child(kind: str, args) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--workdir",
        args.workdir,
        "--authors-samples",
        str(args.authors_samples),
    ] + (["--quick"] if args.quick else [])
    return run_json_child(kind, command)


def run_json_child(kind: str, command: list) -> dict:
    """Run ``command`` offline in its own process (so its peak RSS is its own) and
    return the JSON object its last line of output prints."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 samples, 1 round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--authors-samples", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    samples, prompt_words, answer_words = (4, 24, 7) if args.quick else (32, 96, 30)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.authors_samples = args.authors_samples or (1 if args.quick else 4)
    args.workdir = args.workdir or (
        "bench-output/locate-quick" if args.quick else "bench-output/locate"
    )
    workdir = Path(args.workdir)

    settings = dict(
        version=2, size=size, samples=samples, prompt_words=prompt_words, answer_words=answer_words
    )
    if args.child:
        paths = {} if args.child == "build" else json.loads((workdir / "paths.json").read_text())
        print(json.dumps(child(args.child, paths, workdir, args.authors_samples, settings)))
        return

    # This process imports nothing heavy: Linux carries a parent's peak RSS into
    # its children's ru_maxrss (fork + exec), so the parent must stay small.
    workdir.mkdir(parents=True, exist_ok=True)
    paths = run_child("build", args)
    tokens = 1 + prompt_words + answer_words + 1
    print(
        f"model: {paths['params'] / 1e6:.1f}M parameters, {samples} samples of {tokens} tokens, "
        f"{args.rounds} rounds, torch threads {os.cpu_count()} cores",
        flush=True,
    )

    locate_runs, bare_runs = [], []
    for round_number in range(args.rounds):
        for kind, runs in (("locate", locate_runs), ("bare", bare_runs)):
            runs.append(run_child(kind, args))
            print(
                f"round {round_number + 1} {kind}: {runs[-1]['seconds']:.2f} s, "
                f"peak RSS {mib(runs[-1]['maxrss_bytes'])}",
                flush=True,
            )
    libs_bare = run_child("libs-bare", args)["maxrss_bytes"]
    libs_locate = run_child("libs-locate", args)["maxrss_bytes"]
    model_child = run_child("model", args)
    authors = run_child("authors", args)

    median = statistics.median
    scoring_seconds = median(r["scoring_seconds"] for r in locate_runs)
    scoring_ratio = median(
        loc["scoring_seconds"] / b["loop_seconds"] for loc, b in zip(locate_runs, bare_runs)
    )
    cpu_ratio = median(
        loc["cpu_seconds"] / b["cpu_seconds"] for loc, b in zip(locate_runs, bare_runs)
    )
    locate_seconds = median(r["seconds"] for r in locate_runs)
    bare_seconds = median(r["seconds"] for r in bare_runs)
    loop_seconds = median(r["loop_seconds"] for r in bare_runs)
    ratio = median(loc["seconds"] / b["seconds"] for loc, b in zip(locate_runs, bare_runs))
    locate_rss = median(r["maxrss_bytes"] for r in locate_runs)
    bare_rss = median(r["maxrss_bytes"] for r in bare_runs)
    param_bytes = model_child["param_bytes"]
    model_resident = model_child["maxrss_bytes"] - libs_bare
    accumulator_bytes = paths["params"] * 4
    gradient_bytes = param_bytes  # float32 model: one float32 gradient per weight
    activations = max(0, bare_rss - libs_bare - model_resident - gradient_bytes)
    # the library baselines ran the same code on a 0.1M-parameter model: their
    # peaks hold the interpreter, the libraries and their working memory
    budget = libs_locate + model_resident + accumulator_bytes + activations
    rss_ratio = locate_rss / budget

    rows = [
        ("locate wall time (median)", f"{locate_seconds:.2f} s"),
        ("bare loop wall time, tokenize + load + loop (median)", f"{bare_seconds:.2f} s"),
        ("bare loop, loop only (median)", f"{loop_seconds:.2f} s"),
        ("locate scoring phase only (median; from the manifest)", f"{scoring_seconds:.2f} s"),
        ("locate scoring / bare loop only (median of per-round ratios)", f"{scoring_ratio:.2f}x"),
        (
            "**locate / bare loop** (median of per-round ratios)",
            f"**{ratio:.2f}x** (goal <= {TIME_GOAL}x: {'met' if ratio <= TIME_GOAL else 'NOT met'})",
        ),
        (
            "locate / bare loop in CPU time (user+sys; robust to a busy machine)",
            f"{cpu_ratio:.2f}x",
        ),
        (
            "authors' one backward per layer (estimated)",
            f"{authors['seconds']:.2f} s = {authors['seconds'] / locate_seconds:.1f}x locate "
            f"({authors['layers']} layers; measured {authors['measured_seconds']:.2f} s on "
            f"{authors['measured_samples']} samples, scaled to {samples})",
        ),
        ("locate peak RSS (median)", mib(locate_rss)),
        ("bare loop peak RSS (median)", mib(bare_rss)),
        (
            "libraries (each code path run on a 0.1M-param model): loop / locate",
            f"{mib(libs_bare)} / {mib(libs_locate)}",
        ),
        (
            "model resident (model child minus libraries)",
            f"{mib(model_resident)} (parameters {mib(param_bytes)})",
        ),
        ("float32 accumulators", mib(accumulator_bytes)),
        ("activations (bare peak - libraries - model - gradients)", mib(activations)),
        ("budget: libraries + model + accumulators + activations", mib(budget)),
        (
            "**locate peak RSS / budget**",
            f"**{rss_ratio:.3f}** (goal <= {RSS_GOAL}: {'met' if rss_ratio <= RSS_GOAL else 'NOT met'})",
        ),
    ]
    table = "\n".join(
        ["| measure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    )
    header = (
        f"## mergekit-led locate benchmark{' (quick)' if args.quick else ''}\n\n"
        f"{paths['params'] / 1e6:.1f}M-parameter Llama (float32, CPU), {samples} samples of "
        f"{tokens} tokens, {args.rounds} alternating rounds. {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {model_child['torch']}.\n\n"
        "Peak RSS is `ru_maxrss` of a child interpreter per measurement. Activations are "
        "estimated from the bare loop (its peak minus libraries, model and float32 "
        "gradients); libraries are the peak of the same code run on a 0.1M-parameter "
        "model (locate's includes datasets and mergekit). The whole-call time includes "
        "loading and writing the store (a sort of every score tensor for the merge-time "
        "thresholds), a fixed cost that a longer run amortises.\n\n"
    )
    report = header + table + "\n"
    print()
    print(report)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    name = "locate-quick" if args.quick else "locate"
    (out_dir / f"{name}.md").write_text(report)
    (out_dir / f"{name}.json").write_text(
        json.dumps(
            {
                "params": paths["params"],
                "samples": samples,
                "tokens_per_sample": tokens,
                "rounds": args.rounds,
                "scoring_ratio": scoring_ratio,
                "cpu_ratio": cpu_ratio,
                "locate_runs": locate_runs,
                "bare_runs": bare_runs,
                "authors": authors,
                "libs_bare_rss": libs_bare,
                "libs_locate_rss": libs_locate,
                "model_child": model_child,
                "model_resident": model_resident,
                "accumulator_bytes": accumulator_bytes,
                "activations_estimate": activations,
                "rss_budget": budget,
                "time_ratio": ratio,
                "rss_ratio": rss_ratio,
                "time_goal": TIME_GOAL,
                "rss_goal": RSS_GOAL,
            },
            indent=2,
        )
    )
    print(f"wrote {out_dir / (name + '.md')} and {out_dir / (name + '.json')}")


if __name__ == "__main__":
    main()
