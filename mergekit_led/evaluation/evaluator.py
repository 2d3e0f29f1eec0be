"""Evaluate a causal LM on an ``EvalSpec``: generation, verdicts, metrics.

``Evaluator`` loads and tokenises the sets once and then evaluates any number
of models that share the tokenizer (a sweep evaluates every merged setting
with one ``Evaluator``); ``evaluate_model`` is the one-model shortcut.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from mergekit_led.errors import EvalError
from mergekit_led.evaluation.eval_report import EvalReport
from mergekit_led.evaluation.generation import context_length, greedy_answers
from mergekit_led.evaluation.judging import AnswerItem, Judge, apply_classifier, matcher_of
from mergekit_led.evaluation.likelihood import answer_likelihood
from mergekit_led.evaluation.sets import EvalSet, load_set
from mergekit_led.evaluation.spec import EvalSpec

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    """One set, tokenised: generation prompts and (tasks) teacher-forced samples."""

    set: EvalSet
    prompt_ids: Tuple[Tuple[int, ...], ...]
    scored: Tuple[Any, ...]  # location.data.TokenizedSample per item with a reference


class Evaluator:
    """The sets of ``spec``, loaded and tokenised for ``tokenizer``."""

    def __init__(self, spec: EvalSpec, tokenizer, *, batch_size: Optional[int] = None):
        from mergekit_led.location.data import make_tokenization

        self.spec = spec
        self.tokenizer = tokenizer
        self.batch_size = batch_size or spec.generation.batch_size
        self.matcher = matcher_of(spec)
        self.judge = Judge(self.matcher)
        self._classifier = None  # the judge: model, loaded on first use and kept for the next
        wants_template = spec.generation.chat_template == "auto"
        if wants_template and spec.sets() and not getattr(tokenizer, "chat_template", None):
            warnings.warn(
                "The tokenizer has no chat template: prompts are given as plain text "
                "(set generation.chat_template: none to silence this).",
                stacklevel=2,
            )
        self.tokenization = make_tokenization(
            tokenizer, spec.generation.chat_template, spec.generation.max_length
        )
        self.pad_id = pad_id_of(tokenizer)
        self.stop_ids = stop_ids_of(self.tokenization)
        self.sets = [self._prepare(load_set(name, s)) for name, s in spec.sets().items()]

    def _prepare(self, loaded: EvalSet) -> _Prepared:
        from mergekit_led.location.data import prompt_encoding, tokenize_example

        prompts = []
        for item in loaded.items:
            text, encode = prompt_encoding(self.tokenizer, item.prompt, self.tokenization)
            ids = encode(text)
            if self.tokenization.max_length is not None:
                ids = ids[-self.tokenization.max_length :]
            if not ids:
                raise EvalError(
                    f"Row {item.index} of evaluation set {loaded.name} ({loaded.source}) "
                    "has an empty prompt."
                )
            prompts.append(tuple(ids))
        scored = []
        if loaded.is_task:
            for item in loaded.items:
                sample = tokenize_example(
                    self.tokenizer, item.prompt, item.reference, self.tokenization, item.index
                )
                if not isinstance(sample, str):  # a skip reason: too long for max_length
                    scored.append(sample)
        return _Prepared(loaded, tuple(prompts), tuple(scored))

    def evaluate(
        self, model, *, name: str = "<in-memory model>", device=None, progress: bool = False
    ) -> EvalReport:
        """Every set of the spec on ``model`` (already on its device, eval mode)."""
        start = time.perf_counter()
        device = device or next(model.parameters()).device
        model.eval()
        report = EvalReport(model=name, settings=self._settings())
        for prepared in self.sets:
            try:
                self._evaluate_set(model, prepared, report, device, progress)
            except (torch.OutOfMemoryError, MemoryError) as error:
                raise EvalError(
                    f"Out of memory while evaluating set {prepared.set.name} at batch size "
                    f"{self.batch_size}; try --batch-size {max(1, self.batch_size // 2)}."
                ) from error
        if self.spec.judge is not None:
            apply_classifier(report, self.classifier(device))
        if self.spec.lm_eval is not None:
            from mergekit_led.evaluation.harness import run_lm_eval

            report.lm_eval = run_lm_eval(model, self.tokenizer, self.spec.lm_eval)
        report.seconds = time.perf_counter() - start
        return report

    def _evaluate_set(self, model, prepared: _Prepared, report: EvalReport, device, progress):
        loaded, spec = prepared.set, prepared.set.spec
        answer_ids = greedy_answers(
            model,
            prepared.prompt_ids,
            max_new_tokens=self._new_tokens(model, prepared),
            stop_ids=self.stop_ids,
            pad_id=self.pad_id,
            batch_size=self.batch_size,
            device=device,
            progress=loaded.name if progress else None,
        )
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answer_ids]
        items = [
            AnswerItem(item.index, item.prompt_text, text, item.reference)
            for item, text in zip(loaded.items, texts)
        ]
        likelihood = None
        if loaded.is_task:
            likelihood = answer_likelihood(
                model,
                prepared.scored,
                pad_id=self.pad_id,
                batch_size=self.batch_size,
                device=device,
            )
        self.judge.add_set(
            report,
            loaded.name,
            items,
            task=spec if loaded.is_task else None,
            likelihood=likelihood,
        )

    def classifier(self, device):
        """The ``judge:`` model of the spec, loaded once on ``device``."""
        if self._classifier is None:
            from mergekit_led.evaluation.classifier import load_classifier

            self._classifier = load_classifier(self.spec.judge, device=str(device))
        return self._classifier

    def _new_tokens(self, model, prepared: _Prepared) -> int:
        """The set's ``max_new_tokens``, bounded by the model's context: past it a
        model's positions mean nothing and generation would only stop at the
        cap. One bound for the whole set (its longest prompt), so an answer
        does not depend on the batch it was generated in."""
        wanted = prepared.set.spec.max_new_tokens
        context = context_length(model)
        if context is None:
            return wanted
        longest = max(len(ids) for ids in prepared.prompt_ids)
        if longest >= context:
            raise EvalError(
                f"Evaluation set {prepared.set.name} ({prepared.set.source}) has a prompt of "
                f"{longest} tokens and the model's context is {context}: no room for an "
                "answer; set generation.max_length to keep fewer prompt tokens."
            )
        if longest + wanted <= context:
            return wanted
        bounded = context - longest
        warnings.warn(
            f"Evaluation set {prepared.set.name}: answers cut at {bounded} new tokens, not "
            f"max_new_tokens {wanted}: the model's context is {context} tokens and the longest "
            f"prompt has {longest}.",
            stacklevel=2,
        )
        return bounded

    def _settings(self) -> Dict[str, Any]:
        return {
            "sets": {
                p.set.name: {
                    "source": p.set.source,
                    "count": len(p.set.items),
                    "max_new_tokens": p.set.spec.max_new_tokens,
                }
                for p in self.sets
            },
            "chat_template": self.tokenization.use_chat_template,
            "batch_size": self.batch_size,
            "refusal_list": self.matcher.name or "none",
            "refusal_strings": len(self.matcher.strings),
            "refusal_match": self.matcher.match,
            **({"judge_model": self.spec.judge.model} if self.spec.judge is not None else {}),
        }


def stop_ids_of(tokenization) -> List[int]:
    """The ids that end a greedy answer: eos and the chat template's end of turn."""
    return sorted(
        {t for t in (tokenization.eos_token_id, tokenization.end_of_turn_id) if t is not None}
    )


def pad_id_of(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its eos or unk."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # left padding under a zero attention mask: any id will do


def evaluate_model(
    model,
    tokenizer,
    spec: EvalSpec,
    *,
    name: str = "<in-memory model>",
    batch_size: Optional[int] = None,
    progress: bool = False,
) -> EvalReport:
    """Evaluate one in-memory model (the Python API of ``mergekit-led evaluate``)."""
    return Evaluator(spec, tokenizer, batch_size=batch_size).evaluate(
        model, name=name, progress=progress
    )


def load_model_and_tokenizer(
    model: str, *, device: str = "cpu", dtype: str = "auto", trust_remote_code=False
):
    """``(model, tokenizer)`` of a local folder or Hub id, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_led.core.locate_options import MODEL_DTYPES

    if dtype not in MODEL_DTYPES:
        raise EvalError(f"--dtype {dtype!r}: choose one of {', '.join(MODEL_DTYPES)}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        loaded = AutoModelForCausalLM.from_pretrained(
            model, dtype=MODEL_DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, ImportError) as error:
        reason = " ".join(str(error).split())
        raise EvalError(f"Cannot load model {model} as a causal LM: {reason}") from error
    loaded.to(device).eval()
    return loaded, tokenizer


__all__: List[str] = ["Evaluator", "evaluate_model", "load_model_and_tokenizer"]
