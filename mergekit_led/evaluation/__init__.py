"""Is a model safe and useful? ``mergekit-led evaluate`` and its Python API.

``EVAL.yml`` (``spec``) names harmful prompts (to refuse), benign prompts (to
answer) and utility tasks with reference answers; ``Evaluator`` generates
greedy answers and measures harmful compliance, over-refusal and exact-match
accuracy (docs/evaluate.md).
"""

from mergekit_led.evaluation.eval_report import EvalReport, write_report
from mergekit_led.evaluation.evaluator import Evaluator, evaluate_model, load_model_and_tokenizer
from mergekit_led.evaluation.spec import EvalSpec, load_eval_spec, parse_eval_spec

__all__ = [
    "EvalReport",
    "EvalSpec",
    "Evaluator",
    "evaluate_model",
    "load_eval_spec",
    "load_model_and_tokenizer",
    "parse_eval_spec",
    "write_report",
]
