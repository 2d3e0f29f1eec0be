"""lm-evaluation-harness tasks on an in-memory model (the ``lm-eval`` extra).

The model is wrapped in lm-eval's own ``HFLM`` (which takes a loaded
``PreTrainedModel``) and run by ``lm_eval.simple_evaluate``: the tasks, their
prompts and metrics are lm-eval's, found wherever lm-eval finds them (its task
registry; datasets must be available locally when offline).
"""

from __future__ import annotations

from typing import Dict

from mergekit_led.errors import EvalError
from mergekit_led.evaluation.spec import LmEvalSpec


def run_lm_eval(model, tokenizer, spec: LmEvalSpec) -> Dict[str, Dict[str, float]]:
    """``{task: {metric: value}}``: every numeric result lm-eval reports."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise EvalError(
            "lm_eval in the evaluation spec needs lm-evaluation-harness: "
            "pip install 'mergekit-led[lm-eval]'."
        ) from error
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)
    try:
        output = lm_eval.simple_evaluate(
            model=wrapped, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot, limit=spec.limit
        )
    except (KeyError, ValueError, FileNotFoundError) as error:
        reason = " ".join(str(error).split())
        raise EvalError(f"lm-eval could not run tasks {', '.join(spec.tasks)}: {reason}") from error
    results = (output or {}).get("results", {})
    return {
        task: {
            metric: float(value)
            for metric, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for task, values in results.items()
    }
