"""Scoring a data score (SNIP, Wanda) sample by sample: this process's shard of
the selected samples, checkpointed every ``--checkpoint-every`` samples and
resumed from there, then the sums all-reduced across processes.

``score_data`` is what ``locate`` runs for the scores that read data; one
sample's work is a step of ``location.steps``, the sums are kept by the
accumulators of ``location.scores``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from mergekit_led.atomic import clean_stale_staging
from mergekit_led.console import progress_bar
from mergekit_led.core.locate_options import LocateOptions, resume_key_options
from mergekit_led.errors import LocateError, NonFiniteSample
from mergekit_led.location import data as location_data
from mergekit_led.location.checkpoint import Progress, RunCheckpoint
from mergekit_led.location.distributed import Distributed
from mergekit_led.location.model import enable_gradient_checkpointing
from mergekit_led.location.score_kinds import ScoreKind
from mergekit_led.location.steps import input_device
from mergekit_led.location.weight_names import ScoredParameters

LOG = logging.getLogger(__name__)


def _progress_bar(total: int, initial: int, opts: LocateOptions, dist: Distributed):
    return progress_bar(
        total=total,
        initial=initial,
        desc=f"locate {opts.score}"
        + (f" (rank 0 of {dist.world_size})" if dist.world_size > 1 else ""),
        unit="sample",
        enabled=opts.progress and dist.is_main,
        dynamic_ncols=True,
    )


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


def score_data(
    loaded: nn.Module,
    model: str,
    scored: ScoredParameters,
    selection: location_data.SelectedSamples,
    opts: LocateOptions,
    dist: Distributed,
    out: str,
    kind: ScoreKind,
    step: Callable[..., None],
):
    """Score this process's shard with ``step`` per sample into ``kind``'s
    accumulator, all-reduce the sums, return the mean scores."""
    accumulator, details = kind.accumulator(loaded, model, scored, opts)
    if opts.gradient_checkpointing and kind.uses_gradients:
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
