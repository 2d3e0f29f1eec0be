"""A model's shape as the memory plan sees it (``ModelShape``), read from its
transformers config: parameter counts from the model built on the meta device,
widths from the config; no weights are read.

``location.memory.model_shape`` reads a model's config and passes it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from mergekit_led.errors import MemoryPlanError

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2}
# The most layers, and experts per layer, a config may declare. Building the
# model on the meta device costs no weight memory but one module per layer and
# expert: a hostile config.json of 300,000 layers took gigabytes and minutes.
# The largest real models have about 130 layers and 400 experts.
MAX_LAYERS = 1024
MAX_EXPERTS = 4096
_COUNTS = (
    ("num_hidden_layers", MAX_LAYERS),
    ("num_layers", MAX_LAYERS),
    ("n_layer", MAX_LAYERS),
    ("num_local_experts", MAX_EXPERTS),
    ("num_experts", MAX_EXPERTS),
    ("n_routed_experts", MAX_EXPERTS),
)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about a model, from its config."""

    model: str
    architecture: str
    parameters: int  # every parameter once (a tied head counts once)
    largest: int  # elements of the largest parameter
    tied_head: bool
    vocab: int
    hidden: int
    layers: int
    intermediate: int  # MLP width that runs per token (MoE: the routed experts')
    heads: int
    kv_width: int  # key (= value) width: kv heads × head dim
    dtype: str  # the checkpoint's dtype (what --dtype auto loads)
    max_positions: Optional[int]


def shape_from_config(config: Any, model: str) -> ModelShape:
    """The plan's view of a transformers config: parameter counts from the model
    built on the meta device (exact, no memory), widths from the config."""
    import torch
    from transformers import AutoModelForCausalLM

    check_counts(config, model)
    try:
        with torch.device("meta"):
            built = AutoModelForCausalLM.from_config(config)
    except Exception as error:  # transformers raises many types for an odd config
        raise MemoryPlanError(
            f"Cannot plan the memory of {model}: its config does not build a causal LM "
            f"({short_error(error)})."
        ) from error
    try:
        return _shape(config, built, model)
    except (AttributeError, TypeError, ValueError, IndexError) as error:
        raise MemoryPlanError(
            f"Cannot plan the memory of {model}: its config lacks a size the plan needs "
            f"({short_error(error)})."
        ) from error


def check_counts(config: Any, model: str) -> None:
    """Refuse a config declaring more layers or experts than ``MAX_LAYERS`` /
    ``MAX_EXPERTS`` (its own and its text model's), before anything is built."""
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for part in configs:
        for name, limit in _COUNTS:
            value = getattr(part, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise MemoryPlanError(
                    f"Cannot plan the memory of {model}: its config gives {name} {value:,}, "
                    f"more than the {limit:,} the plan takes (no real model has as many); "
                    "refused before building it."
                )


def _shape(config: Any, built: Any, model: str) -> ModelShape:
    params = {id(p): p for p in built.parameters()}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    intermediate = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    routed = getattr(text, "num_experts_per_tok", None)
    expert_width = getattr(text, "moe_intermediate_size", None)
    if routed and expert_width:
        intermediate = int(routed) * int(expert_width)
    head = built.get_output_embeddings()
    embeddings = built.get_input_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    # transformers 5 names it dtype (and warns on torch_dtype); earlier versions torch_dtype.
    name = "dtype" if hasattr(config, "dtype") else "torch_dtype"
    dtype = getattr(config, name, None)
    dtype_name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    max_positions = getattr(text, "max_position_embeddings", None)
    return ModelShape(
        model=model,
        architecture=type(built).__name__,
        parameters=sum(p.numel() for p in params.values()),
        largest=max(p.numel() for p in params.values()),
        tied_head=tied,
        vocab=int(embeddings.weight.shape[0]),
        hidden=hidden,
        layers=int(text.num_hidden_layers),
        intermediate=intermediate,
        heads=heads,
        kv_width=kv_heads * head_dim,
        dtype=dtype_name if dtype_name in BYTES_PER_DTYPE else "float32",
        max_positions=int(max_positions) if isinstance(max_positions, int) else None,
    )


def short_error(error: BaseException) -> str:
    """An error's message on one line, cut after 300 characters (its type when empty)."""
    text = " ".join(str(error).split())
    return (text[:300] + " ...") if len(text) > 300 else text or type(error).__name__
