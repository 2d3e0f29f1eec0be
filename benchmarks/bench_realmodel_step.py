"""Cost of one training step on SmolLM2-135M-Instruct: a full fine-tune (AdamW on every
weight), the same with the (tied) embeddings frozen, and LoRA (peft), so the real-model
study can choose with numbers (issue #17, docs/real_model.md#measurements).

One step = forward, backward and optimizer step on a batch of ``--batch`` sequences of
``--length`` tokens (taken from the model's own tokenizer on the Do-Not-Answer train prompts,
repeated to length), causal-LM loss on every token. Reported per mode: the median wall and
CPU time of ``--steps`` steps after one warm-up step, trainable parameters, and the process's
peak resident memory after the mode ran (modes run in separate processes so each peak is its
own).

    make real-assets                                   # the model folder, once
    pip install peft                                   # for the lora mode
    python benchmarks/bench_realmodel_step.py          # the three modes, 8 x 64 tokens
    python benchmarks/bench_realmodel_step.py --modes full --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _batch(tokenizer, data_dir: str, batch: int, length: int):
    import torch

    with open(os.path.join(data_dir, "donotanswer_train.jsonl"), encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f][:batch]
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        rows.append((ids * (length // len(ids) + 1))[:length])
    return torch.tensor(rows)


def run_mode(mode: str, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studies.smollm2.assets import require_assets

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    assets = require_assets(args.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, dtype=torch.float32)
    model.train()
    if mode == "full-frozen-embeddings":
        # The tied 49,152 x 576 embedding is also the output layer: frozen, it needs no
        # weight gradient and no AdamW state; the rest is trained in full.
        model.get_input_embeddings().weight.requires_grad_(False)
    elif mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.0,
            target_modules=[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    inputs = _batch(tokenizer, assets.data_dir(args.split_seed), args.batch, args.length)
    walls, cpus = [], []
    for step in range(args.steps + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates the optimizer state: a warm-up
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return {
        "mode": mode,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "step_wall_s_median": round(statistics.median(walls), 3),
        "step_cpu_s_median": round(statistics.median(cpus), 3),
        "step_wall_s_all": [round(w, 3) for w in walls],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "loss_last": round(float(loss), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="full,full-frozen-embeddings,lora")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one, args)))
        return
    passed = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("modes", "one") and value is not None
    ]
    for mode in args.modes.split(","):
        output = subprocess.run(
            [sys.executable, __file__, "--one", mode, *passed],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(output.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
