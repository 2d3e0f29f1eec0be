"""A sanity check of tokenized location data: do the answers survive the tokenizer?

SNIP scores are gradients of the answers' loss, so a tokenizer that loses the answers
gives scores of something else, silently. It happens: ``AutoTokenizer`` replaces the
class a checkpoint's ``tokenizer_config.json`` declares for some model types
(transformers' ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``, ``qwen2`` among them). A
Qwen2 checkpoint whose tokenizer is not byte-level BPE is then rebuilt as one, and every
byte sequence outside its vocabulary is dropped: answers shrink to a token or two, or to
nothing, and locate scored "predict the end of turn" (measured: 6.5% of the answers'
characters survived a tokenize/decode round trip, no unknown token at all).

Measured per store over the answers of the samples scored, each tokenized alone and
without special tokens, as locate tokenizes it (before the closing token is appended):

- ``answer_unk_share``: answer tokens that are the tokenizer's unknown token;
- ``empty_answer_share``: answers that give no token at all;
- ``mean_answer_tokens``;
- ``answer_chars_recovered``: the share of the answers' non-space characters that
  ``decode`` gives back (after the tokenizer's own normalizer, so lower-casing or NFC
  tokenizers are not penalised). Byte-level BPE and byte-fallback SentencePiece give 1.0
  on any text; only this one catches the Qwen2 case above.

Above the warning thresholds a warning is logged; when most answers are lost the run
is refused unless ``allow_bad_tokenization`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from mergekit_led.errors import LocateError
from mergekit_led.location import data as location_data
from mergekit_led.location.data_loading import LocationRows

LOG = logging.getLogger(__name__)

# Healthy tokenizers give unk 0, empty 0 and recovered 1.0 on their own language;
# answers with a few out-of-vocabulary words warn, answers mostly lost are refused.
WARN_UNK_SHARE = 0.05
WARN_EMPTY_SHARE = 0.05
WARN_RECOVERED = 0.9
REFUSE_UNK_SHARE = 0.5
REFUSE_EMPTY_SHARE = 0.5
REFUSE_RECOVERED = 0.5
# Fewer tokens than this per answer, on answers of at least SHORT_WORDS words, warns.
SHORT_TOKENS = 2.0
SHORT_WORDS = 3.0

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class AnswerCheck:
    """How the answers of the scored samples fare through the tokenizer."""

    answers: int
    answer_tokens: int
    mean_answer_tokens: float
    mean_answer_words: float
    answer_unk_share: Optional[float]  # None: the tokenizer has no unknown token
    empty_answer_share: float
    answer_chars_recovered: Optional[float]  # None: the answers hold no character

    def manifest_fields(self) -> Dict[str, Any]:
        """What the store's manifest records (``dataset``)."""
        return {
            "mean_answer_tokens": round(self.mean_answer_tokens, 3),
            "answer_unk_share": _rounded(self.answer_unk_share),
            "empty_answer_share": round(self.empty_answer_share, 4),
            "answer_chars_recovered": _rounded(self.answer_chars_recovered),
        }

    def warnings(self) -> List[str]:
        found = []
        if self.answer_unk_share is not None and self.answer_unk_share > WARN_UNK_SHARE:
            found.append(f"{self.answer_unk_share:.1%} of the answer tokens are the unknown token")
        if self.empty_answer_share > WARN_EMPTY_SHARE:
            found.append(f"{self.empty_answer_share:.1%} of the answers give no token")
        if self.answer_chars_recovered is not None and self.answer_chars_recovered < WARN_RECOVERED:
            found.append(
                f"decoding the answers' tokens gives back only "
                f"{self.answer_chars_recovered:.1%} of their characters"
            )
        if self.mean_answer_tokens < SHORT_TOKENS and self.mean_answer_words >= SHORT_WORDS:
            found.append(
                f"answers of {self.mean_answer_words:.1f} words on average give only "
                f"{self.mean_answer_tokens:.2f} tokens"
            )
        return found

    def refused(self) -> bool:
        return (
            (self.answer_unk_share is not None and self.answer_unk_share > REFUSE_UNK_SHARE)
            or self.empty_answer_share > REFUSE_EMPTY_SHARE
            or (
                self.answer_chars_recovered is not None
                and self.answer_chars_recovered < REFUSE_RECOVERED
            )
        )


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def answer_check(tokenizer, answers: Sequence[str]) -> AnswerCheck:
    """Measure how ``answers`` fare through ``tokenizer`` (pure: no I/O)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    normalize = _normalizer(tokenizer)
    tokens = unknown = empty = kept = characters = words = 0
    for answer in answers:
        ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
        tokens += len(ids)
        words += len(answer.split())
        if unk is not None:
            unknown += sum(1 for token in ids if token == unk)
        if not ids:
            empty += 1
        wanted = Counter(_SPACE.sub("", normalize(answer)))
        given = Counter(_SPACE.sub("", tokenizer.decode(ids, skip_special_tokens=True)))
        kept += sum((wanted & given).values())
        characters += sum(wanted.values())
    count = max(len(answers), 1)
    return AnswerCheck(
        answers=len(answers),
        answer_tokens=tokens,
        mean_answer_tokens=tokens / count,
        mean_answer_words=words / count,
        answer_unk_share=(unknown / tokens if tokens else 0.0) if unk is not None else None,
        empty_answer_share=empty / count,
        answer_chars_recovered=kept / characters if characters else None,
    )


def _normalizer(tokenizer):
    """The tokenizer's own text normalizer (NFC, lower-casing, ...), or identity."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None) if backend is not None else None
    if normalizer is None:
        return lambda text: text
    return normalizer.normalize_str


def selected_answers(
    rows: LocationRows,
    selection: location_data.SelectedSamples,
    fields: location_data.Fields,
) -> List[str]:
    """The answer text of every sample the run scores."""
    return [
        location_data.conversation(
            rows.rows[sample.index], selection.data_format, fields, sample.index, rows.name
        )[1]
        for sample in selection.samples
    ]


def check_answers(
    tokenizer,
    rows: LocationRows,
    selection: location_data.SelectedSamples,
    fields: location_data.Fields,
    *,
    model: str,
    declared_class: Optional[str],
    allow: bool,
) -> AnswerCheck:
    """Measure the selected answers; warn, or refuse (unless ``allow``) when most are lost."""
    check = answer_check(tokenizer, selected_answers(rows, selection, fields))
    problems = check.warnings()
    if not problems:
        return check
    loaded = type(tokenizer).__name__
    where = f"location data {rows.name} tokenized for {model} by {loaded}" + (
        f" (tokenizer_config.json declares {declared_class})" if declared_class else ""
    )
    numbers = "; ".join(problems)
    if check.refused() and not allow:
        hint = (
            " transformers replaced the declared tokenizer class for this model type; pass "
            "--tokenizer with a folder holding only the tokenizer files (no config.json), "
            "which loads the declared class."
            if declared_class and not _same_class(declared_class, tokenizer)
            else " Check the tokenizer (--tokenizer) and the data's answer field."
        )
        raise LocateError(
            f"The answers of {where} are mostly lost: {numbers} "
            f"({check.answers} answers).{hint} Pass --allow-bad-tokenization to write the "
            "store anyway."
        )
    LOG.warning("Answers of %s: %s (%d answers).", where, numbers, check.answers)
    return check


def declared_tokenizer_class(source: str) -> Optional[str]:
    """The ``tokenizer_class`` that ``tokenizer_config.json`` of a folder or cached hub
    repository declares (None when there is none to read)."""
    path = os.path.join(source, "tokenizer_config.json")
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "tokenizer_config.json")
        except Exception:  # not a hub id
            return None
        if not isinstance(cached, str):
            return None
        path = cached
    try:
        with open(path, encoding="utf-8") as f:
            declared = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    return declared if isinstance(declared, str) else None


def _same_class(declared: str, tokenizer) -> bool:
    if declared.removesuffix("Fast") == type(tokenizer).__name__.removesuffix("Fast"):
        return True
    try:
        from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

        cls = tokenizer_class_from_name(declared)
    except Exception:  # an unknown or remote-code class name
        return False
    # The exact class: every specialised tokenizer subclasses the generic backend.
    return cls is not None and type(tokenizer) is cls


def check_tokenizer_class(tokenizer, source: str) -> Optional[str]:
    """Warn when the loaded tokenizer is not the class the checkpoint declares;
    return the declared class (None when none is declared)."""
    declared = declared_tokenizer_class(source)
    if declared is not None and not _same_class(declared, tokenizer):
        LOG.warning(
            "The tokenizer of %s declares class %s in tokenizer_config.json, but "
            "transformers loaded %s; answers may tokenize differently than intended.",
            source,
            declared,
            type(tokenizer).__name__,
        )
    return declared
