"""Importance score accumulators: SNIP (the paper's), and the ablations wanda,
magnitude and random (``LED_SPEC.md`` section 1).

SNIP is ``(1/|X|) Σ_x |θ ⊙ ∇θ ℓ(x)|``. The absolute value is per sample, so the
per-sample gradients cannot be summed first; instead every parameter gets a
``register_post_accumulate_grad_hook`` that folds ``|θ ⊙ grad|`` into a float32
sum the moment its gradient is complete and then drops the gradient. One
forward and one backward per sample cover every weight, and no full set of
gradients ever exists at once.

Accumulators hold sums only; ``scores()`` turns them into the stored values.
Their state is a flat dict of tensors so a run can checkpoint and resume it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Mapping, Optional

import torch
from torch import nn


def accumulator_device(param: torch.Tensor, offload: bool) -> torch.device:
    """Where a parameter's float32 accumulator lives: beside it, or in CPU memory."""
    if offload or param.device.type == "meta":
        return torch.device("cpu")
    return param.device


class SnipAccumulator:
    """Per-sample ``|θ ⊙ ∇θ ℓ|`` summed over samples, one hook per parameter.

    ``params`` maps each scored weight's checkpoint name to its parameter (tied
    parameters appear once: their gradient already sums every use).

    Non-finite gradients: each hook also records its contribution's maximum,
    checked once per sample (one device sync per sample, not per tensor). With ``skip_nonfinite`` the hooks add only the finite part and
    ``subtracting()`` lets the caller remove a bad sample again by recomputing
    it; the accumulators then equal a run without that sample to float rounding.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        *,
        offload: bool = False,
        skip_nonfinite: bool = False,
    ):
        self.params = dict(params)
        self.skip_nonfinite = skip_nonfinite
        self.sums: Dict[str, torch.Tensor] = {
            name: torch.zeros(
                param.shape, dtype=torch.float32, device=accumulator_device(param, offload)
            )
            for name, param in self.params.items()
        }
        self._sign = 1.0
        self._sample_totals: List[tuple] = []
        self._handles: list = []

    # hooks -------------------------------------------------------------------
    def attach(self) -> None:
        for name, param in self.params.items():
            param.requires_grad_(True)
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook_for(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, name: str) -> Callable[[torch.Tensor], None]:
        target = self.sums[name]

        def fold_gradient(param: torch.Tensor) -> None:
            grad = param.grad
            param.grad = None  # the full gradient buffer never outlives this hook
            # A float32 gradient is reused in place (it was just released);
            # lower precisions are widened before the product.
            contribution = grad if grad.dtype == torch.float32 else grad.to(torch.float32)
            contribution.mul_(param.detach()).abs_()
            # The largest element is NaN or inf exactly when any element is, and
            # (unlike a sum) cannot overflow on finite values.
            self._sample_totals.append((name, contribution.amax()))
            if self.skip_nonfinite:
                contribution = torch.nan_to_num(contribution, nan=0.0, posinf=0.0)
            target.add_(contribution.to(target.device, non_blocking=True), alpha=self._sign)

        return fold_gradient

    # per sample --------------------------------------------------------------
    def begin_sample(self) -> None:
        self._sample_totals = []

    def nonfinite_parameter(self) -> Optional[str]:
        """After a backward: the first weight whose gradient was non-finite, or None."""
        if not self._sample_totals:
            return None
        largest = torch.stack([value.to("cpu") for _, value in self._sample_totals])
        if bool(torch.isfinite(largest).all()):
            return None
        first = int((~torch.isfinite(largest)).nonzero()[0])
        return self._sample_totals[first][0]

    @contextlib.contextmanager
    def subtracting(self) -> Iterator[None]:
        """Within this block the hooks subtract instead of add (to undo a sample)."""
        self._sign = -1.0
        try:
            yield
        finally:
            self._sign = 1.0

    # results -----------------------------------------------------------------
    def state(self) -> Dict[str, torch.Tensor]:
        return {f"sum.{name}": tensor for name, tensor in self.sums.items()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in self.sums.items():
            tensor.copy_(state[f"sum.{name}"])

    def scores(self, samples: int) -> Dict[str, torch.Tensor]:
        """The mean over ``samples`` samples, in place (the sums are not needed after)."""
        return {name: tensor.div_(samples) for name, tensor in self.sums.items()}


class WandaAccumulator:
    """``|W| · ‖X_col‖₂``: squared input activations of every ``nn.Linear``,
    summed over all tokens of all samples by forward hooks.

    Weights that are not the weight of a linear layer (embeddings, norms) have
    no input columns; they fall back to ``|θ|`` (election is per tensor, so only
    the order within a tensor matters) and are listed in ``fallback``.
    A sample's activations are staged and added only once the whole forward
    pass is known to be finite, so a non-finite sample is dropped exactly.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        linear_modules: Mapping[str, nn.Linear],
        *,
        offload: bool = False,
    ):
        self.params = dict(params)
        self.linear_modules = dict(linear_modules)
        self.squares: Dict[str, torch.Tensor] = {
            name: torch.zeros(
                module.in_features,
                dtype=torch.float32,
                device=accumulator_device(module.weight, offload),
            )
            for name, module in self.linear_modules.items()
        }
        self.fallback = sorted(set(self.params) - set(self.linear_modules))
        self._pending: Dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self) -> None:
        for name, module in self.linear_modules.items():
            self._handles.append(module.register_forward_hook(self._hook_for(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, name: str):
        def record_inputs(module, inputs, output):
            x = inputs[0].detach()
            squared = x.to(torch.float32).pow(2).reshape(-1, x.shape[-1]).sum(dim=0)
            previous = self._pending.get(name)
            self._pending[name] = squared if previous is None else previous + squared

        return record_inputs

    def begin_sample(self) -> None:
        self._pending = {}

    def nonfinite_parameter(self) -> Optional[str]:
        for name, squared in self._pending.items():
            if not bool(torch.isfinite(squared).all()):
                return name
        return None

    def commit_sample(self) -> None:
        for name, squared in self._pending.items():
            target = self.squares[name]
            target.add_(squared.to(target.device))
        self._pending = {}

    def state(self) -> Dict[str, torch.Tensor]:
        return {f"squares.{name}": tensor for name, tensor in self.squares.items()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in self.squares.items():
            tensor.copy_(state[f"squares.{name}"])

    def scores(self, samples: int) -> Dict[str, torch.Tensor]:
        scores: Dict[str, torch.Tensor] = {}
        for name, param in self.params.items():
            weight = param.detach().to(torch.float32).abs()
            if name in self.squares:
                norms = self.squares[name].sqrt().to(weight.device)
                weight.mul_(norms)  # (out, in) * (in,): every row scaled by column norms
            scores[name] = weight
        return scores


def magnitude_scores(
    params: Mapping[str, torch.Tensor],
    base_weight: Optional[Callable[[str], torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """``|θ|``, or ``|θ − θ_base|`` with ``base_weight(name)`` (float32 arithmetic)."""
    scores = {}
    for name, param in params.items():
        values = param.detach().to("cpu", torch.float32)
        if base_weight is not None:
            values = values - base_weight(name).to("cpu", torch.float32)
        scores[name] = values.abs()
    return scores


def random_scores(shapes: Mapping[str, torch.Size], seed: int) -> Dict[str, torch.Tensor]:
    """Seeded uniform ``[0, 1)`` scores, drawn in sorted name order so the result
    depends only on the seed and the set of weights."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(tuple(shapes[name]), generator=generator) for name in sorted(shapes)}
