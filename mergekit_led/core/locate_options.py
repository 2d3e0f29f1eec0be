"""Every option of a locate run, in one place, and what derives from it.

``LocateOptions`` is the one typed list of locate's options. From its fields
and their metadata derive: the keyword arguments of ``mergekit_led.locate``
(``with_option_keywords`` writes them into its signature, so ``help()`` and
``inspect.signature`` show each one), the options of ``mergekit-led locate``
and ``mergekit-led prepare`` (``cli/locate.py``), the ``locate_<option>`` keys
a config may set (``LOCATE_CONFIG_OPTIONS``), the options a resumed run must
share with its checkpoint (``resume_key_options``), the share of the store
cache key (``SCORE_OPTIONS``), and locate.md's table (docs/gen_locate_options.py).

It lives in ``core`` because the merge method, below the location package,
declares the ``locate_*`` config keys as its own parameters. No I/O.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

import torch

from mergekit_led.environment import DEVICE_CHOICES

CHECKPOINT_SUFFIX = ".locate-checkpoint"
MODEL_DTYPES = {
    "auto": "auto",
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def _option(
    default: Any,
    help: str,
    *,
    resume_key: bool = True,
    cache_key: Optional[bool] = None,
    config: Optional[bool] = None,
    prepare: bool = False,
    **cli: Any,
) -> Any:
    """A ``LocateOptions`` field with its command-line help (and click settings).

    ``resume_key``: whether the option can change the scores, so that a
    checkpoint written under another value must not be resumed. True unless
    an option says otherwise, so a new option is part of the key by default.
    ``cache_key``: whether the store cache keys a store by it (``SCORE_OPTIONS``);
    by default, as ``resume_key``. ``config``: whether a config may set it as
    ``locate_<option>``; by default, as ``cache_key``. ``prepare``: whether
    ``mergekit-led prepare`` takes it from its command line (``RUN_OPTIONS``).
    ``cli=False``: not an option of ``mergekit-led locate``. ``choices_of``: the
    table above this layer that lists the values (``cli.locate.option_choices``).
    """
    cache_key = resume_key if cache_key is None else cache_key
    config = cache_key if config is None else config
    metadata = {
        "help": help,
        "resume_key": resume_key,
        "cache_key": cache_key,
        "config": config,
        "prepare": prepare,
        **cli,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class LocateOptions:
    """Every option of a locate run: the keyword arguments of ``locate()``, the
    options of ``mergekit-led locate`` and ``prepare`` (generated from these
    fields by ``cli.locate.locate_click_options``), the ``locate_*`` config keys,
    and what the manifest records."""

    # Its choices are the table of score kinds, ``location.score_kinds`` (a layer above).
    score: str = _option("snip", "Score kind.", choices_of="score kinds")
    # Not a config key: importance_data computes data scores only, which use no base.
    base: Optional[str] = _option(
        None, "Base model for --score magnitude: scores |θ − θ_base|.", config=False
    )
    tokenizer: Optional[str] = _option(None, "Tokenizer to use instead of the model's.")
    split: Optional[str] = _option(None, "Split of a hub dataset or DatasetDict folder [train].")
    prompt_field: str = _option("prompt", "Column holding the prompt.")
    response_field: str = _option("response", "Column holding the answer.")
    messages_field: str = _option(
        "messages",
        "Column holding chat turns [{role, content}]; used when the prompt field is absent.",
    )
    chat_template: str = _option(
        "auto",
        "auto: use the tokenizer's chat template when it has one.",
        choices=("auto", "none"),
    )
    max_samples: Optional[int] = _option(
        None, "Score at most this many samples (seeded choice).", type=int
    )
    max_length: Optional[int] = _option(
        None,
        "Token limit per sample (default: the model's max positions); prompts are cut "
        "from the left.",
        type=int,
    )
    seed: int = _option(0, "Seed of the sample choice and of --score random.", type=int)
    dtype: str = _option(
        "auto", "Model dtype (accumulators are float32).", choices=tuple(MODEL_DTYPES)
    )
    # Rounded once when the store is written: the float32 sums, and so a resumed
    # run, do not depend on it. It changes what is stored, so the cache keys by it:
    # a bfloat16 store must never be served for a float32 request, or the reverse.
    score_dtype: str = _option(
        "float32",
        "dtype of the stored scores: float32 (4 bytes per weight) or bfloat16 (2; "
        "accumulation stays float32, each score is rounded once when written).",
        choices=("float32", "bfloat16"),
        resume_key=False,
        cache_key=True,
    )
    # The key holds the device the run resolved to (auto may mean either).
    device: str = _option(
        "auto", "Device to score on.", choices=DEVICE_CHOICES, resume_key=False, prepare=True
    )
    # These three change how a run computes, not its result (tests/test_locate.py
    # checks it): a cached store computed with them serves a run without them.
    device_map: Optional[str] = _option(
        None,
        "transformers device_map (e.g. auto) for a model larger than one GPU.",
        cache_key=False,
        prepare=True,
    )
    offload_accumulators: bool = _option(
        False,
        "Keep the float32 accumulators in CPU memory.",
        flag=True,
        cache_key=False,
        prepare=True,
    )
    gradient_checkpointing: bool = _option(
        False,
        "Recompute activations in backward (less memory).",
        flag=True,
        cache_key=False,
        prepare=True,
    )
    # Only decides whether the run starts: never part of a key.
    memory: Optional[str] = _option(
        None,
        "Memory budget for the pre-run memory check (e.g. 24GB, 80GiB) [default: the "
        "GPU's free memory, or the CPU's available memory].",
        resume_key=False,
        prepare=True,
    )
    checkpoint_every: Optional[int] = _option(
        None,
        f"Save progress every N samples (OUT{CHECKPOINT_SUFFIX}/).",
        type=int,
        resume_key=False,
        prepare=True,
    )
    resume: bool = _option(
        False,
        f"Continue from OUT{CHECKPOINT_SUFFIX}/ when it exists.",
        flag=True,
        resume_key=False,
    )
    overwrite: bool = _option(
        False, "Replace an existing store at OUT.", flag=True, resume_key=False
    )
    skip_nonfinite: bool = _option(
        False, "Skip (and count) samples with a non-finite loss or gradient.", flag=True
    )
    allow_bad_tokenization: bool = _option(
        False,
        "Write the store even when most answers tokenize to unknown tokens or to nothing, "
        "or do not decode back.",
        flag=True,
        resume_key=False,  # a permission: the scores are the same either way
        prepare=True,
    )
    # A permission: a model that loads at all runs the same code either way.
    trust_remote_code: bool = _option(
        False,
        "Allow the model's own code (passed to from_pretrained).",
        flag=True,
        resume_key=False,
        prepare=True,
    )
    progress: bool = _option(True, "Show a progress bar.", cli=False, resume_key=False)


def option_fields() -> Tuple[Field, ...]:
    """The fields of ``LocateOptions`` that are command-line options."""
    return tuple(f for f in fields(LocateOptions) if f.metadata.get("cli", True))


def resume_key_options(opts: LocateOptions) -> Dict[str, Any]:
    """The options a resumed run must share with its checkpoint: every field not
    marked ``resume_key=False`` (what can change the sums)."""
    return {
        f.name: getattr(opts, f.name) for f in fields(LocateOptions) if f.metadata["resume_key"]
    }


def _names(role: str) -> Tuple[str, ...]:
    return tuple(f.name for f in fields(LocateOptions) if f.metadata[role])


# The options the store cache keys a store by (what changes the stored scores), in
# field order; the others are execution options, chosen per machine.
SCORE_OPTIONS: Tuple[str, ...] = _names("cache_key")
EXECUTION_OPTIONS = frozenset(f.name for f in fields(LocateOptions)) - set(SCORE_OPTIONS)
# Execution options a prepare run takes from its command line (the rest are
# managed by the cache itself: where stores go, resuming, replacing).
RUN_OPTIONS: Tuple[str, ...] = _names("prepare")


def _value_type(annotation: Any) -> type:
    """``str`` of ``Optional[str]``; the annotation itself otherwise."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    )


_HINTS = typing.get_type_hints(LocateOptions)
# locate's options a config may set, as ``locate_<option>`` parameters (per model,
# or for every model under the config's ``parameters:``), with their value types:
# the merge method declares them as its own parameters.
LOCATE_CONFIG_OPTIONS: Dict[str, type] = {
    name: _value_type(_HINTS[name]) for name in _names("config")
}


def options_from(
    options: Optional[LocateOptions], keywords: Mapping[str, Any], *, caller: str
) -> LocateOptions:
    """``options`` (default: every default) with ``keywords`` replacing fields; an
    unknown keyword is a ``TypeError``, as for any function."""
    unknown = sorted(set(keywords) - {f.name for f in fields(LocateOptions)})
    if unknown:
        raise TypeError(f"{caller}() got unknown options: {', '.join(unknown)}")
    return dataclasses.replace(options or LocateOptions(), **keywords)


F = TypeVar("F", bound=Callable[..., Any])


def with_option_keywords(function: F) -> F:
    """Write ``LocateOptions``'s fields into the signature of ``function``, in
    place of its ``**options``: ``help()``, ``inspect.signature`` and IDEs that
    read signatures at run time list each option with its type and default."""
    signature = inspect.signature(function)
    keywords = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=_HINTS[f.name]
        )
        for f in fields(LocateOptions)
    ]
    parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    function.__signature__ = signature.replace(parameters=parameters + keywords)
    return function
