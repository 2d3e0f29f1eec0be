"""The locate memory plan against measured peaks, and locate's throughput, at real shapes on the CPU.

Builds Llama-shaped models from configs with random weights (never downloaded)
at up to three sizes, the largest shaped like Llama-3.2-1B (hidden 2048, 16
layers, 32 heads, 8 key/value heads, MLP 8192, vocab 128256, tied embeddings),
and scores each with ``mergekit_led.locate`` in a child interpreter per run,
with and without ``--offload-accumulators`` and ``--gradient-checkpointing``.
Each child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is set against
``plan_memory`` for the same run; the plan's CPU overhead term is this
machine's, measured first by the same locate code path on a 0.1M-parameter
model (``libraries``).

With ``--bare``, each size also runs a bare forward+backward loop over the
same samples (as in bench_locate.py) beside a plain locate run, for
locate's time per sample against it (goal: at most 1.25x).

    python benchmarks/bench_memory_plan.py --sizes small,medium        # minutes
    python benchmarks/bench_memory_plan.py --sizes 1b --bare --samples 4
    python benchmarks/bench_memory_plan.py --quick                     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402  (the benchmarks' shared shapes; imports nothing heavy)
from bench_locate import run_json_child  # noqa: E402

SIZES = {
    "tiny": dict(hidden=64, layers=2, vocab=256, intermediate=128, heads=4, kv_heads=2),
    "small": dict(hidden=512, layers=4, vocab=16384, intermediate=1536, heads=8, kv_heads=2),
    "medium": dict(hidden=1024, layers=8, vocab=32000, intermediate=4096, heads=16, kv_heads=4),
    "1b": shapes.ONE_B,
}
FLAGS = {
    "plain": {},
    "offload": {"offload_accumulators": True},
    "checkpointing": {"gradient_checkpointing": True},
    "both": {"offload_accumulators": True, "gradient_checkpointing": True},
}
PLAN_GOAL = 0.15
TIME_GOAL = 1.25


def build(workdir: Path, size: str, dtype: str, samples: int, prompt_words: int, answer_words: int):
    """The model (random weights, from its config) and its JSONL data; reused when built."""
    import torch

    from mergekit_led.testing import DEFAULT_WORDS, build_family

    settings = dict(
        size=SIZES[size], dtype=dtype, samples=samples, words=[prompt_words, answer_words]
    )
    folder = workdir / f"{size}-{dtype}"
    marker = folder / "built.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return json.loads((folder / "paths.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    family = build_family(
        str(folder / "model"),
        finetunes=0,
        seed=0,
        dtype=getattr(torch, dtype),
        max_positions=4096,
        **SIZES[size],
    )
    rng = random.Random(0)
    data = folder / "data.jsonl"
    with open(data, "w") as f:
        for _ in range(samples):
            prompt = " ".join(rng.choice(DEFAULT_WORDS) for _ in range(prompt_words))
            answer = " ".join(rng.choice(DEFAULT_WORDS) for _ in range(answer_words))
            f.write(json.dumps({"prompt": prompt, "response": answer}) + "\n")
    paths = {"model": family.base, "data": str(data)}
    (folder / "paths.json").write_text(json.dumps(paths))
    marker.write_text(json.dumps(settings))
    return paths


# --------------------------------------------------------------------------- children


def child_locate(paths: dict, out: str, flags: dict) -> dict:
    import datasets  # noqa: F401  (imported before the clock, as in the bare loop)
    import transformers  # noqa: F401

    import mergekit_led
    from mergekit_led import load_importance

    start = time.perf_counter()
    mergekit_led.locate(
        paths["model"], paths["data"], out, overwrite=True, progress=False, device="cpu", **flags
    )
    seconds = time.perf_counter() - start
    metadata = load_importance(out).manifest.metadata
    shutil.rmtree(out, ignore_errors=True)
    return {
        "seconds": seconds,
        "scoring_seconds": metadata["scoring_seconds"],
        "samples_per_second": metadata["samples_per_second"],
    }


def child_bare(paths: dict) -> dict:
    """Tokenize as locate does, load, and per sample one forward (answer loss) and backward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    samples = []
    with open(paths["data"]) as f:
        for line in f:
            row = json.loads(line)
            prompt = tokenizer(row["prompt"]).input_ids
            answer = tokenizer(row["response"], add_special_tokens=False).input_ids
            samples.append((prompt + answer + [tokenizer.eos_token_id], len(answer) + 1))
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype="auto").eval()
    start = time.perf_counter()
    for ids, answer_length in samples:
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[0, : len(ids) - answer_length] = -100
        model(input_ids=input_ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
    loop = time.perf_counter() - start
    return {"loop_seconds": loop, "seconds_per_sample": loop / len(samples)}


def child(args) -> dict:
    paths = json.loads(args.paths)
    if args.child == "build":
        result = build(
            Path(args.workdir),
            args.size,
            args.dtype,
            args.samples,
            args.prompt_words,
            args.answer_words,
        )
    elif args.child == "locate":
        result = child_locate(paths, str(Path(args.workdir) / "store"), FLAGS[args.flags])
    elif args.child == "bare":
        result = child_bare(paths)
    else:
        raise SystemExit(f"unknown child {args.child}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["maxrss_bytes"] = usage.ru_maxrss * 1024
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # the whole child, loading included
    return result


def run_child(kind: str, args, paths=None, size=None, flags="plain", dtype=None) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        kind,
        "--workdir",
        args.workdir,
        "--paths",
        json.dumps(paths or {}),
        "--flags",
        flags,
        "--size",
        size or "tiny",
        "--dtype",
        dtype or args.dtype,
        "--samples",
        str(args.samples),
        "--prompt-words",
        str(args.prompt_words),
        "--answer-words",
        str(args.answer_words),
    ]
    return run_json_child(kind, command)


# --------------------------------------------------------------------------- plan


def planned(paths: dict, dtype: str, tokens: int, answer_tokens: int, flags: dict, overhead: int):
    from mergekit_led.location.memory import Setup, model_shape, plan_memory

    shape = model_shape(paths["model"])
    setup = Setup(
        dtype=dtype,
        tokens=tokens,
        answer_tokens=answer_tokens,
        offload_accumulators=flags.get("offload_accumulators", False),
        gradient_checkpointing=flags.get("gradient_checkpointing", False),
        device_type="cpu",
    )
    return shape, plan_memory(shape, setup, base_overhead=overhead)


def replan(path: Path) -> None:
    """The plans of an earlier run's measurements, with the plan as it is now (a table)."""
    result = json.loads(path.read_text())
    folder = path.parent
    print("| size | parameters | dtype | flags | measured peak RSS | plan | plan / measured |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for row in result["rows"]:
        if "plan_error" not in row:
            continue
        paths = json.loads((folder / f"{row['size']}-{result['dtype']}" / "paths.json").read_text())
        shape, plan = planned(
            paths,
            result["dtype"],
            result["tokens"],
            result["answer_tokens"],
            FLAGS[row["flags"]],
            result["libraries"],
        )
        measured = row["measured"]["maxrss_bytes"]
        ratio = plan.device_total / measured
        worst = max(worst, abs(ratio - 1))
        print(
            f"| {row['size']} | {shape.parameters / 1e6:.0f}M | {result['dtype']} | {row['flags']} "
            f"| {gib(measured)} | {gib(plan.device_total)} | {ratio:.3f} |"
        )
    print(f"\nworst |plan / measured - 1|: {worst:.1%} (goal <= {PLAN_GOAL:.0%})")


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--flags", default="plain,offload,checkpointing,both", help="flag runs, or none"
    )
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompt-words", type=int, default=96)
    parser.add_argument("--answer-words", type=int, default=30)
    parser.add_argument(
        "--bare", action="store_true", help="also time a bare forward+backward loop"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="locate/bare pairs per size with --bare"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, smoke run")
    parser.add_argument("--workdir", default="bench-output/memory-plan")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument(
        "--replan", default=None, help="recompute the plans of a result JSON (models kept)"
    )
    args = parser.parse_args()
    if args.replan:
        replan(Path(args.replan))
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.sizes, args.samples, args.prompt_words, args.answer_words = "tiny", 2, 24, 7
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    tokens = 1 + args.prompt_words + args.answer_words + 1  # BOS, words, EOS
    answer_tokens = args.answer_words + 1

    # The plan's CPU overhead on this machine: the locate code path on a 0.1M model.
    tiny = run_child("build", args, size="tiny", dtype="float32")
    libraries = run_child("locate", args, tiny, size="tiny", dtype="float32")["maxrss_bytes"]
    print(f"libraries (locate on a 0.1M-parameter model): peak RSS {gib(libraries)}", flush=True)

    rows = []
    for size in args.sizes.split(","):
        paths = run_child("build", args, size=size)
        for flag_name in [f for f in args.flags.split(",") if f and f != "none"]:
            flags = FLAGS[flag_name]
            shape, plan = planned(paths, args.dtype, tokens, answer_tokens, flags, libraries)
            measured = run_child("locate", args, paths, size=size, flags=flag_name)
            error = plan.device_total / measured["maxrss_bytes"] - 1
            rows.append(
                dict(
                    size=size,
                    parameters=shape.parameters,
                    flags=flag_name,
                    measured=measured,
                    plan_total=plan.device_total,
                    plan_parts={p.name: p.bytes for p in plan.parts},
                    plan_error=error,
                )
            )
            print(
                f"{size} ({shape.parameters / 1e6:.0f}M, {args.dtype}) {flag_name}: measured "
                f"{gib(measured['maxrss_bytes'])}, plan {gib(plan.device_total)} "
                f"({error:+.1%}); locate {measured['seconds']:.1f} s, scoring "
                f"{measured['scoring_seconds']:.1f} s for {args.samples} samples",
                flush=True,
            )
        if args.bare:
            for round_number in range(args.rounds):
                bare = run_child("bare", args, paths, size=size)
                located = run_child("locate", args, paths, size=size, flags="plain")
                ratio = located["scoring_seconds"] / bare["loop_seconds"]
                rows.append(
                    dict(size=size, round=round_number, bare=bare, locate=located, ratio=ratio)
                )
                print(
                    f"{size} round {round_number + 1}: bare loop {bare['seconds_per_sample']:.2f} "
                    f"s/sample, locate scoring {located['scoring_seconds'] / args.samples:.2f} "
                    f"s/sample: {ratio:.2f}x (goal <= {TIME_GOAL}x: "
                    f"{'met' if ratio <= TIME_GOAL else 'NOT met'}); bare peak "
                    f"{gib(bare['maxrss_bytes'])}",
                    flush=True,
                )
    result = dict(
        dtype=args.dtype,
        samples=args.samples,
        tokens=tokens,
        answer_tokens=answer_tokens,
        libraries=libraries,
        rows=rows,
        plan_goal=PLAN_GOAL,
    )
    out = Path(args.workdir) / f"result-{args.sizes.replace(',', '-')}-{args.dtype}.json"
    out.write_text(json.dumps(result, indent=2))
    worst = max((abs(r["plan_error"]) for r in rows if "plan_error" in r), default=0.0)
    print(f"worst |plan / measured - 1|: {worst:.1%} (goal <= {PLAN_GOAL:.0%}); wrote {out}")


if __name__ == "__main__":
    main()
