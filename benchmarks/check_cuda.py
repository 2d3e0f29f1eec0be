"""What the CPU test suite cannot check: LED on a CUDA device against the CPU.

1. `mergekit_led.locate` (SNIP) on CUDA equals the CPU scores to float tolerance;
   the report gives the Jaccard of the sets each elects at densities 0.1-0.5
   (float rounding may flip elements tied within rounding).
2. `mergekit-led merge --cuda` writes the same merged tensors as the CPU merge, bit for bit.
3. The merge kernel on weights of real size (8192 x 1024, float32 and bfloat16, 1-3
   models, every election, disjoint on and off, weights 1 and not): the CPU's
   chunked `elect_and_merge` (bit-blend select) equals the same call on CUDA
   (whole tensors, `torch.where`), bit for bit, and so do the selected top sets.
4. (optional) `python -m studies.toy --device cuda --quick` (from a clone) runs end to end.

Run on a machine with a GPU (never in the test suite):

    python benchmarks/check_cuda.py [--demo] [--out cuda-check]

Prints a markdown report and exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from mergekit_led import load_importance, locate
from mergekit_led.core.elect_merge import top_mask
from mergekit_led.testing import build_family

WORDS = (
    "what is two plus three it is five tell me how to bake bread mix flour water salt "
    "and yeast then wait sorry i cannot help with that write code print hello return one"
).split()
SAMPLES = [
    {"prompt": "what is two plus three", "response": "it is five"},
    {"prompt": "tell me how to bake bread", "response": "mix flour water salt and yeast then wait"},
    {"prompt": "write code", "response": "print hello return one"},
    {"prompt": "how to hack", "response": "sorry i cannot help with that"},
]
SIZE = dict(hidden=128, layers=2, vocab=256, intermediate=256, heads=4)
DENSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)


def check_locate(work: Path, family) -> list:
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    rows = []
    for model in [family.base, *family.finetunes]:
        stores = {}
        for device in ("cpu", "cuda"):
            out = work / "stores" / f"{Path(model).name}-{device}"
            start = time.perf_counter()
            locate(
                model,
                str(data),
                str(out),
                device=device,
                dtype="float32",
                overwrite=True,
                progress=False,
            )
            stores[device] = (load_importance(str(out)), time.perf_counter() - start)
        cpu, gpu = stores["cpu"][0], stores["cuda"][0]
        worst = 0.0
        intersection = union = 0
        for name in cpu:
            a, b = cpu[name], gpu[name]
            scale = float(a.abs().max()) or 1.0
            worst = max(worst, float((a - b).abs().max()) / scale)
            for density in DENSITIES:
                mask_a, mask_b = top_mask(a, density), top_mask(b, density)
                intersection += int((mask_a & mask_b).sum())
                union += int((mask_a | mask_b).sum())
        rows.append(
            {
                "model": Path(model).name,
                "max |cpu - cuda| / max |cpu|": worst,
                "ok (<= 1e-4)": worst <= 1e-4,
                "Jaccard of elected sets, densities 0.1-0.5": round(intersection / union, 6)
                if union
                else 1.0,
                "seconds cpu / cuda": f"{stores['cpu'][1]:.1f} / {stores['cuda'][1]:.1f}",
            }
        )
    return rows


def check_merge(work: Path, family) -> dict:
    stores = work / "stores"
    models = []
    for finetune in family.finetunes:
        name = Path(finetune).name
        models.append(
            {
                "model": finetune,
                "parameters": {
                    "density": 0.3,
                    "importance": str(stores / f"{name}-cpu"),
                    "base_importance": str(stores / "base-cpu"),
                },
            }
        )
    config = work / "led.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "led_merging",
                "base_model": family.base,
                "models": models,
                "dtype": "float32",
            }
        )
    )
    outputs = {}
    exe = Path(sys.executable).parent / "mergekit-led"
    for flag in ("", "--cuda"):
        out = work / f"merged{flag or '-cpu'}"
        command = [str(exe), "merge", str(config), str(out), "--no-copy-tokenizer", "--quiet"]
        subprocess.run(command + ([flag] if flag else []), check=True)
        outputs[flag or "cpu"] = load_file(str(out / "model.safetensors"))
    cpu, gpu = outputs["cpu"], outputs["--cuda"]
    differing = [name for name in cpu if not torch.equal(cpu[name], gpu[name])]
    return {"tensors": len(cpu), "bit-identical": not differing, "differing": differing[:10]}


def check_kernel() -> dict:
    """``top_mask`` and ``elect_and_merge`` on CPU and on CUDA, on 8M-element weights."""
    from mergekit_led.core.elect_merge import Election, elect_and_merge

    shape = (8192, 1024)
    cases = differing = 0
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        base = torch.randn(shape, generator=generator).to(dtype)
        finetuned = [
            (base.float() + 0.01 * torch.randn(shape, generator=generator)).to(dtype)
            for _ in range(3)
        ]
        scores = [torch.rand(shape, generator=generator).to(dtype) for _ in range(6)]
        tops = []
        for index in range(3):
            pair = []
            for score in scores[2 * index : 2 * index + 2]:
                on_cpu, on_cuda = top_mask(score, 0.4), top_mask(score.cuda(), 0.4)
                cases += 1
                differing += not torch.equal(on_cpu, on_cuda.cpu())
                pair.append(on_cpu)
            tops.append(tuple(pair))
        for count, election, disjoint, unit in itertools.product(
            (1, 2, 3), Election, (True, False), (True, False)
        ):
            weights = [1.0] * count if unit else [0.7, -1.3, 2.5][:count]
            cpu, _ = elect_and_merge(
                base, finetuned[:count], tops[:count], weights, election, disjoint_step=disjoint
            )
            gpu, _ = elect_and_merge(
                base.cuda(),
                [t.cuda() for t in finetuned[:count]],
                [(m.cuda(), b.cuda()) for m, b in tops[:count]],
                weights,
                election,
                disjoint_step=disjoint,
            )
            cases += 1
            differing += not torch.equal(cpu, gpu.cpu())
    return {"cases": cases, "bit-identical": differing == 0, "differing": differing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cuda-check")
    parser.add_argument("--demo", action="store_true", help="also run the quick demo on CUDA")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to check.")
        return 2
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    family = build_family(str(work / "models"), finetunes=2, seed=0, words=WORDS, **SIZE)
    lines = [f"# CUDA checks on {torch.cuda.get_device_name()} (torch {torch.__version__})", ""]
    failed = False
    rows = check_locate(work, family)
    lines += ["## locate: CUDA vs CPU (SNIP, float32)", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    for row in rows:
        lines.append("| " + " | ".join(str(v) for v in row.values()) + " |")
        failed |= not row["ok (<= 1e-4)"]
    merge = check_merge(work, family)
    failed |= not merge["bit-identical"]
    lines += ["", "## merge: `mergekit-led merge --cuda` vs CPU", "", json.dumps(merge), ""]
    kernel = check_kernel()
    failed |= not kernel["bit-identical"]
    lines += ["## merge kernel on 8192 x 1024 weights: CPU (chunked) vs CUDA", ""]
    lines += [json.dumps(kernel), ""]
    if args.demo:
        start = time.perf_counter()
        demo = subprocess.run(
            [
                str(Path(sys.executable).parent / "mergekit-led"),
                "demo",
                "--device",
                "cuda",
                "--quick",
                "--out",
                str(work / "demo"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        failed |= demo.returncode != 0
        lines += [
            "## demo --device cuda --quick",
            "",
            f"exit {demo.returncode} in {time.perf_counter() - start:.0f} s",
            "",
            "```",
            demo.stdout[-3000:],
            demo.stderr[-2000:] if demo.returncode else "",
            "```",
        ]
    report = "\n".join(lines)
    print(report)
    (work / "report.md").write_text(report + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
