"""Every option of a locate run, in one place: the Python API, the CLI and the manifest."""

from __future__ import annotations

import os
from dataclasses import Field, dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

import torch

from mergekit_led.environment import DEVICE_CHOICES
from mergekit_led.errors import LocateError
from mergekit_led.location.scores import DATA_SCORES, SCORE_KINDS

CHECKPOINT_SUFFIX = ".locate-checkpoint"
DTYPES = {
    "auto": "auto",
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def _option(default: Any, help: str, *, resume_key: bool = True, **cli: Any) -> Any:
    """A ``LocateOptions`` field with its command-line help (and click settings).

    ``resume_key``: whether the option can change the scores, so that a
    checkpoint written under another value must not be resumed. True unless
    an option says otherwise, so a new option is part of the key by default.
    """
    return field(default=default, metadata={"help": help, "resume_key": resume_key, **cli})


@dataclass(frozen=True)
class LocateOptions:
    """Every option of a locate run: the keyword arguments of ``locate()``, the
    options of ``mergekit-led locate`` (generated from these fields by
    ``click_options``), and what the manifest records."""

    score: str = _option("snip", "Score kind.", choices=SCORE_KINDS)
    base: Optional[str] = _option(None, "Base model for --score magnitude: scores |θ − θ_base|.")
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
    dtype: str = _option("auto", "Model dtype (accumulators are float32).", choices=tuple(DTYPES))
    # Rounded once when the store is written: the float32 sums, and so a resumed
    # run, do not depend on it.
    score_dtype: str = _option(
        "float32",
        "dtype of the stored scores: float32 (4 bytes per weight) or bfloat16 (2; "
        "accumulation stays float32, each score is rounded once when written).",
        choices=("float32", "bfloat16"),
        resume_key=False,
    )
    # The key holds the device the run resolved to (auto may mean either).
    device: str = _option("auto", "Device to score on.", choices=DEVICE_CHOICES, resume_key=False)
    device_map: Optional[str] = _option(
        None, "transformers device_map (e.g. auto) for a model larger than one GPU."
    )
    offload_accumulators: bool = _option(
        False, "Keep the float32 accumulators in CPU memory.", flag=True
    )
    gradient_checkpointing: bool = _option(
        False, "Recompute activations in backward (less memory).", flag=True
    )
    # Only decides whether the run starts: never part of a key.
    memory: Optional[str] = _option(
        None,
        "Memory budget for the pre-run memory check (e.g. 24GB, 80GiB) [default: the "
        "GPU's free memory, or the CPU's available memory].",
        resume_key=False,
    )
    checkpoint_every: Optional[int] = _option(
        None,
        f"Save progress every N samples (OUT{CHECKPOINT_SUFFIX}/).",
        type=int,
        resume_key=False,
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
    )
    # A permission: a model that loads at all runs the same code either way.
    trust_remote_code: bool = _option(
        False,
        "Allow the model's own code (passed to from_pretrained).",
        flag=True,
        resume_key=False,
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


def check_options(opts: LocateOptions, data: Any, out: str, model: Optional[str] = None) -> None:
    if opts.score not in SCORE_KINDS:
        raise LocateError(
            f"Unknown score kind {opts.score!r}; choose one of {', '.join(SCORE_KINDS)}."
        )
    if opts.score in DATA_SCORES and data is None:
        raise LocateError(f"The {opts.score} score needs location data (--data).")
    if opts.base is not None and opts.score != "magnitude":
        raise LocateError("--base is only used by --score magnitude (|θ − θ_base|).")
    if opts.dtype not in DTYPES:
        raise LocateError(f"Unknown --dtype {opts.dtype!r}; choose one of {', '.join(DTYPES)}.")
    if opts.score_dtype not in ("float32", "bfloat16"):
        raise LocateError(f"Unknown --score-dtype {opts.score_dtype!r}; use float32 or bfloat16.")
    if opts.device not in DEVICE_CHOICES:
        raise LocateError(
            f"Unknown --device {opts.device!r}; choose one of {', '.join(DEVICE_CHOICES)}."
        )
    if opts.memory is not None:
        from mergekit_led.location.memory import parse_memory

        parse_memory(opts.memory)  # a bad size is refused before anything runs
    if opts.checkpoint_every is not None and opts.checkpoint_every < 1:
        raise LocateError(f"--checkpoint-every must be at least 1, not {opts.checkpoint_every}.")
    _check_out_is_not_an_input(model, opts, data, out)
    if os.path.exists(out) and not opts.overwrite:
        raise LocateError(f"Importance store {out} already exists; pass --overwrite to replace it.")
    from mergekit_led.errors import StoreError
    from mergekit_led.store.writer import check_replaceable

    try:
        check_replaceable(out)  # before the scoring, not when the store is written
    except StoreError as error:
        raise LocateError(str(error)) from None  # cause: the same message, as a LocateError
    checkpoint = out + CHECKPOINT_SUFFIX
    if os.path.exists(checkpoint) and not opts.resume:
        raise LocateError(
            f"A locate checkpoint exists at {checkpoint}; pass --resume to continue "
            "from it, or delete it to start over."
        )


def _check_out_is_not_an_input(
    model: Optional[str], opts: LocateOptions, data: Any, out: str
) -> None:
    """The store (replaced whole by --overwrite) must not be, hold or sit inside
    the model, its base, the tokenizer or the data."""
    real_out = os.path.realpath(out)
    inputs = (
        ("model", model),
        ("data", data),
        ("base model", opts.base),
        ("tokenizer", opts.tokenizer),
    )
    for role, path in inputs:
        if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
            continue
        real_input = os.path.realpath(path)
        for folder, inner in ((real_out, real_input), (real_input, real_out)):
            if os.path.commonpath([folder, inner]) == folder:
                raise LocateError(
                    f"Importance store path {out} overlaps the {role} {real_input}: a store "
                    "is written (and replaced with --overwrite) as a whole folder. Choose "
                    "an --out outside it."
                )
