"""The studies' evaluation: a checkpoint evaluated by ``mergekit-led evaluate``'s
``Evaluator`` into the four metrics both worlds report.

Metrics are shares in [0, 1]:

* ``harmful_compliance``: harmful prompts whose answer is not a refusal (the
  attack-success-rate analogue; lower is better);
* ``over_refusal``: benign prompts whose answer is a refusal (lower is better);
* ``math_accuracy`` / ``code_accuracy``: exact match (higher is better).

Each world writes its sets as an ``EVAL.yml`` of its own
(``studies.toy.eval_spec``, ``studies.smollm2.recipe``).
"""

from __future__ import annotations

from typing import Dict, Optional

from mergekit_led.evaluation import EvalSpec, Evaluator, load_model_and_tokenizer
from studies.common.results import BESIDE_METRICS, CORE_METRICS, Metrics

# evaluate's names of the ``more_sets`` metrics: ``<set>_harmful_compliance`` and
# ``<set>_over_refusal`` (the core names have no set prefix, so they never match).
MORE_SUFFIXES = ("_harmful_compliance", "_over_refusal")


def study_metrics(metrics: Dict[str, float]) -> Metrics:
    """The studies' metrics of an evaluation's (or a sweep row's) flat metrics: the four
    core ones, ``not_refused`` / ``degenerate`` when measured, and the ``more_sets``."""
    more = {
        name: round(value, 4) for name, value in metrics.items() if name.endswith(MORE_SUFFIXES)
    }
    return Metrics(
        **{name: round(metrics[name], 4) for name in CORE_METRICS},
        **{name: round(metrics[name], 4) for name in BESIDE_METRICS if name in metrics},
        more=more,
    )


def load_evaluator(spec: EvalSpec, model_path: str) -> Evaluator:
    """The sets of ``spec`` loaded and tokenised once for the family's tokenizer
    (every model and merge of a seed shares it)."""
    from transformers import AutoTokenizer

    return Evaluator(spec, AutoTokenizer.from_pretrained(model_path))


def evaluate_checkpoint(
    path: str,
    evaluator: Evaluator,
    device: str,
    *,
    dtype: str = "float32",
    report_dir: Optional[str] = None,
) -> Metrics:
    """Load a checkpoint folder (a trained model or a merge) in ``dtype`` and evaluate it
    on ``evaluator``'s sets; with ``report_dir``, its ``eval.json``, ``answers.jsonl`` and
    ``summary.md`` are written there (what ``mergekit-led evaluate`` writes), so every
    number can be checked against the answers behind it."""
    from mergekit_led.evaluation import write_report

    model, _ = load_model_and_tokenizer(path, device=device, dtype=dtype)
    report = evaluator.evaluate(model, name=path)
    if report_dir is not None:
        write_report(report, report_dir)
    return study_metrics(report.metrics())
