"""Loading the model and tokenizer to score, and memory-saving switches for the run."""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from mergekit_led.core.locate_options import MODEL_DTYPES, LocateOptions
from mergekit_led.errors import LocateError


def load_model(model: str, opts: LocateOptions, device: torch.device) -> nn.Module:
    """The causal LM in eval mode (no dropout), on ``device`` or spread by ``device_map``."""
    from transformers import AutoModelForCausalLM

    kwargs: Dict[str, Any] = {
        "dtype": MODEL_DTYPES[opts.dtype],
        "trust_remote_code": opts.trust_remote_code,
    }
    if opts.device_map is not None:
        kwargs["device_map"] = opts.device_map
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise LocateError(f"Cannot load model {model} as a causal LM: {error}") from error
    if opts.device_map is None:
        loaded.to(device)
    loaded.eval()
    loaded.requires_grad_(False)  # scored parameters are switched on by the accumulator
    return loaded


def load_tokenizer(model: str, opts: LocateOptions):
    from transformers import AutoTokenizer

    source = opts.tokenizer or model
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=opts.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as error:
        raise LocateError(
            f"Cannot load a tokenizer from {source}: {error}. Pass --tokenizer."
        ) from error


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute each decoder layer's activations in the backward pass.

    transformers only checkpoints in training mode, and training mode would
    switch dropout on; so each layer's ``forward`` is wrapped directly
    (non-reentrant, so parameter hooks still fire once per parameter).
    Returns the number of layers wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    layers = _decoder_layers(model)
    if not layers:
        raise LocateError(
            "--gradient-checkpointing: no decoder layers found in "
            f"{type(model).__name__} (looked for a ModuleList of layers)."
        )
    for layer in layers:
        forward = layer.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = checkpointed
    return len(layers)


def _decoder_layers(model: nn.Module) -> List[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if layers:
        return layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    return list(max(lists, key=len)) if lists else []
