"""What a locate run may use, the budget its memory plan is judged against:
``--memory`` when given (``parse_memory``), else the free memory of the GPU or
the CPU's available memory (``device_budget``); and memory sizes shown in GiB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from mergekit_led.errors import MemoryPlanError

GIB = 2**30
# The largest --memory taken (1 EiB, far above any machine): a longer number
# would overflow the conversion to bytes.
MAX_MEMORY = 2**60
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


@dataclass(frozen=True)
class Budget:
    bytes: int
    source: str  # e.g. "--memory 24GB", "NVIDIA H100 80GB HBM3: 79.1 GiB free"
    device_type: str
    device_name: str


def parse_memory(text: str) -> int:
    """``24GB`` / ``24 GiB`` / ``800MB`` / ``24`` (GB) -> bytes. GB is 10^9, GiB 2^30."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise MemoryPlanError(
            f"--memory {text!r} is not a memory size; write e.g. 24GB, 24GiB or 800MB."
        )
    value = float(match.group(1)) * (_UNITS[unit] if unit else 10**9)
    if value <= 0:
        raise MemoryPlanError(f"--memory {text!r} must be more than zero.")
    if not value <= MAX_MEMORY:  # also inf, from a number too long for a float
        raise MemoryPlanError(
            f"--memory {_shown(text)} is more than any machine has (at most 1 EiB); "
            "write e.g. 24GB, 24GiB or 800MB."
        )
    return int(value)


def _shown(text: str) -> str:
    """``text`` quoted, a long one cut (a 400-digit size stays one readable line)."""
    text = str(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def format_gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def planned_device_type(device: str, memory: Optional[str]) -> str:
    """The device type a plan is for: ``--device``, with auto resolved here.
    ``cuda`` needs a visible GPU unless ``--memory`` gives its budget."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and memory is None and not torch.cuda.is_available():
        raise MemoryPlanError(
            "--device cuda: torch sees no CUDA device here; give the GPU's memory with "
            "--memory (e.g. --memory 80GB) to plan for it."
        )
    return device


def device_budget(
    device_type: str, memory: Optional[str] = None, device_map: Optional[str] = None
) -> Budget:
    """What the run may use: ``--memory`` when given, else the free memory of the
    visible GPU (all visible GPUs with ``--device-map``), or the CPU's available memory."""
    if memory is not None:  # no device is asked: a plan for a GPU works without one
        return Budget(parse_memory(memory), f"--memory {memory}", device_type, device_type)
    name = device_name(device_type)
    if device_type == "cuda":
        import torch

        indices = range(torch.cuda.device_count()) if device_map else [torch.cuda.current_device()]
        free = sum(torch.cuda.mem_get_info(index)[0] for index in indices)
        what = f"{len(indices)} GPUs" if device_map else name
        return Budget(free, f"{what}: {format_gib(free)} free", device_type, name)
    # The plan's overhead holds what this process already holds: count it as available.
    available = _available_cpu_memory() + _own_rss()
    return Budget(available, f"CPU: {format_gib(available)} available", device_type, name)


def _own_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return "cpu"


def _available_cpu_memory() -> int:
    """MemAvailable of /proc/meminfo, capped by a cgroup limit (containers)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            available = min(available, int(limit))
    return available
