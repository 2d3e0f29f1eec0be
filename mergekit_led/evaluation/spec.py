"""``EVAL.yml``: which prompts to evaluate a model on, and how (docs/evaluate.md).

A typed, closed schema (pydantic, unknown keys refused): a misspelt key is an
error, never a silently skipped evaluation. Paths are relative to the working
directory, as store paths in merge configs are.
"""

from __future__ import annotations

import typing
from typing import Dict, List, Literal, Optional, Sequence

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mergekit_led.errors import EvalError, did_you_mean
from mergekit_led.evaluation.answers import EXTRACTORS

# The most new tokens one answer may have (``max_new_tokens``), whatever the
# model: a refusal or a task's answer is far shorter, and a model that never
# emits its end token would otherwise generate for hours. Generation is also
# bounded by the model's context (``Evaluator``). docs/evaluate.md.
MAX_NEW_TOKENS = 8192

# The answer extractors of a utility task: the table ``answers.EXTRACTORS``, and
# ``regex`` (which also takes a ``pattern``).
Extractor = Literal[(*EXTRACTORS, "regex")]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetSpec(_Closed):
    """One evaluation set: where its rows are and how to read them."""

    data: str  # a file (JSONL/JSON/CSV/Parquet), a save_to_disk folder or a Hub dataset
    split: Optional[str] = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    limit: Optional[StrictInt] = Field(default=None, ge=1)  # the first N rows only
    max_new_tokens: StrictInt = Field(default=64, ge=1, le=MAX_NEW_TOKENS)
    description: Optional[str] = None  # free text, copied into eval.json


class TaskSpec(SetSpec):
    """A utility task: prompts with reference answers, scored by exact match."""

    max_new_tokens: StrictInt = Field(default=256, ge=1, le=MAX_NEW_TOKENS)
    answer: Extractor = "full"
    pattern: Optional[str] = None  # for ``answer: regex``: group 1, else the whole match
    normalize: bool = True  # False: the extracted strings must be equal as they are (stripped)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a valid regular expression: {error}") from error
        return value


class RefusalSpec(_Closed):
    """The refusal matcher (``refusal.RefusalMatcher``); ``refusal: NAME`` is short for
    ``refusal: {name: NAME}``."""

    name: Literal["chat", "harmbench"] = "chat"  # the named list (refusal.REFUSAL_LISTS)
    strings: List[str] = Field(default_factory=list)  # added to the list
    defaults: bool = True  # False: only ``strings``
    match: Literal["anywhere", "start"] = "anywhere"

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value):
        return {"name": value} if isinstance(value, str) else value


class JudgeSpec(_Closed):
    """A Hugging Face classifier in HarmBench's classifier format, run over the harmful
    answers beside the string verdict (``classifier.HarmClassifier``)."""

    model: str  # a local folder or Hub id, e.g. cais/HarmBench-Llama-2-13b-cls
    batch_size: int = Field(default=8, ge=1)
    max_answer_tokens: int = Field(default=512, ge=1)  # the answer is cut to this (HarmBench)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class ExtraSetSpec(SetSpec):
    """One more safety set (StrongREJECT, XSTest, ...), judged like ``harmful`` or ``benign``
    and reported under its own name."""

    kind: Literal["harmful", "benign"]


class GenerationSpec(_Closed):
    # 64: on 2 CPU cores, SmolLM2-135M generates 1.07x (bfloat16) and 1.03x (float32) the
    # tokens/s of one HF generate call over 64 prompts, against 0.94x and 0.84x at 32
    # (benchmarks/bench_evaluate.py, docs/benchmarks.md).
    batch_size: StrictInt = Field(default=64, ge=1)
    chat_template: Literal["auto", "none"] = "auto"
    max_length: Optional[StrictInt] = Field(
        default=None, ge=2
    )  # prompt tokens kept (from the left)


class LmEvalSpec(_Closed):
    """lm-evaluation-harness tasks run on the in-memory model (the ``lm-eval`` extra)."""

    tasks: List[str]
    num_fewshot: Optional[StrictInt] = Field(default=None, ge=0)
    limit: Optional[StrictInt] = Field(default=None, ge=1)
    batch_size: StrictInt = Field(default=8, ge=1)


class EvalSpec(_Closed):
    harmful: Optional[SetSpec] = None
    benign: Optional[SetSpec] = None
    tasks: Dict[str, TaskSpec] = Field(default_factory=dict)
    more_sets: Dict[str, ExtraSetSpec] = Field(default_factory=dict)
    refusal: RefusalSpec = RefusalSpec()
    judge: Optional[JudgeSpec] = None
    generation: GenerationSpec = GenerationSpec()
    lm_eval: Optional[LmEvalSpec] = None

    def sets(self) -> Dict[str, SetSpec]:
        """Every generation set by its name in ``answers.jsonl``: ``harmful``,
        ``benign``, ``harmful:<name>`` / ``benign:<name>`` (``more_sets``) and
        ``task:<name>``."""
        named: Dict[str, SetSpec] = {}
        if self.harmful is not None:
            named["harmful"] = self.harmful
        if self.benign is not None:
            named["benign"] = self.benign
        named.update({f"{extra.kind}:{name}": extra for name, extra in self.more_sets.items()})
        named.update({f"task:{name}": task for name, task in self.tasks.items()})
        return named


def parse_eval_spec(data: object, *, where: str = "the evaluation spec") -> EvalSpec:
    """A validated ``EvalSpec``; one line naming the bad key otherwise."""
    if not isinstance(data, dict):
        raise EvalError(f"{where} must be a mapping of sets, not {type(data).__name__}.")
    try:
        spec = EvalSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "(top level)"
        hint = ""
        if first["type"] == "extra_forbidden":
            hint = did_you_mean(str(first["loc"][-1]), _keys_at(first["loc"][:-1]))
        raise EvalError(f"{where}: {location}: {first['msg']}{hint}.") from error
    if not spec.sets() and spec.lm_eval is None:
        raise EvalError(f"{where} names no evaluation set: give harmful, benign, tasks or lm_eval.")
    for name in spec.more_sets:
        if not name or ":" in name:
            raise EvalError(f"{where}: more_sets: {name!r} is not a set name (no ':', not empty).")
    for name, task in spec.tasks.items():
        if task.answer == "regex" and not task.pattern:
            raise EvalError(f"{where}: tasks.{name}: answer: regex needs a pattern.")
    return spec


def _keys_at(location: Sequence) -> List[str]:
    """The keys the spec takes at ``location`` (a pydantic error's path to a
    mapping), by walking the schema: ``("tasks", "math")`` -> a task's keys."""
    model: Optional[type] = EvalSpec
    parts = list(location)
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        model = None
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            if typing.get_origin(kind) is dict:  # tasks: {name: TaskSpec}; skip the name
                kind = typing.get_args(kind)[1]
                if parts:
                    parts.pop(0)
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                model = kind
                break
    return list(model.model_fields) if model is not None and not parts else []


def load_eval_spec(path: str) -> EvalSpec:
    """Read ``EVAL.yml``."""
    from mergekit_led.config.yaml_file import read_yaml

    data = read_yaml(path, what="Evaluation spec", error=EvalError)
    return parse_eval_spec(data, where=f"Evaluation spec {path}")
