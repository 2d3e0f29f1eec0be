"""The memory a locate run needs, estimated from the model's config alone.

``plan_memory`` adds up what a SNIP locate run holds at its peak:

- weights: ``P × b`` (``P`` parameters, ``b`` bytes per weight of the model dtype);
- accumulators: ``4 × P`` float32 sums (in CPU memory with ``--offload-accumulators``);
- activations per sample of ``T`` tokens, the tensors autograd saves in a
  Llama-style decoder layer (hidden ``h``, MLP width ``i``, key/value width
  ``kv``, ``a`` heads), summed over ``n`` layers::

      per layer: T × (h × (8 + 7b) + 2 × kv × b + 4 × i × b + 4 × a)

  (two RMSNorms: a float32 input and two ``b`` copies each; q, attention
  output and o_proj input; k and v; gate, SiLU, up and their product; the
  attention's float32 log-sum-exp), plus the final norm ``T × h × (4 + 2b)``
  and the answer's logits ``A × V × (2b + 12)`` (``A`` answer tokens: logits,
  their float32 copy, log-softmax and their gradients). With
  ``--gradient-checkpointing`` each layer keeps only its input (``T × h × b``)
  and one layer's activations are recomputed at a time;
- gradients: the hooks fold each gradient as soon as it is complete and drop
  it, so one exists at a time, except at the two moments ``plan_memory``
  describes (the head's at the start of the backward pass, beside every
  activation; the embedding's at its end, without them);
- overhead: the process's libraries (measured, CPU) or the CUDA context
  (assumed), plus the allocator's slack: ``OVERHEAD``, ``ALLOCATOR_SLACK``.

``judge`` tries the memory-saving flags in order of their cost and names the
first set that fits a budget. Reading the config and the device are
the only I/O (``model_shape``; ``device_budget``, in ``location.memory_budget``);
the rest is arithmetic. ``ModelShape``, a model's sizes from its config, is in
``location.memory_shape``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

from mergekit_led.errors import MemoryPlanError
from mergekit_led.location.memory_budget import GIB, Budget, format_gib
from mergekit_led.location.memory_shape import (
    BYTES_PER_DTYPE,
    ModelShape,
    shape_from_config,
    short_error,
)

# What a locate process holds besides the model's tensors. CPU: the peak RSS
# of the same locate code path on a 0.1M-parameter model (interpreter, torch,
# transformers, datasets, tokenizer, data), measured with
# benchmarks/bench_memory_plan.py on this project's machine (torch 2.13.0+cpu,
# transformers 5.25): 0.56 GiB; tests/test_memory.py measures it again on the
# machine that runs them. CUDA: an assumption until benchmarks/bench_gpu_shapes.py
# measures it: 0.5 GiB of CUDA context (outside torch's allocator) plus 5% of the
# tensors for the caching allocator's fragmentation.
OVERHEAD = {"cpu": int(0.56 * GIB), "cuda": int(0.5 * GIB)}
# The allocators' slack, as a share of the tensors: measured on the CPU (glibc's
# heap keeps freed gradient and activation buffers of up to 32 MB within a
# sample: 3-10% at 29M-187M parameters), assumed for CUDA's caching allocator.
ALLOCATOR_SLACK = 0.05
# Bytes per embedding element at the end of the backward pass (see plan_memory).
END_BYTES_32 = {False: 4, True: 12}
END_BYTES_16 = 10
# The flags that lower a run's peak, cheapest first. Gradient checkpointing
# recomputes each layer's forward (about a third more compute); offloading
# copies 4 bytes per weight to the CPU and adds them there on every sample,
# which on a GPU costs more than that.
FLAG_SETS: Tuple[Tuple[str, ...], ...] = (
    ("--gradient-checkpointing",),
    ("--offload-accumulators",),
    ("--offload-accumulators", "--gradient-checkpointing"),
)


@dataclass(frozen=True)
class Setup:
    """The run the plan is for."""

    dtype: str  # float32 | bfloat16 | float16
    tokens: int  # per sample: --max-length
    answer_tokens: int  # per sample, at most ``tokens``
    offload_accumulators: bool = False
    gradient_checkpointing: bool = False
    device_type: str = "cpu"  # cpu | cuda

    def flags(self) -> Tuple[str, ...]:
        return tuple(
            flag
            for flag, on in (
                ("--offload-accumulators", self.offload_accumulators),
                ("--gradient-checkpointing", self.gradient_checkpointing),
            )
            if on
        )


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    on_device: bool  # False: in CPU memory although the run is on a GPU
    formula: str


@dataclass(frozen=True)
class MemoryPlan:
    shape: ModelShape
    setup: Setup
    parts: Tuple[Part, ...]

    @property
    def device_total(self) -> int:
        """What the scoring device holds at the peak (on CPU: everything)."""
        return sum(p.bytes for p in self.parts if p.on_device or self.setup.device_type == "cpu")

    @property
    def host_total(self) -> int:
        """CPU memory besides the device's (only on a GPU: offloaded accumulators)."""
        if self.setup.device_type == "cpu":
            return 0
        return sum(p.bytes for p in self.parts if not p.on_device)

    def part(self, name: str) -> int:
        return next(p.bytes for p in self.parts if p.name == name)


@dataclass(frozen=True)
class Verdict:
    """A plan against a budget, and the cheapest flags that fit (None: nothing fits)."""

    plan: MemoryPlan
    budget: Budget
    fits: bool
    fitting: Optional[MemoryPlan]
    reason: str  # why nothing fits, when nothing does


# --------------------------------------------------------------------------- the arithmetic


def plan_memory(
    shape: ModelShape, setup: Setup, *, base_overhead: Optional[int] = None
) -> MemoryPlan:
    """The peak memory of a SNIP locate run of ``shape`` under ``setup`` (module docstring).

    ``base_overhead``: the libraries' (CPU) or CUDA context's bytes, instead of
    ``OVERHEAD`` (e.g. measured on the machine that runs the plan's tests).
    """
    b = BYTES_PER_DTYPE[setup.dtype]
    T, A = setup.tokens, min(setup.answer_tokens, setup.tokens)
    h, i, kv, a, n, V = (
        shape.hidden,
        shape.intermediate,
        shape.kv_width,
        shape.heads,
        shape.layers,
        shape.vocab,
    )
    widen = 4 if b < 4 else 0
    per_layer = T * (h * (8 + 7 * b) + 2 * kv * b + 4 * i * b + 4 * a)
    if setup.gradient_checkpointing:
        layers_bytes = n * T * h * b + per_layer
        layers_formula = "n·T·h·b + one layer's T·(h·(8+7b) + 2·kv·b + 4·i·b + 4·a)"
    else:
        layers_bytes = n * per_layer
        layers_formula = "n·T·(h·(8+7b) + 2·kv·b + 4·i·b + 4·a)"
    head_bytes = T * h * (4 + 2 * b) + A * V * (2 * b + 12)
    activations = layers_bytes + head_bytes
    # Gradients exist one at a time, except at two moments. At the start of the
    # backward pass, beside every activation: the head's (the largest tensor,
    # widened to float32 there unless tied). At its end, when the activations
    # are gone: the embedding's, E = V × h elements, for which CPU torch 2.13
    # was measured to hold 4 bytes per element (float32, untied), 12 (float32,
    # tied: the head's gradient waits, the embedding's arrives, and their sum)
    # and 10 (16-bit: a float32 accumulation, the result, the widening).
    start = shape.largest * (b + (0 if shape.tied_head else widen))
    end = V * h * (END_BYTES_16 if b < 4 else END_BYTES_32[shape.tied_head])
    gradient_bytes = max(start, end - activations)
    accumulators_on_device = not (setup.offload_accumulators and setup.device_type == "cuda")
    tensors = shape.parameters * b + gradient_bytes + activations
    tensors += shape.parameters * 4 if accumulators_on_device else 0
    if base_overhead is None:
        base_overhead = OVERHEAD[setup.device_type]
    overhead = base_overhead + int(ALLOCATOR_SLACK * tensors)
    parts = (
        Part("weights", shape.parameters * b, True, "P·b"),
        Part(
            "gradients",
            gradient_bytes,
            True,
            f"max(G·{'b' if shape.tied_head or not widen else '(b+4)'}, V·h·e − activations)",
        ),
        Part("accumulators (float32)", shape.parameters * 4, accumulators_on_device, "4·P"),
        Part("activations: layers", layers_bytes, True, layers_formula),
        Part(
            "activations: final norm and answer logits",
            head_bytes,
            True,
            "T·h·(4+2b) + A·V·(2b+12)",
        ),
        Part(
            "overhead",
            overhead,
            True,
            "libraries (measured) + 5% allocator"
            if setup.device_type == "cpu"
            else "CUDA context + 5% allocator (assumed)",
        ),
    )
    return MemoryPlan(shape, setup, parts)


def judge(shape: ModelShape, setup: Setup, budget: Budget, **kwargs: Any) -> Verdict:
    """``setup``'s plan against ``budget``, and the cheapest flag set that fits."""
    plan = plan_memory(shape, setup, **kwargs)
    fits = plan.device_total <= budget.bytes
    fitting = plan if fits else None
    if not fits:
        for flags in FLAG_SETS:
            candidate = plan_memory(shape, _with_flags(setup, flags), **kwargs)
            if candidate.device_total <= budget.bytes:
                fitting = candidate
                break
    reason = ""
    if fitting is None:
        smallest = plan_memory(shape, _with_flags(setup, FLAG_SETS[-1]), **kwargs)
        reason = (
            f"even with {' '.join(FLAG_SETS[-1])} it needs {format_gib(smallest.device_total)} "
            f"(weights alone {format_gib(smallest.part('weights'))})"
        )
        if setup.dtype == "float32":
            reason += "; --dtype bf16 halves the weights (and changes the scores slightly)"
        if setup.device_type == "cuda":
            reason += "; --device-map auto spreads the model over several GPUs"
    return Verdict(plan, budget, fits, fitting, reason)


def setup_for(
    shape: ModelShape,
    opts: Any,
    device_type: str,
    *,
    tokens: Optional[int] = None,
    answer_tokens: Optional[int] = None,
) -> Setup:
    """The ``Setup`` of a locate run with ``LocateOptions`` ``opts`` on ``device_type``.

    ``tokens``: the longest sample (default ``--max-length``, else the model's
    max positions); ``answer_tokens``: the longest answer (default: the whole
    sample, an upper bound for when the data is not read).
    """
    if tokens is None:
        tokens = opts.max_length or shape.max_positions
        if tokens is None:
            raise MemoryPlanError(
                f"Cannot plan the memory of {shape.model}: its config gives no maximum "
                "length; pass --max-length."
            )
    if opts.dtype == "auto":
        dtype = shape.dtype
    else:
        from mergekit_led.core.locate_options import MODEL_DTYPES

        dtype = str(MODEL_DTYPES[opts.dtype]).replace("torch.", "")
    return Setup(
        dtype=dtype,
        tokens=int(tokens),
        answer_tokens=int(tokens if answer_tokens is None else answer_tokens),
        offload_accumulators=bool(opts.offload_accumulators),
        gradient_checkpointing=bool(opts.gradient_checkpointing),
        device_type=device_type,
    )


def _with_flags(setup: Setup, flags: Tuple[str, ...]) -> Setup:
    return replace(
        setup,
        offload_accumulators=setup.offload_accumulators or "--offload-accumulators" in flags,
        gradient_checkpointing=setup.gradient_checkpointing or "--gradient-checkpointing" in flags,
    )


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"


# --------------------------------------------------------------------------- reading


def model_shape(model: str, *, trust_remote_code: bool = False) -> ModelShape:
    """Read ``model``'s config (a local folder, or a Hub id: from the cache when
    offline, else its config.json only) and build its shape; no weights are read."""
    from transformers import AutoConfig

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        config = AutoConfig.from_pretrained(
            model,
            trust_remote_code=trust_remote_code,
            local_files_only=offline or os.path.isdir(model),
        )
    except Exception as error:  # OSError, ValueError, KeyError, hub errors
        raise MemoryPlanError(
            f"Cannot plan the memory of {model}: its config cannot be read ({short_error(error)})."
        ) from error
    return shape_from_config(config, model)


# --------------------------------------------------------------------------- rendering


def render(verdict: Verdict, *, seconds_per_sample: Optional[float] = None) -> List[str]:
    """The plan as lines a user reads: parts, total against budget, the flags that fit."""
    plan, setup, shape = verdict.plan, verdict.plan.setup, verdict.plan.shape
    lines = [
        f"memory plan for {shape.model} ({shape.architecture}, {_count(shape.parameters)} "
        f"parameters, {setup.dtype}) on {setup.device_type}, {setup.tokens} tokens per sample "
        f"({setup.answer_tokens} answer tokens), flags: {' '.join(setup.flags()) or 'none'}",
    ]
    device = "GPU" if setup.device_type == "cuda" else "CPU"
    for part in plan.parts:
        where = "" if part.on_device or setup.device_type == "cpu" else "  (CPU memory)"
        lines.append(f"  {part.name:<44} {format_gib(part.bytes):>11}   {part.formula}{where}")
    lines.append(
        f"  {'total on the ' + device:<44} {format_gib(plan.device_total):>11}   "
        f"budget {format_gib(verdict.budget.bytes)} ({verdict.budget.source})"
    )
    if plan.host_total:
        lines.append(f"  {'CPU memory besides':<44} {format_gib(plan.host_total):>11}")
    if verdict.fits:
        lines.append("fits.")
    elif verdict.fitting is not None:
        fitting = verdict.fitting
        host = f", {format_gib(fitting.host_total)} of CPU memory" if fitting.host_total else ""
        lines.append(
            f"does not fit; fits with {' '.join(fitting.setup.flags())} "
            f"({format_gib(fitting.device_total)} on the {device}{host})."
        )
    else:
        lines.append(f"does not fit, with any flags: {verdict.reason}.")
    if seconds_per_sample is not None:
        lines.append(
            f"time: {seconds_per_sample:.2f} s per sample (measured rate, see docs/locate.md)"
        )
    return lines


def refusal(verdict: Verdict) -> str:
    """Why a run does not start, in one line: the total, the budget, the way out, the parts."""
    plan = verdict.plan
    device = "GPU" if plan.setup.device_type == "cuda" else "CPU"
    if verdict.fitting is not None:
        way = f"it fits with {' '.join(verdict.fitting.setup.flags())} " + (
            f"({format_gib(verdict.fitting.device_total)})"
        )
    else:
        way = f"no flags make it fit: {verdict.reason}"
    parts = ", ".join(f"{p.name} {format_gib(p.bytes)}" for p in plan.parts)
    return (
        f"Locate of {plan.shape.model} needs about {format_gib(plan.device_total)} of {device} memory "
        f"({plan.setup.dtype}, {plan.setup.tokens} tokens per sample, flags: "
        f"{' '.join(plan.setup.flags()) or 'none'}) but the budget is "
        f"{format_gib(verdict.budget.bytes)} ({verdict.budget.source}); {way}. Plan: {parts}. "
        "Pass --memory SIZE to plan for another budget (docs/locate.md#memory-plan)."
    )


def as_dict(verdict: Verdict) -> Dict[str, Any]:
    plan = verdict.plan
    return {
        "model": plan.shape.model,
        "parameters": plan.shape.parameters,
        "parts": {p.name: p.bytes for p in plan.parts},
        "device_total": plan.device_total,
        "budget": verdict.budget.bytes,
        "fits": verdict.fits,
        "fitting_flags": list(verdict.fitting.setup.flags()) if verdict.fitting else None,
    }
