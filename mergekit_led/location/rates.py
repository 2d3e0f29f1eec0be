"""Locate's measured speed per device, for the time estimates of ``--plan``.

One SNIP sample costs one forward and one backward pass, about proportional to
parameters × tokens; a rate is that product per second, measured by a
benchmark on one device and dtype. An estimate is given only for a device whose
rate was measured (its name as torch reports it: the GPU's name, or the CPU's
model and thread count), never extrapolated to another device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from mergekit_led.location.memory import Verdict


@dataclass(frozen=True)
class MeasuredRate:
    parameter_tokens_per_second: float  # parameters × tokens scored per second
    checkpointing_factor: float  # time with --gradient-checkpointing / without
    offload_factor: float  # time with --offload-accumulators / without
    source: str  # the benchmark, machine and commit that measured it


# (device name, dtype) -> rate. GPU rates come from benchmarks/bench_gpu_shapes.py
# once it has run on that GPU (none yet); the CPU's from bench_memory_plan.py.
MEASURED: Dict[Tuple[str, str], MeasuredRate] = {
    # A 1.24B Llama-3.2-1B-shaped model, 128-token samples: 6.59 s per sample, the
    # mean of two rounds of 8 samples (6.52 and 6.66 s) on the idle machine (load
    # about 1; under load 6-9 a sample took 35-68 s); checkpointing from one run of
    # each flag set (4 samples) under load. Rough.
    ("cpu:Intel(R) Xeon(R) Processor:2", "float32"): MeasuredRate(
        parameter_tokens_per_second=1.236e9 * 128 / 6.59,
        checkpointing_factor=1.53,
        offload_factor=1.0,
        source="benchmarks/bench_memory_plan.py --sizes 1b --flags none --bare --rounds 2 "
        "--samples 8, commit 335a5f0, this project's 2-core machine, idle",
    ),
}


def device_key(device_type: str) -> str:
    """The name a rate is measured under: the GPU's name, or ``cpu:<model>:<threads>``."""
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name()
    import torch

    return f"cpu:{_cpu_model()}:{torch.get_num_threads()}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def estimate_seconds_per_sample(
    verdict: Verdict, *, device: Optional[str] = None
) -> Optional[float]:
    """Seconds per sample of the plan's run (with the flags that fit) on ``device``
    (default: this machine's), or None when no rate was measured there."""
    plan = verdict.fitting or verdict.plan
    setup = plan.setup
    try:
        key = device or device_key(setup.device_type)
    except Exception:  # no such device here: nothing measured to say
        return None
    rate = MEASURED.get((key, setup.dtype))
    if rate is None:
        return None
    seconds = plan.shape.parameters * setup.tokens / rate.parameter_tokens_per_second
    if setup.gradient_checkpointing:
        seconds *= rate.checkpointing_factor
    if setup.offload_accumulators and setup.device_type == "cuda":
        seconds *= rate.offload_factor
    return seconds
