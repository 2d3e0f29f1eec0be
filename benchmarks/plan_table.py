"""The table of docs/locate.md#memory-plan: model size × GPU memory -> the flags that fit.

Every entry is the memory plan's (``mergekit_led.location.memory``), computed
from configs shaped like the named models (built on the meta device; nothing is
downloaded), in bfloat16, for samples of 1024 tokens of which 256 are answer.

    python benchmarks/plan_table.py
"""

from __future__ import annotations

from transformers import LlamaConfig, MistralConfig

from mergekit_led.location.memory import Setup, judge
from mergekit_led.location.memory_budget import GIB, Budget
from mergekit_led.location.memory_shape import shape_from_config

MODELS = {
    "Llama-3.2-1B": LlamaConfig(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "Mistral-7B": MistralConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
    ),
    "Llama-3-8B": LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
    ),
    "Llama-2-13B": LlamaConfig(
        hidden_size=5120,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        intermediate_size=13824,
        vocab_size=32000,
    ),
}
GPUS_GIB = (24, 48, 80)  # 24 GB cards hold 24 GiB, H100/A100 80GB about 80 GiB
TOKENS, ANSWER = 1024, 256


def main() -> None:
    print(
        "| model | parameters | plan, no flags | "
        + " | ".join(f"{gb} GiB GPU" for gb in GPUS_GIB)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(GPUS_GIB))
    for name, config in MODELS.items():
        config.dtype = "bfloat16"
        shape = shape_from_config(config, name)
        setup = Setup(dtype="bfloat16", tokens=TOKENS, answer_tokens=ANSWER, device_type="cuda")
        cells = []
        plain = None
        for gb in GPUS_GIB:
            verdict = judge(shape, setup, Budget(gb * GIB, f"{gb} GiB", "cuda", "cuda"))
            plain = verdict.plan
            if verdict.fits:
                cells.append("no flags")
            elif verdict.fitting is not None:
                fitting = verdict.fitting
                cells.append(
                    f"`{' '.join(fitting.setup.flags())}` ({fitting.device_total / GIB:.0f} GiB"
                    + (f" + {fitting.host_total / GIB:.0f} GiB CPU" if fitting.host_total else "")
                    + ")"
                )
            else:
                cells.append("does not fit (`--device-map auto` over several GPUs)")
        print(
            f"| {name} | {shape.parameters / 1e9:.2f}B | {plain.device_total / GIB:.0f} GiB | "
            + " | ".join(cells)
            + " |"
        )


if __name__ == "__main__":
    main()
