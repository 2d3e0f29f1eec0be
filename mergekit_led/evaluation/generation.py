"""Greedy answers to many prompts, batched with left padding.

Prompts are sorted by length and batched in that order, so a batch pads little;
each batch is one ``model.generate`` call (greedy, the KV cache, an attention
mask over the left padding, stopping at eos or the chat template's end of
turn). Answers come back in the prompts' order. ``tests/test_evaluate.py``
checks that batched answers equal one-at-a-time answers.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch


@torch.no_grad()
def greedy_answers(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    progress: Optional[str] = None,
) -> List[List[int]]:
    """The new token ids of each prompt's greedy answer, stop token excluded."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=list(stop_ids) or None,
        pad_token_id=pad_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    answers: List[List[int]] = [[] for _ in prompts]
    stops = set(stop_ids)
    bar = _bar(len(prompts), progress)
    for batch in batches:
        ids, mask = left_padded([prompts[i] for i in batch], pad_id)
        width = ids.shape[1]
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
        )
        for row, index in enumerate(batch):
            new = out[row, width:].tolist()
            cut = next((k for k, token in enumerate(new) if token in stops), len(new))
            answers[index] = new[:cut]
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return answers


def left_padded(rows: Sequence[Sequence[int]], pad_id: int):
    """``(ids, attention_mask)`` of ``rows`` padded on the left to the longest: the last
    column of every row is its last token (where the next token is predicted)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[index, width - len(row) :] = 1
    return ids, mask


def context_length(model) -> Optional[int]:
    """The most positions ``model`` attends over (prompt and answer together), from
    its config; None when the config does not say."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _bar(total: int, description: Optional[str]):
    if description is None:
        return None
    from mergekit_led.console import progress_bar

    return progress_bar(total=total, desc=description, unit="prompt", leave=False)
