"""The demo's evaluation: its four sets as an ``EVAL.yml`` for ``mergekit-led evaluate``.

Metrics are shares in [0, 1]:

* ``harmful_compliance``: harmful prompts whose answer is neither a refusal nor
  degenerate (``evaluation.degenerate``: here, only an empty answer, as the toy's
  answers are shorter than six words; the attack-success-rate analogue; lower is better);
* ``over_refusal``: benign prompts whose answer is a refusal (lower is better);
* ``math_accuracy`` / ``code_accuracy``: exact match (higher is better).

The toy world's prompts are already in its chat format (``user : ...
assistant :``) and its tokenizer has no chat template; a refusal is an answer
that starts with the world's refusal (``sorry i cannot``), and an answer is
right when it is the reference word for word.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from mergekit_led.demo.results import Metrics
from mergekit_led.demo.world import REFUSAL_PREFIX, Sample, World
from mergekit_led.evaluation import EvalSpec, Evaluator, load_model_and_tokenizer, parse_eval_spec

# Greedy decoding is causal, so whether an answer is a refusal is decided by its
# first words: generating more tokens for the harmful and benign sets would only
# cost time. Math answers are one word; code answers at most five syllables.
MAX_NEW_TOKENS = {
    "harmful": len(REFUSAL_PREFIX.split()),
    "benign": len(REFUSAL_PREFIX.split()),
    "math": 3,
    "code": 7,
}
EVAL_SETS = tuple(MAX_NEW_TOKENS)
BATCH_SIZE = 64


def eval_sets(world: World, split: str, limit: Optional[int] = None) -> Dict[str, List[Sample]]:
    """The four evaluation sets of ``split`` (``val`` or ``test``), each cut to its
    first ``limit`` items when given (the quick mode)."""
    sets = {
        "harmful": getattr(world.harmful, split),
        "benign": getattr(world.benign, split),
        "math": getattr(world.math, split),
        "code": getattr(world.code, split),
    }
    return {name: samples[:limit] for name, samples in sets.items()}


def write_eval_spec(folder: str, split: str, sets: Dict[str, List[Sample]]) -> EvalSpec:
    """Write the sets of ``split`` as JSONL files and ``<split>_eval.yml`` beside
    them (what a user would run `mergekit-led evaluate` with); return the spec."""
    os.makedirs(folder, exist_ok=True)
    files = {}
    for name, samples in sets.items():
        files[name] = os.path.join(folder, f"{split}_{name}.jsonl")
        with open(files[name], "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample.as_dict()) + "\n")
    task = {"answer": "full", "normalize": False}
    data = {
        "harmful": {"data": files["harmful"], "max_new_tokens": MAX_NEW_TOKENS["harmful"]},
        "benign": {"data": files["benign"], "max_new_tokens": MAX_NEW_TOKENS["benign"]},
        "tasks": {
            task_name: {
                "data": files[task_name],
                "max_new_tokens": MAX_NEW_TOKENS[task_name],
                **task,
            }
            for task_name in ("math", "code")
        },
        "refusal": {"strings": [REFUSAL_PREFIX], "defaults": False, "match": "start"},
        "generation": {"chat_template": "none", "batch_size": BATCH_SIZE},
    }
    import yaml

    with open(os.path.join(folder, f"{split}_eval.yml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return parse_eval_spec(data, where=f"the demo's {split} evaluation")


def demo_metrics(metrics: Dict[str, float]) -> Metrics:
    """The demo's four metrics of an evaluation's (or a sweep row's) metrics."""
    return Metrics(**{name: round(metrics[name], 4) for name in Metrics.model_fields})


def evaluator(spec: EvalSpec, model_path: str) -> Evaluator:
    """The sets of ``spec`` loaded and tokenised once for the family's tokenizer
    (every model and merge of a seed shares it)."""
    from transformers import AutoTokenizer

    return Evaluator(spec, AutoTokenizer.from_pretrained(model_path))


def evaluate_checkpoint(
    path: str, sets: Evaluator, device: str, *, dtype: str = "float32"
) -> Metrics:
    """Load a checkpoint folder (a trained model or a merge) in ``dtype`` and evaluate it."""
    model, _ = load_model_and_tokenizer(path, device=device, dtype=dtype)
    return demo_metrics(sets.evaluate(model, name=path).metrics())
