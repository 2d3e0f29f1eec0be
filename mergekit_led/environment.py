"""Facts about the running environment: package versions and the compute device."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, Optional

from mergekit_led.errors import LEDError

RECORDED_PACKAGES = (
    "mergekit-led",
    "mergekit",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "safetensors",
    "tokenizers",
)
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def package_versions() -> Dict[str, str]:
    """Python's and every installed package of ``RECORDED_PACKAGES``' version
    (recorded in stores so a result can be traced to the software that made it)."""
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def resolve_device(device: str, local_rank: Optional[int] = None):
    """``auto``/``cpu``/``cuda`` -> a ``torch.device``; ``cuda`` without CUDA is an
    error, not a silent fall-back. ``local_rank`` picks the GPU of a torchrun process."""
    import torch

    if device not in DEVICE_CHOICES:
        raise LEDError(f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise LEDError("--device cuda was asked for, but torch sees no CUDA device.")
        index = local_rank if local_rank is not None else torch.cuda.current_device()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def check_device(device: str, *, asked: Optional[str] = None) -> None:
    """Refuse, in one line and before any work, a device torch cannot use here
    (an unknown name, or cuda/xpu/mps on a machine without one). ``asked`` says
    how the user asked for it (default ``--device DEVICE``)."""
    import torch

    asked = asked or f"--device {device}"

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise LEDError(f"{asked}: not a device torch knows ({error}).") from error
    available = {
        "cpu": lambda: True,
        "meta": lambda: True,
        "cuda": torch.cuda.is_available,
        "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
        "mps": torch.backends.mps.is_available,
    }.get(parsed.type)
    if available is None:
        return  # another backend: torch reports on it itself
    if not available():
        raise LEDError(
            f"{asked} was asked for, but torch sees no {parsed.type.upper()} "
            "device on this machine."
        )
    if parsed.type == "cuda" and parsed.index is not None:
        count = torch.cuda.device_count()
        if parsed.index >= count:
            raise LEDError(f"{asked} was asked for, but torch sees {count} CUDA device(s).")
