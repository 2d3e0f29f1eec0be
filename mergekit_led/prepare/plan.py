"""Planning one store: which samples a locate run would score, and the store's cache key.

The key is a hash of what determines the scores: the model's identity (and,
for a local checkpoint, the hash of its config.json and remote code), the
samples used (the text fingerprint ``locate`` records, and the token ids the
model sees, which also capture the tokenizer, its chat template and the length
limit) and every locate option that changes scores (``prepare.config_options``).
Planning runs the same loading and selection functions as ``locate`` itself
(tokenizer, rows, tokenisation, seeded choice), but no model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from mergekit_led.core.locate_options import LocateOptions
from mergekit_led.errors import LEDError, LocateError
from mergekit_led.location import data as location_data
from mergekit_led.location.data_loading import load_rows
from mergekit_led.location.model import load_tokenizer
from mergekit_led.prepare.config_options import score_options
from mergekit_led.prepare.models import ResolvedModel
from mergekit_led.store.hub import one_line

# Raised when what a store holds for the same key changes (scoring itself, the
# key's contents): old cache entries then stop matching instead of being reused.
CACHE_FORMAT = 2  # 2: the key covers a local model's config.json and remote code
KEY_LENGTH = 32  # hex digits of sha256 kept in the key (128 bits)


@dataclass(frozen=True)
class StoreRequest:
    """One store to have: ``model`` scored on ``data`` with ``options``."""

    model: ResolvedModel
    data: str  # as the config gives it: a path (relative to the working folder) or Hub name
    options: LocateOptions

    @property
    def identity(self):
        return (self.model.identity, self.data, tuple(sorted(score_options(self.options).items())))


@dataclass(frozen=True)
class PlannedStore:
    request: StoreRequest
    key: str
    data_fingerprint: str
    samples: int
    answer_tokens: int
    max_length: Optional[int]
    material: Dict[str, Any]  # what the key hashes
    # The longest sample and answer (tokens): what the memory plan needs (not in the key).
    longest_sample: int = 0
    longest_answer: int = 0

    def describe(self) -> str:
        return (
            f"{self.request.options.score} scores of {self.request.model.label} on "
            f"{self.request.data} ({self.samples} samples)"
        )


def plan_store(request: StoreRequest) -> PlannedStore:
    """Select the samples ``locate`` would score and derive the store's key."""
    model, opts = request.model, request.options
    where = f"Model {model.label}, importance_data {request.data}"
    try:
        rows = load_rows(request.data, split=opts.split)
        fields = location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        location_data.data_format(rows.columns, fields, rows.name)
        tokenizer = load_tokenizer(model.path, opts)
        max_length = opts.max_length or model_max_length(model, opts)
        tokenization = location_data.make_tokenization(tokenizer, opts.chat_template, max_length)
        selection = location_data.select_samples(
            rows, tokenizer, tokenization, fields, max_samples=opts.max_samples, seed=opts.seed
        )
    except LEDError as error:
        raise type(error)(f"{where}: {error}") from None  # cause: the same error, prefixed
    tokens = hashlib.sha256()
    for sample in selection.samples:
        tokens.update(json.dumps([sample.answer_length, list(sample.input_ids)]).encode())
        tokens.update(b"\n")
    material = {
        "cache_format": CACHE_FORMAT,
        "model": model.identity,
        "model_files": model.files_digest,
        "data": selection.fingerprint,
        "tokens": "sha256:" + tokens.hexdigest(),
        "options": score_options(opts),
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]
    return PlannedStore(
        request,
        key,
        selection.fingerprint,
        len(selection.samples),
        selection.answer_tokens,
        max_length,
        material,
        longest_sample=max(len(sample.input_ids) for sample in selection.samples),
        longest_answer=max(sample.answer_length for sample in selection.samples),
    )


def model_max_length(model: ResolvedModel, opts: LocateOptions) -> Optional[int]:
    """The default ``--max-length``: what ``locate`` reads from the loaded model's config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model.path, trust_remote_code=opts.trust_remote_code)
    except Exception as error:  # transformers raises many types for a bad config
        raise LocateError(
            f"Model {model.label} cannot be loaded: its config.json is unreadable: "
            f"{one_line(error)}"
        ) from error
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else None
