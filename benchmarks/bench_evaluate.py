"""Tokens per second of evaluate's batched generation against one HF ``generate`` call.

Greedy answers to the same prompts, in bfloat16 and float32, from
``mergekit_led.evaluation.generation.greedy_answers`` (what ``mergekit-led
evaluate`` runs: prompts sorted by length, one left-padded ``generate`` call per
batch) at each batch size of ``--batches``, and from a single
``model.generate`` over all prompts at once (the plain Hugging Face way). Every
answer runs to ``--new-tokens`` tokens (no stop token), so every measurement
generates the same number of tokens; tokens per second is that number over the
wall time. Each round runs every measurement once, in a rotated order; the table
gives medians, and how many answers equal the single call's.

The model is SmolLM2-135M as ``make real-assets`` converts it (docs/real_model.md);
the prompts are the study's evaluation prompts when ``--data`` names an EVAL.yml
split folder, else sentences of the testing vocabulary.

    make real-assets REAL_ASSETS_ARGS="--cache-dir /tmp/real-cache"
    python benchmarks/bench_evaluate.py --model /tmp/real-cache/<model folder>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from busy import busy_processes, load_average  # noqa: E402

from mergekit_led.evaluation.generation import greedy_answers  # noqa: E402
from mergekit_led.testing import DEFAULT_WORDS  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
ONE_CALL = "one HF generate call"


def prompts_for(tokenizer, count: int, seed: int = 0) -> List[List[int]]:
    """``count`` prompts of 12-40 words from the testing vocabulary, tokenized."""
    rng = random.Random(seed)
    texts = [
        " ".join(rng.choice(DEFAULT_WORDS) for _ in range(rng.randint(12, 40)))
        for _ in range(count)
    ]
    return [tokenizer(text).input_ids for text in texts]


def one_call(model, prompts: List[List[int]], new_tokens: int, pad_id: int) -> List[List[int]]:
    """All prompts in one left-padded ``generate`` call, in the prompts' order."""
    from transformers import GenerationConfig

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=new_tokens, min_new_tokens=new_tokens
    )
    config.eos_token_id = None
    config.pad_token_id = pad_id
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [row[width:].tolist() for row in out]


def measure(args, tokenizer, dtype: torch.dtype) -> Dict[str, dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # every answer runs to --new-tokens
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = prompts_for(tokenizer, args.prompts)
    runs: Dict[str, Callable[[], List[List[int]]]] = {
        ONE_CALL: lambda: one_call(model, prompts, args.new_tokens, pad_id)
    }
    for batch in args.batches:
        runs[f"evaluate, batch {batch}"] = lambda batch=batch: greedy_answers(
            model,
            prompts,
            max_new_tokens=args.new_tokens,
            stop_ids=[],
            pad_id=pad_id,
            batch_size=batch,
            device=torch.device("cpu"),
        )
    one_call(model, prompts[:2], 2, pad_id)  # warm-up
    seconds: Dict[str, List[float]] = {label: [] for label in runs}
    answers: Dict[str, List[List[int]]] = {}
    labels = list(runs)
    for round_index in range(args.rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            answers[label] = runs[label]()
            seconds[label].append(time.perf_counter() - start)
            print(f"  {label:28s} {seconds[label][-1]:7.2f} s", flush=True)
    result = {}
    for label in labels:
        tokens = sum(len(a) for a in answers[label])
        median = statistics.median(seconds[label])
        result[label] = {
            "seconds": seconds[label],
            "median_seconds": median,
            "tokens": tokens,
            "tokens_per_second": tokens / median,
            "answers_equal_to_one_call": sum(
                a == b for a, b in zip(answers[label], answers[ONE_CALL])
            ),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="SmolLM2-135M folder (make real-assets)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load", type=int, default=0, metavar="N", help="N busy processes")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown or not args.batches or min(args.batches) < 1 or args.prompts < 1:
        parser.error(f"--dtypes from {sorted(DTYPES)}, batches and prompts >= 1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    load_before = load_average()
    results = {}
    with busy_processes(args.load):
        for name in dtypes:
            print(name, flush=True)
            results[name] = measure(args, tokenizer, DTYPES[name])
    load_after = load_average()
    lines = [
        f"{args.prompts} prompts x {args.new_tokens} new tokens, greedy, CPU "
        f"({len(os.sched_getaffinity(0))} usable cores, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}); {args.rounds} rounds, medians; {args.load} busy "
        f"processes; load average {load_before or '?'} before, {load_after or '?'} after.",
        "",
        "| dtype | generation | median wall time | tokens / s | vs one call "
        "| answers equal to one call's |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        yardstick = rows[ONE_CALL]["tokens_per_second"]
        for label, row in rows.items():
            lines.append(
                f"| {name} | {label} | {row['median_seconds']:.2f} s "
                f"| {row['tokens_per_second']:.1f} | {row['tokens_per_second'] / yardstick:.2f}x "
                f"| {row['answers_equal_to_one_call']}/{args.prompts} |"
            )
    table = "\n".join(lines)
    print("\n" + table)
    out_dir = Path("bench-output")
    out_dir.mkdir(exist_ok=True)
    (out_dir / "evaluate.md").write_text(table + "\n")
    summary = {"load_average": [load_before, load_after], "busy": args.load, "results": results}
    (out_dir / "evaluate.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
