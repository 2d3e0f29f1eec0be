"""Locate and merge at the paper's shapes on one GPU: a Llama-3-8B-shaped model in bfloat16.

One prepared script for a machine with one H100 (sized for about 8 minutes; not
yet timed), with random weights built from a config on the GPU (never downloaded):

1. locate (SNIP) on 64 samples of 1024 tokens (768 prompt + 256 answer tokens):
   time per sample against a bare forward+backward loop over the same samples,
   and peak GPU memory (``torch.cuda.max_memory_reserved``, and the device's
   used memory sampled every 50 ms, CUDA context included) against
   ``mergekit-led locate --plan``'s total for the same run;
2. the same with ``--offload-accumulators`` on fewer samples (``--offload-samples``,
   each one copies 32 GB of float32 contributions to the CPU);
3. ``mergekit-led merge --cuda`` of base + 2 fine-tunes with bfloat16 stores
   against ``mergekit-yaml --cuda`` task_arithmetic, on the 8B shape cut to
   ``--merge-layers`` decoder layers (disk: 3 models and 4 stores of 8 layers
   take ~40 GB; the whole 8B family would need 112 GB), scaled by parameters to
   the whole model in the report;
4. the paper's setup extrapolated: 6 stores of 128 samples and the merge of
   base + 3 fine-tunes, in minutes.

Writes ``bench-output/gpu-shapes.json`` and a markdown report (``.md``).
``--smoke`` runs the same code on a tiny Llama, 4 samples of 32 tokens, on the
CPU when no GPU is present: a check of the script, not a measurement.

    python benchmarks/bench_gpu_shapes.py                # on the H100
    python benchmarks/bench_gpu_shapes.py --smoke        # anywhere
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
import threading
import time
from pathlib import Path

import torch

LLAMA3_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)
SMOKE = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=256,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
PAPER_STORES, PAPER_SAMPLES, PAPER_FINETUNES = 6, 128, 3
TIME_GOAL = 1.25


class DeviceMemorySampler:
    """The device's used memory (all processes, CUDA context included), sampled
    every 50 ms while running; its peak is what nvidia-smi would show."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info(self.device)
            self.peak = max(self.peak, total - free)
            time.sleep(0.05)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def build_model(folder: Path, shape: dict, device: torch.device, layers=None, seed=0) -> str:
    """A random bfloat16 Llama of ``shape`` (``layers``: cut to that many), initialised on
    ``device`` and saved with a word tokenizer whose vocabulary fills the embedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mergekit_led.testing import build_word_tokenizer

    config = LlamaConfig(
        **{**shape, "num_hidden_layers": layers or shape["num_hidden_layers"]},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # 16 GB at 8B, never a float32 copy first
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    build_word_tokenizer(vocab_size=config.vocab_size).save_pretrained(folder)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return str(folder)


def perturbed(base: str, folder: Path, seed: int, device: torch.device) -> str:
    """A fine-tune: base + 0.01 N(0, 1) on every weight (dense task vectors)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    generator = torch.Generator(device=device).manual_seed(seed)
    for name in sorted(os.listdir(base)):
        if name.endswith(".safetensors"):
            tensors = load_file(os.path.join(base, name), device=str(device))
            for key, value in tensors.items():
                noise = torch.randn(value.shape, generator=generator, device=device)
                tensors[key] = (value.float() + 0.01 * noise).to(value.dtype).cpu()
            save_file(tensors, os.path.join(folder, name), metadata={"format": "pt"})
        elif name.endswith(".safetensors.index.json"):
            shutil.copy(os.path.join(base, name), folder)
    return str(folder)


def random_store(model: str, out: Path, seed: int, device: torch.device) -> str:
    from safetensors import safe_open

    from mergekit_led import save_importance

    generator = torch.Generator(device=device).manual_seed(seed)
    scores = {}
    for name in sorted(os.listdir(model)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(model, name), "pt") as f:
                for key in f.keys():
                    shape = f.get_slice(key).get_shape()
                    scores[key] = (
                        torch.rand(shape, generator=generator, device=device)
                        .to(torch.bfloat16)
                        .cpu()
                    )
    return save_importance(
        scores, str(out), model=model, score="random", dtype="bfloat16", overwrite=True
    )


def write_data(path: Path, samples: int, prompt_words: int, answer_words: int) -> str:
    from mergekit_led.testing import DEFAULT_WORDS

    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(samples):
            prompt = " ".join(rng.choice(DEFAULT_WORDS) for _ in range(prompt_words))
            answer = " ".join(rng.choice(DEFAULT_WORDS) for _ in range(answer_words))
            f.write(json.dumps({"prompt": prompt, "response": answer}) + "\n")
    return str(path)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bare_loop(model_path: str, data: str, device: torch.device) -> dict:
    """Per sample one forward (answer loss) and one backward with plain .grad buffers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    samples = []
    for line in open(data):
        row = json.loads(line)
        prompt = tokenizer(row["prompt"]).input_ids
        answer = tokenizer(row["response"], add_special_tokens=False).input_ids
        samples.append((prompt + answer + [tokenizer.eos_token_id], len(answer) + 1))
    _reset(device)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).to(device)
    model.eval()
    _sync(device)
    start = time.perf_counter()
    for ids, answer_length in samples:
        input_ids = torch.tensor([ids], device=device)
        labels = input_ids.clone()
        labels[0, : len(ids) - answer_length] = -100
        model(input_ids=input_ids, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - start
    del model
    _reset(device)
    return {"samples": len(samples), "seconds_per_sample": seconds / len(samples)}


def run_locate(model: str, data: str, out: Path, device: torch.device, **options) -> dict:
    import mergekit_led
    from mergekit_led.location import plan_locate

    verdict = plan_locate(model, data, device=device.type, dtype="bf16", **options)
    _reset(device)
    with DeviceMemorySampler(device) as sampler:
        start = time.perf_counter()
        mergekit_led.locate(
            model,
            data,
            str(out),
            device=device.type,
            dtype="bf16",
            score_dtype="bfloat16",
            overwrite=True,
            progress=False,
            **options,
        )
        seconds = time.perf_counter() - start
    metadata = mergekit_led.load_importance(str(out)).manifest.metadata
    result = {
        "options": options,
        "seconds": seconds,
        "scoring_seconds": metadata["scoring_seconds"],
        "samples_per_second": metadata["samples_per_second"],
        "plan_total": verdict.plan.device_total,
        "plan_parts": {p.name: p.bytes for p in verdict.plan.parts},
        "plan_fits": verdict.fits,
    }
    if device.type == "cuda":
        result["max_reserved"] = torch.cuda.max_memory_reserved(device)
        result["max_allocated"] = torch.cuda.max_memory_allocated(device)
        result["device_used_peak"] = sampler.peak
    shutil.rmtree(out, ignore_errors=True)
    return result


def time_merge_command(command: list) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def merge_config(path: Path, method: str, base: str, finetunes, stores, dtype="bfloat16") -> str:
    import yaml

    models = []
    for index, model in enumerate(finetunes):
        parameters = {"weight": 1.0}
        if method == "led_merging":
            parameters.update(
                density=0.4,
                importance=stores[f"ft{index}"],
                base_importance=stores[f"base{index}"],
            )
        models.append({"model": model, "parameters": parameters})
    config = {"merge_method": method, "base_model": base, "models": models, "dtype": dtype}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model: a check of the script")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--offload-samples", type=int, default=8)
    parser.add_argument("--merge-layers", type=int, default=8)
    parser.add_argument("--merge-rounds", type=int, default=1)
    parser.add_argument("--parts", default="locate,merge", help="locate, merge or both")
    parser.add_argument("--workdir", default="bench-output/gpu-shapes")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        raise SystemExit("no GPU here: run with --smoke to check the script on the CPU")
    shape = SMOKE if args.smoke else LLAMA3_8B
    samples = 4 if args.smoke else args.samples
    offload_samples = min(samples, 2 if args.smoke else args.offload_samples)
    prompt_words, answer_words = (22, 7) if args.smoke else (767, 255)  # + BOS and EOS
    work = Path(args.workdir + ("-smoke" if args.smoke else ""))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    report: dict = {
        "device": name,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "shape": shape,
        "tokens": 1 + prompt_words + answer_words + 1,
        "answer_tokens": answer_words + 1,
    }
    print(f"{name}, torch {torch.__version__}", flush=True)

    if "locate" in args.parts:
        model = build_model(work / "model", shape, device)
        data = write_data(work / "data.jsonl", samples, prompt_words, answer_words)
        offload_data = write_data(
            work / "data-offload.jsonl", offload_samples, prompt_words, answer_words
        )
        report["build_seconds"] = time.perf_counter() - started
        report["bare"] = bare_loop(model, data, device)
        print(f"bare loop: {report['bare']['seconds_per_sample']:.3f} s/sample", flush=True)
        report["locate"] = run_locate(model, data, work / "store", device)
        report["locate_offload"] = run_locate(
            model, offload_data, work / "store", device, offload_accumulators=True
        )
        for key in ("locate", "locate_offload"):
            r = report[key]
            r["seconds_per_sample"] = 1 / r["samples_per_second"]
            r["ratio_to_bare"] = r["seconds_per_sample"] / report["bare"]["seconds_per_sample"]
            measured = r.get("device_used_peak")
            r["plan_over_measured"] = r["plan_total"] / measured if measured else None
            print(f"{key}: {json.dumps(r)}", flush=True)
        shutil.rmtree(work / "model")  # disk for the merge family

    if "merge" in args.parts:
        layers = None if args.smoke else args.merge_layers
        base = build_model(work / "merge-base", shape, device, layers=layers)
        finetunes = [
            perturbed(base, work / f"merge-ft{i}", seed=i + 1, device=device) for i in range(2)
        ]
        stores = {}
        for index, model in enumerate(finetunes):
            stores[f"ft{index}"] = random_store(model, work / f"store-ft{index}", 2 * index, device)
            stores[f"base{index}"] = random_store(
                base, work / f"store-base{index}", 2 * index + 1, device
            )
        bin_dir = Path(sys.executable).parent
        cuda = ["--cuda"] if device.type == "cuda" else []
        times = {"task_arithmetic": [], "led_merging": []}
        for round_index in range(args.merge_rounds):
            for method in ("task_arithmetic", "led_merging"):
                config = merge_config(work / f"{method}.yml", method, base, finetunes, stores)
                tool = "mergekit-yaml" if method == "task_arithmetic" else "mergekit-led"
                command = [str(bin_dir / tool)] + ([] if tool == "mergekit-yaml" else ["merge"])
                command += [config, str(work / "merged"), *cuda, "--no-copy-tokenizer", "--quiet"]
                times[method].append(time_merge_command(command))
                shutil.rmtree(work / "merged", ignore_errors=True)
                print(
                    f"merge round {round_index + 1} {method}: {times[method][-1]:.1f} s", flush=True
                )
        from mergekit_led.location.memory import model_shape

        merged_params = model_shape(base).parameters
        report["merge"] = {
            "layers": layers or shape["num_hidden_layers"],
            "parameters": merged_params,
            "seconds": times,
            "ratio": min(times["led_merging"]) / min(times["task_arithmetic"]),
        }
        print(f"merge: {json.dumps(report['merge'])}", flush=True)

    report["wall_seconds"] = time.perf_counter() - started
    report["paper_setup_minutes"] = paper_setup(report)
    out = Path("bench-output") / ("gpu-shapes-smoke.json" if args.smoke else "gpu-shapes.json")
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")


def paper_setup(report: dict):
    """Minutes of the paper's setup extrapolated from this run: 6 stores of 128 samples
    (without offloading; plus one model load per store, measured here as the locate
    call's time outside scoring) and a merge of base + 3 fine-tunes (the 2-model
    merge's time, per parameter of the whole model, times 3/2 for the models read)."""
    if "locate" not in report or "merge" not in report:
        return None
    locate = report["locate"]
    per_store = locate["seconds_per_sample"] * PAPER_SAMPLES + (
        locate["seconds"] - locate["scoring_seconds"]
    )
    whole = _whole_parameters(report["shape"])
    merge = min(report["merge"]["seconds"]["led_merging"]) * whole / report["merge"]["parameters"]
    merge *= (PAPER_FINETUNES + 1) / 3  # models read: base + 3 fine-tunes against base + 2
    return {
        "stores": PAPER_STORES * per_store / 60,
        "merge": merge / 60,
        "total": (PAPER_STORES * per_store + merge) / 60,
    }


def _whole_parameters(shape: dict) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    return sum(p.numel() for p in model.parameters())


def markdown(report: dict) -> str:
    lines = [
        f"Device: {report['device']}, torch {report['torch']}"
        + (" (SMOKE RUN: tiny model, not a measurement)" if report["smoke"] else ""),
        "",
    ]
    if "locate" in report:
        bare = report["bare"]["seconds_per_sample"]
        lines += [
            f"Locate, {report['tokens']} tokens per sample ({report['answer_tokens']} answer tokens), bfloat16:",
            "",
            "| run | samples | s / sample | / bare loop | peak device memory (sampled) | max reserved | plan | plan / measured |",
            "|---|---|---|---|---|---|---|---|",
            f"| bare forward+backward | {report['bare']['samples']} | {bare:.3f} | 1.00x | | | | |",
        ]
        for key, label in (
            ("locate", "locate"),
            ("locate_offload", "locate --offload-accumulators"),
        ):
            r = report[key]
            measured = r.get("device_used_peak")
            ratio = r.get("plan_over_measured")
            lines.append(
                f"| {label} | {round(r['samples_per_second'] * r['scoring_seconds'])} "
                f"| {r['seconds_per_sample']:.3f} | {r['ratio_to_bare']:.2f}x "
                f"| {gib(measured) if measured else '-'} "
                f"| {gib(r['max_reserved']) if 'max_reserved' in r else '-'} "
                f"| {gib(r['plan_total'])} | {f'{ratio:.3f}' if ratio else '-'} |"
            )
        lines.append("")
    if "merge" in report:
        m = report["merge"]
        lines += [
            f"Merge of base + 2 fine-tunes ({m['layers']} layers, {m['parameters'] / 1e9:.2f}B "
            f"parameters, bfloat16 stores): task_arithmetic {min(m['seconds']['task_arithmetic']):.1f} s, "
            f"led_merging {min(m['seconds']['led_merging']):.1f} s: {m['ratio']:.2f}x "
            f"(goal <= {TIME_GOAL}x: {'met' if m['ratio'] <= TIME_GOAL else 'NOT met'}).",
            "",
        ]
    paper = report.get("paper_setup_minutes")
    if paper:
        lines.append(
            f"The paper's setup, extrapolated: 6 stores of 128 samples {paper['stores']:.1f} min, "
            f"the merge of base + 3 fine-tunes {paper['merge']:.1f} min, total {paper['total']:.1f} min."
        )
    lines.append(f"Script wall time: {report['wall_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
