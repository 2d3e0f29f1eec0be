"""``locate``: importance scores of one model on one task's data, written as a store.

The Location step of LED-Merging (``LED_SPEC.md`` section 1). For SNIP, every
sample gets exactly one forward and one backward pass, whose per-weight
gradients are folded into float32 accumulators as they are produced (see
``mergekit_led.location.scores``). The result is keyed by the names mergekit asks
the merge method for (``mergekit_led.location.weight_names``), so the merge finds every weight.

Long runs checkpoint their accumulators (``--checkpoint-every``) and resume
to the same scores; under ``torchrun``/``accelerate launch`` every process
scores a strided shard of the samples and the sums are all-reduced once.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from mergekit_led.atomic import clean_stale_staging
from mergekit_led.core.locate_options import (
    DATA_SCORES,
    LocateOptions,
    options_from,
    resume_key_options,
    with_option_keywords,
)
from mergekit_led.errors import (
    LocateError,
    MemoryPlanError,
    NonFiniteSample,
    is_safetensors_error,
)
from mergekit_led.location import data as location_data
from mergekit_led.location import memory
from mergekit_led.location.checkpoint import Progress, RunCheckpoint
from mergekit_led.location.distributed import Distributed
from mergekit_led.location.model import enable_gradient_checkpointing, load_tokenizer
from mergekit_led.location.provenance import dataset_info, save_importance_for_run
from mergekit_led.location.run_checks import check_options
from mergekit_led.location.scores import (
    SnipAccumulator,
    WandaAccumulator,
    magnitude_scores,
    random_scores,
)
from mergekit_led.location.steps import RunHooks, input_device
from mergekit_led.location.tokenization import check_answers, check_tokenizer_class
from mergekit_led.location.weight_names import (
    ScoredParameters,
    check_mergeable,
    check_wanda_applies,
    linear_modules,
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
    if opts.memory is not None:
        memory.parse_memory(opts.memory)
    model = os.fspath(model)
    device_type = memory.planned_device_type(opts.device, opts.memory)
    shape = memory.model_shape(model, trust_remote_code=opts.trust_remote_code)
    tokens = answer = None
    if data is not None and opts.score in DATA_SCORES:
        tokenizer = load_tokenizer(model, opts)
        rows = location_data.load_rows(data, split=opts.split)
        fields = location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        location_data.data_format(rows.columns, fields, rows.name)
        _, selection = _select(
            rows, tokenizer, fields, opts, opts.max_length or shape.max_positions
        )
        tokens = max(len(sample.input_ids) for sample in selection.samples)
        answer = max(sample.answer_length for sample in selection.samples)
    setup = memory.setup_for(shape, opts, device_type, tokens=tokens, answer_tokens=answer)
    budget = memory.device_budget(device_type, opts.memory, opts.device_map)
    return memory.judge(shape, setup, budget)


def _progress_bar(total: int, initial: int, opts: LocateOptions, dist: Distributed):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"locate {opts.score}"
        + (f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""),
        unit="sample",
        disable=not (opts.progress and dist.is_main),
        dynamic_ncols=True,
    )


def _run(
    model: str, data: Any, out: str, opts: LocateOptions, dist: Distributed, hooks: RunHooks
) -> str:
    started = time.time()
    selection = rows = tokenizer = tokenization = None
    weights = model_weights(model, trust_remote_code=opts.trust_remote_code)
    check_mergeable(weights, model)  # before loading anything
    if opts.score in DATA_SCORES:
        tokenizer = load_tokenizer(model, opts)
        declared_class = check_tokenizer_class(tokenizer, opts.tokenizer or model)
        rows = location_data.load_rows(data, split=opts.split)
        fields = location_data.Fields(opts.prompt_field, opts.response_field, opts.messages_field)
        location_data.data_format(
            rows.columns, fields, rows.name
        )  # refuse bad fields before loading the model
    elif data is not None:
        LOG.warning("The %s score uses no data; --data %s is ignored.", opts.score, data)

    planned_length = None
    if opts.score == "snip":
        # The memory check needs the samples' lengths: select them from the
        # config's max length before loading, so a run that cannot fit stops here.
        shape = _shape_for_check(model, opts)
        if shape is not None:
            planned_length = opts.max_length or shape.max_positions
            tokenization, selection = _select(rows, tokenizer, fields, opts, planned_length)
            _check_memory(shape, opts, dist, selection)

    loaded = _load_model(hooks, model, opts, dist)
    if opts.score in DATA_SCORES:
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

    if opts.score == "magnitude":
        scores = magnitude_scores(
            scored.weight_tensors(loaded), _base_weights(opts, scored) if opts.base else None
        )
        counts = None
    elif opts.score == "random":
        scores = random_scores(scored.shapes(), opts.seed)
        counts = None
    else:
        scores, counts, details = _score_data(
            loaded, model, scored, selection, opts, dist, out, hooks.steps[opts.score]
        )
    scores = scored.store_scores(scores, loaded, opts.score)  # keyed by mergekit's names
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


def _shape_for_check(model: str, opts: LocateOptions) -> Optional[memory.ModelShape]:
    """The model's shape for the memory check, or None (with a note) when its
    config cannot be planned: loading it then reports what is wrong."""
    try:
        return memory.model_shape(model, trust_remote_code=opts.trust_remote_code)
    except MemoryPlanError as error:
        LOG.info("No memory check before loading: %s", error)
        return None


def _check_memory(
    shape: memory.ModelShape,
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
    budget = memory.device_budget(dist.device.type, opts.memory, opts.device_map)
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


def _run_key(
    model: str, selection: location_data.SelectedSamples, opts: LocateOptions, dist
) -> Dict[str, Any]:
    """What must match for a checkpoint to be resumed: the model, the data, the
    process layout and device, and every option that can change the sums
    (``resume_key_options``: all but those marked otherwise)."""
    return {
        "model": model,
        "data_fingerprint": selection.fingerprint,
        "samples": len(selection.samples),
        "device_type": dist.device.type,
        "world_size": dist.world_size,
        "rank": dist.rank,
        **resume_key_options(opts),
    }


def _score_data(
    loaded: nn.Module,
    model: str,
    scored: ScoredParameters,
    selection: location_data.SelectedSamples,
    opts: LocateOptions,
    dist: Distributed,
    out: str,
    step: Callable[..., None],
):
    """Score this process's shard with ``step`` per sample, all-reduce the sums,
    return the mean scores."""
    details: Dict[str, Any] = {}
    if opts.score == "snip":
        accumulator = SnipAccumulator(
            scored.params, offload=opts.offload_accumulators, skip_nonfinite=opts.skip_nonfinite
        )
    else:
        check_wanda_applies(loaded, model, scored)
        modules = linear_modules(loaded, scored)
        accumulator = WandaAccumulator(scored.params, modules, offload=opts.offload_accumulators)
        details["wanda_magnitude_fallback"] = accumulator.fallback
    if opts.gradient_checkpointing and opts.score == "snip":
        details["gradient_checkpointing_layers"] = enable_gradient_checkpointing(loaded)

    shard = selection.samples[dist.rank :: dist.world_size]
    checkpoint = RunCheckpoint(out, dist.rank, dist.world_size)
    run_key = _run_key(model, selection, opts, dist)
    progress = Progress()
    clean_stale_staging(checkpoint.path)  # half-written checkpoints of a killed run
    if opts.resume and checkpoint.exists():
        progress = checkpoint.load(accumulator, run_key)
        if not 0 <= progress.samples <= progress.position <= len(shard):
            raise LocateError(
                f"The locate checkpoint {checkpoint.path} is damaged (it records "
                f"{progress.samples} samples scored at position {progress.position} of "
                f"{len(shard)}). Delete {checkpoint.folder} to start over."
            )
        LOG.info(
            "Resuming from %s at sample %d of %d.", checkpoint.path, progress.position, len(shard)
        )
    elif opts.resume and checkpoint.others():
        raise LocateError(
            f"The locate checkpoint {checkpoint.folder} was written by a run with another "
            f"number of processes ({', '.join(checkpoint.others())}); resume with the same "
            f"number ({dist.world_size} now), or delete it."
        )
    elif opts.resume:
        LOG.info("No locate checkpoint at %s; starting from the beginning.", checkpoint.path)

    failure: Optional[BaseException] = None
    scoring_started, first_position = time.perf_counter(), progress.position
    accumulator.attach()
    try:
        _score_shard(loaded, accumulator, step, shard, progress, opts, dist, checkpoint, run_key)
    except Exception as error:  # other processes must learn of it before any collective
        failure = error
    finally:
        accumulator.detach()
    if dist.any_failed(failure is not None):
        if failure is not None:
            raise failure
        raise LocateError("Another process of this distributed locate run failed; see its error.")

    totals = torch.tensor(
        [progress.samples, progress.answer_tokens, progress.tokens], dtype=torch.float64
    )
    dist.all_reduce_sum(totals)
    for tensor in accumulator.state().values():
        dist.all_reduce_sum(tensor)
    nonfinite = sorted(i for part in dist.all_gather(progress.nonfinite) for i in part)
    samples, answer_tokens, tokens = (int(v) for v in totals.tolist())
    if samples == 0:
        raise LocateError(
            f"Every sample of the location data was skipped ({len(nonfinite)} had a non-finite "
            "loss or gradient); there is nothing to average."
        )
    details["scoring_seconds"] = round(time.perf_counter() - scoring_started, 3)
    details["samples_per_second"] = round(
        (progress.position - first_position) / max(details["scoring_seconds"], 1e-9), 3
    )
    counts = {
        "samples": samples,
        "answer_tokens": answer_tokens,
        "tokens": tokens,
        "nonfinite": nonfinite,
    }
    return accumulator.scores(samples), counts, details


def _release_freed_memory() -> None:
    """Give the heap memory freed by this sample's gradients back to the OS.

    Gradient buffers of many sizes are allocated and freed per sample; glibc
    keeps the freed chunks, and the fragmented heap grows over a run (about
    60 MB on a 29M-parameter model). ``malloc_trim`` returns it (no-op elsewhere).
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if not hasattr(libc, "malloc_trim"):  # glibc only
            return None
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def _score_shard(loaded, accumulator, step, shard, progress, opts, dist, checkpoint, run_key):
    device = input_device(loaded)
    bar = _progress_bar(len(shard), progress.position, opts, dist)
    started, tokens_at_start = time.perf_counter(), progress.tokens
    position_at_start = progress.position
    try:
        while progress.position < len(shard):
            sample = shard[progress.position]
            try:
                step(loaded, accumulator, sample, device)
            except NonFiniteSample as bad:
                if not opts.skip_nonfinite:
                    raise LocateError(
                        f"Sample {bad.sample.index} of the location data gives a non-finite "
                        f"result ({bad.what}); pass --skip-nonfinite to skip such samples, or "
                        "use --dtype fp32."
                    ) from None  # cause: its text is in the message
                progress.nonfinite.append(bad.sample.index)
                LOG.warning("Skipping sample %d: %s.", bad.sample.index, bad.what)
            else:
                progress.samples += 1
                progress.answer_tokens += sample.answer_length
                progress.tokens += len(sample.input_ids)
            progress.position += 1
            _release_freed_memory()
            bar.update(1)
            elapsed = time.perf_counter() - started
            if elapsed > 0:
                done = progress.position - position_at_start
                bar.set_postfix(
                    {
                        "samples/s": f"{done / elapsed:.2f}",
                        "tokens/s": f"{(progress.tokens - tokens_at_start) / elapsed:.0f}",
                    },
                    refresh=False,
                )
            if (
                opts.checkpoint_every
                and progress.position % opts.checkpoint_every == 0
                and progress.position < len(shard)
            ):
                checkpoint.save(accumulator, progress, run_key)
    finally:
        bar.close()
