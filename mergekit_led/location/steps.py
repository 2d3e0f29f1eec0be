"""One sample's work: the answer loss and the SNIP / wanda accumulation steps."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping

import torch
from torch import nn

from mergekit_led.errors import NonFiniteSample
from mergekit_led.location.data import TokenizedSample
from mergekit_led.location.model import load_model
from mergekit_led.location.scores import SnipAccumulator, WandaAccumulator


def input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def answer_loss(model: nn.Module, sample: TokenizedSample, device: torch.device) -> torch.Tensor:
    """ℓ(x, y): mean negative log-likelihood of the answer tokens given the prompt.

    Only the logits that predict answer tokens are computed (``logits_to_keep``):
    prompt positions carry no loss, so this changes no gradient.
    """
    input_ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
    answer = sample.answer_length
    kwargs: Dict[str, Any] = {"use_cache": False}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = answer + 1
    logits = model(input_ids=input_ids, **kwargs).logits
    logits = logits[0, -(answer + 1) : -1]  # position t predicts token t + 1
    targets = input_ids[0, -answer:].to(logits.device)
    return nn.functional.cross_entropy(logits.float(), targets, reduction="mean")


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    cached = getattr(model, "_led_accepts_logits_to_keep", None)
    if cached is None:
        cached = "logits_to_keep" in inspect.signature(model.forward).parameters
        model._led_accepts_logits_to_keep = cached
    return cached


def snip_step(
    model, accumulator: SnipAccumulator, sample, device, *, loss_function=answer_loss
) -> None:
    """Fold one sample's ``|θ ⊙ ∇θ ℓ|`` into the accumulator (one forward, one backward).

    ``loss_function`` is ``answer_loss`` (a seam for tests of the non-finite paths).
    """
    loss = loss_function(model, sample, device)
    if not torch.isfinite(loss):
        raise NonFiniteSample(sample, f"the loss is {float(loss.detach())}")
    accumulator.begin_sample()
    loss.backward()
    bad = accumulator.nonfinite_parameter()
    if bad is None:
        return
    if accumulator.skip_nonfinite:
        # Recompute the same sample with the hooks subtracting what they added.
        with accumulator.subtracting():
            loss_function(model, sample, device).backward()
    raise NonFiniteSample(sample, f"the gradient of {bad!r} is not finite")


def wanda_step(model, accumulator: WandaAccumulator, sample, device) -> None:
    """Add one sample's squared input activations of every linear layer."""
    input_ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
    accumulator.begin_sample()
    with torch.no_grad():
        model(input_ids=input_ids, use_cache=False)
    bad = accumulator.nonfinite_parameter()
    if bad is not None:
        raise NonFiniteSample(sample, f"the input activations of {bad!r} are not finite")
    accumulator.commit_sample()


@dataclass(frozen=True)
class RunHooks:
    """The seams of a locate run: how the model is loaded, and per score kind a
    step that replaces the kind's own (``location.score_kinds``) for one sample.
    ``locate(..., hooks=...)`` replaces them (tools and tests)."""

    load_model: Callable[..., nn.Module] = load_model
    steps: Mapping[str, Callable[..., None]] = field(default_factory=dict)
