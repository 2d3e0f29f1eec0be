"""``locate``: importance scores of one model on one task's data, written as a store.

The Location step of LED-Merging (``LED_SPEC.md`` section 1). For SNIP, every
sample gets exactly one forward and one backward pass, whose per-weight
gradients are folded into float32 accumulators as they are produced (see
``mergekit_led.location.scores``). The result is keyed by the names mergekit asks
the merge method for (``mergekit_led.location.weight_names``), so the merge finds every weight.

Long runs checkpoint their accumulators (``--checkpoint-every``) and resume
to the same scores; under ``torchrun``/``accelerate launch`` every process
scores a strided shard of the samples and the sums are all-reduced once
(``mergekit_led.location.data_scoring``).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from mergekit_led.atomic import clean_stale_staging
from mergekit_led.core.locate_options import (
    LocateOptions,
    options_from,
    with_option_keywords,
)
from mergekit_led.errors import (
    LocateError,
    MemoryPlanError,
    is_safetensors_error,
)
from mergekit_led.location import data as location_data
from mergekit_led.location import memory
from mergekit_led.location.checkpoint import RunCheckpoint
from mergekit_led.location.data_loading import load_rows
from mergekit_led.location.data_scoring import score_data
from mergekit_led.location.distributed import Distributed
from mergekit_led.location.memory_budget import device_budget, parse_memory, planned_device_type
from mergekit_led.location.memory_shape import ModelShape
from mergekit_led.location.model import load_tokenizer
from mergekit_led.location.provenance import dataset_info, save_importance_for_run
from mergekit_led.location.run_checks import check_options
from mergekit_led.location.score_kinds import score_kind
from mergekit_led.location.steps import RunHooks
from mergekit_led.location.tokenizer_check import check_answers, check_tokenizer_class
from mergekit_led.location.weight_names import (
    ScoredParameters,
    check_mergeable,
    local_checkpoint,
    model_weights,
    scored_parameters,
)
from mergekit_led.store import mergekit_weights

LOG = logging.getLogger(__name__)


@with_option_keywords
def locate(
    model: str,
    data: Any = None,
    out: Optional[str] = None,
    *,
    options: Optional[LocateOptions] = None,
    hooks: Optional[RunHooks] = None,
    **keywords: Any,
) -> str:
    """Score ``model`` on ``data`` and write an importance store to ``out``.

    Args:
        model: a local checkpoint folder or a hub id.
        data: a JSONL/JSON/CSV/Parquet file, a ``save_to_disk`` folder, a hub
            dataset name (``split=``), a ``datasets.Dataset`` or a list of dicts
            with ``prompt``/``response`` or chat ``messages``. Not used by the
            ``magnitude`` and ``random`` scores.
        out: the store folder to write.
        options: every option at once, a ``LocateOptions`` (typed, documented).
        hooks: replaces how the model is loaded or a sample scored (``RunHooks``).
        **keywords: any field of ``LocateOptions`` (the CLI's options), replacing
            that field of ``options``: ``locate(model, data, out, score="wanda")``.

    Returns the store path (on every process of a distributed run).
    """
    opts = options_from(options, keywords, caller="locate")
    if out is None:
        raise LocateError("locate needs an output folder for the importance store (--out).")
    out = os.path.abspath(os.fspath(out))
    check_options(opts, data, out, model=os.fspath(model))
    with Distributed.from_environment(opts) as dist:
        if dist.is_main:
            clean_stale_staging(out)  # staging folders of killed runs to this store
        return _run(os.fspath(model), data, out, opts, dist, hooks or RunHooks())


@with_option_keywords
def plan_locate(
    model: str,
    data: Any = None,
    *,
    options: Optional[LocateOptions] = None,
    **keywords: Any,
) -> memory.Verdict:
    """The memory plan of ``locate(model, data, ...)`` with the same options, reading the model's
    config (and, when ``data`` is given, the tokenizer and data) but no weights.

    With data, the plan is for the longest selected sample and longest answer;
    without, for samples of ``max_length`` tokens that are all answer (an
    upper bound). ``device="cuda"`` plans for a GPU on a machine without one
    when ``memory`` gives the budget.
    """
    opts = options_from(options, keywords, caller="plan_locate")
    kind = score_kind(opts.score)
    if opts.memory is not None:
        parse_memory(opts.memory)
    model = os.fspath(model)
    device_type = planned_device_type(opts.device, opts.memory)
    shape = memory.model_shape(model, trust_remote_code=opts.trust_remote_code)
    tokens = answer = None
    if data is not None and kind.needs_data:
        tokenizer = load_tokenizer(model, opts)
        rows = load_rows(data, split=opts.split)
        fields = location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        location_data.data_format(rows.columns, fields, rows.name)
        _, selection = _select(
            rows, tokenizer, fields, opts, opts.max_length or shape.max_positions
        )
        tokens = max(len(sample.input_ids) for sample in selection.samples)
        answer = max(sample.answer_length for sample in selection.samples)
    setup = memory.setup_for(shape, opts, device_type, tokens=tokens, answer_tokens=answer)
    budget = device_budget(device_type, opts.memory, opts.device_map)
    return memory.judge(shape, setup, budget)


def _run(
    model: str, data: Any, out: str, opts: LocateOptions, dist: Distributed, hooks: RunHooks
) -> str:
    started = time.time()
    selection = rows = tokenizer = tokenization = None
    weights = model_weights(model, trust_remote_code=opts.trust_remote_code)
    check_mergeable(weights, model)  # before loading anything
    kind = score_kind(opts.score)
    if kind.needs_data:
        tokenizer = load_tokenizer(model, opts)
        declared_class = check_tokenizer_class(tokenizer, opts.tokenizer or model)
        rows = load_rows(data, split=opts.split)
        fields = location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        location_data.data_format(
            rows.columns, fields, rows.name
        )  # refuse bad fields before loading the model
    elif data is not None:
        LOG.warning("The %s score uses no data; --data %s is ignored.", opts.score, data)

    planned_length = None
    if kind.uses_gradients:
        # The memory check needs the samples' lengths: select them from the
        # config's max length before loading, so a run that cannot fit stops here.
        shape = _shape_for_check(model, opts)
        if shape is not None:
            planned_length = opts.max_length or shape.max_positions
            tokenization, selection = _select(rows, tokenizer, fields, opts, planned_length)
            _check_memory(shape, opts, dist, selection)

    loaded = _load_model(hooks, model, opts, dist)
    if kind.needs_data:
        max_length = opts.max_length or _model_max_length(loaded)
        if selection is None or max_length != planned_length:
            tokenization, selection = _select(rows, tokenizer, fields, opts, max_length)
        answers = check_answers(
            tokenizer,
            rows,
            selection,
            fields,
            model=model,
            declared_class=declared_class,
            allow=opts.allow_bad_tokenization,
        )
    if weights is None:  # a hub model is in the local cache once loaded
        weights = model_weights(model, trust_remote_code=opts.trust_remote_code)
    scored = scored_parameters(loaded, model, weights)
    if scored.not_scored:
        LOG.warning(
            "%d checkpoint tensors of %s are read by no weight mergekit merges and get "
            "no scores: %s",
            len(scored.not_scored),
            model,
            ", ".join(scored.not_scored[:10]),
        )
    if scored.unasked:
        LOG.warning(
            "%d parameters of %s are not weights mergekit merges and get no scores: %s",
            len(scored.unasked),
            model,
            ", ".join(scored.unasked[:10]),
        )
    details: Dict[str, Any] = {}

    if kind.needs_data:
        step = hooks.steps.get(kind.name, kind.step)
        scores, counts, details = score_data(
            loaded, model, scored, selection, opts, dist, out, kind, step
        )
    else:
        base_weights = _base_weights(opts, scored) if opts.base else None
        scores, counts = kind.scores(loaded, scored, opts, base_weights), None
    # keyed by mergekit's names
    scores = scored.store_scores(scores, loaded, gradients=kind.uses_gradients)
    # The model is not needed to write the store: free it first, so writing
    # (sorted copies, serialisation) reuses its memory instead of adding to it.
    del loaded
    scored.params.clear()
    gc.collect()

    if dist.is_main:
        dataset = None
        if selection is not None:
            dataset = dataset_info(rows, selection, counts, data, opts)
            dataset.update(answers.manifest_fields())
            details["tokenization"] = tokenization.describe(tokenizer)
        save_importance_for_run(
            scores,
            out,
            model=model,
            opts=opts,
            scored=scored,
            dataset=dataset,
            details=details,
            dist=dist,
            seconds=time.time() - started,
        )
        RunCheckpoint(out, 0, dist.world_size).remove()
    dist.barrier()
    return out


def _select(rows, tokenizer, fields, opts: LocateOptions, max_length: Optional[int]):
    tokenization = location_data.make_tokenization(tokenizer, opts.chat_template, max_length)
    selection = location_data.select_samples(
        rows,
        tokenizer,
        tokenization,
        fields,
        max_samples=opts.max_samples,
        seed=opts.seed,
    )
    return tokenization, selection


def _shape_for_check(model: str, opts: LocateOptions) -> Optional[ModelShape]:
    """The model's shape for the memory check, or None (with a note) when its
    config cannot be planned: loading it then reports what is wrong."""
    try:
        return memory.model_shape(model, trust_remote_code=opts.trust_remote_code)
    except MemoryPlanError as error:
        LOG.info("No memory check before loading: %s", error)
        return None


def _check_memory(
    shape: ModelShape,
    opts: LocateOptions,
    dist: Distributed,
    selection: location_data.SelectedSamples,
) -> None:
    """Stop before loading when the run's memory plan exceeds the budget."""
    samples = selection.samples
    setup = memory.setup_for(
        shape,
        opts,
        dist.device.type,
        tokens=max(len(s.input_ids) for s in samples),
        answer_tokens=max(s.answer_length for s in samples),
    )
    budget = device_budget(dist.device.type, opts.memory, opts.device_map)
    verdict = memory.judge(shape, setup, budget)
    for line in memory.render(verdict):
        LOG.info(line)
    if not verdict.fits:
        raise MemoryPlanError(memory.refusal(verdict))


def _load_model(hooks: RunHooks, model: str, opts: LocateOptions, dist: Distributed) -> nn.Module:
    try:
        return hooks.load_model(model, opts, dist.device)
    except Exception as error:
        if not is_safetensors_error(error):
            raise
        raise LocateError(
            f"Cannot load model {model}: one of its weights files is damaged ({error})."
        ) from error


def _model_max_length(model: nn.Module) -> Optional[int]:
    value = getattr(model.config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else None


def _base_weights(opts: LocateOptions, scored: ScoredParameters) -> Callable[[str], torch.Tensor]:
    """``name -> θ_base[name]``: the tensor mergekit hands over for that weight of the base
    model (built from its checkpoint when mergekit converts it, e.g. fused experts)."""
    from mergekit.common import ModelReference

    base = opts.base
    folder = local_checkpoint(base)
    if folder is None:
        try:
            folder = ModelReference.model_validate(base).local_path()
        except Exception as error:  # a hub download failure has many types
            raise LocateError(f"Cannot read the base model {base}: {error}") from error
    base_weights = mergekit_weights.mergekit_weights(
        folder, trust_remote_code=opts.trust_remote_code
    )
    storable = base_weights.storable()
    expected = scored.shapes()
    loader = ModelReference.model_validate(folder).lazy_loader(lazy_unpickle=True)

    def base_weight(name: str) -> torch.Tensor:
        weight = storable.get(name)
        if weight is None:
            raise LocateError(f"The base model {base} has no weight {name!r} to subtract.")
        if weight.shape != tuple(expected[name]):
            raise LocateError(
                f"Weight {name!r} has shape {weight.shape} in the base model {base} "
                f"but {tuple(expected[name])} in the scored model."
            )
        return mergekit_weights.read_weight(base_weights, weight, loader)

    return base_weight
