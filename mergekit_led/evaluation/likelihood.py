"""A cheap, generation-free utility signal: how likely the model finds the
reference answers (teacher forcing, the tokenisation ``locate`` uses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from mergekit_led.location.data import TokenizedSample


@dataclass(frozen=True)
class Likelihood:
    answer_nll: float  # mean negative log-likelihood per answer token (nats)
    token_accuracy: float  # share of answer tokens that are the model's argmax
    answer_tokens: int


@torch.no_grad()
def answer_likelihood(
    model, samples: Sequence[TokenizedSample], *, pad_id: int, batch_size: int, device
) -> Likelihood:
    """Over every answer token of ``samples`` (right padding: causal attention
    never sees it)."""
    total_nll = 0.0
    correct = 0
    tokens = 0
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(s.input_ids) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, sample in enumerate(batch):
            length = len(sample.input_ids)
            ids[row, :length] = torch.tensor(sample.input_ids)
            mask[row, :length] = 1
            targets[row, sample.prompt_length : length] = ids[row, sample.prompt_length : length]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        # Position t predicts token t + 1.
        logits, targets = logits[:, :-1], targets[:, 1:].to(logits.device)
        scored = targets != -100
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
        )
        total_nll += float(nll)
        correct += int(((logits.argmax(-1) == targets) & scored).sum())
        tokens += int(scored.sum())
    if tokens == 0:
        return Likelihood(float("nan"), float("nan"), 0)
    return Likelihood(round(total_nll / tokens, 6), round(correct / tokens, 6), tokens)
