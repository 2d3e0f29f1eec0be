"""Model shapes the benchmarks share (``mergekit_led.tiny_models.llama_config`` arguments).

Imports nothing heavy, so a benchmark's child processes measure only what they use.
"""

# Llama-3.2-1B's shape: bench_merge.py --size 1b, bench_memory_plan.py --sizes 1b.
ONE_B = dict(
    hidden=2048,
    layers=16,
    vocab=128256,
    intermediate=8192,
    heads=32,
    kv_heads=8,
    tie_embeddings=True,
)
