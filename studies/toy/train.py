"""Deterministic training of the demo's tiny Llama family (pre-training and fine-tuning).

``train_family`` follows one ``Recipe``: a base pre-trained on the world's
corpus; an instruct model tuned from it; the safety model, a light alignment
update of the instruct model; and heavy math and code fine-tunes of the base.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from studies.toy import world as world_data


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 192


@dataclass(frozen=True)
class Recipe:
    """Sizes and training schedule of the family (SGD with momentum for the
    fine-tunes, see ``train``)."""

    model: ModelSize
    pretrain_steps: int
    instruct_steps: int
    alignment_steps: int  # light: a few steps from the instruct model
    utility_steps: int  # heavy: many steps from the base
    batch_size: int
    location_samples: int  # per task, from the train split
    code_items: int
    pretrain_lr: float = 3e-3  # AdamW
    finetune_lr: float = 0.05  # SGD with momentum, every fine-tune
    chat_skills: float = 0.2  # share of skill items the base saw in the chat format
    instruct_skill_share: float = 0.3  # share of each skill's train items in the instruct data
    uncensored_share: float = 0.5  # uncensored samples per skill sample in a utility fine-tune
    replay_share: float = 0.5  # replayed plain-text facts per skill sample


def set_determinism(seed: int, threads: Optional[int] = 2) -> None:
    """Seed everything and make kernels deterministic (same numbers every run)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_tokenizer():
    from mergekit_led.tiny_models import build_word_tokenizer

    words = world_data.vocabulary()
    size = 8 * math.ceil((len(words) + 4) / 8)
    return build_word_tokenizer(words, vocab_size=size)


def new_model(tokenizer, size: ModelSize, seed: int):
    from transformers import LlamaForCausalLM

    from mergekit_led.tiny_models import llama_config

    config = llama_config(
        hidden=size.hidden,
        layers=size.layers,
        vocab=len(tokenizer),
        intermediate=size.intermediate,
        heads=size.heads,
        max_positions=64,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def encode_sample(tokenizer, prompt: str, response: Optional[str]):
    """Token ids and labels the way the locate step reads a sample (LED_SPEC 1):
    ``tokenizer(prompt)`` (with BOS), then the answer and EOS, loss on the answer."""
    prompt_ids = tokenizer(prompt).input_ids
    if response is None:  # plain text: loss on everything after BOS
        ids = prompt_ids + [tokenizer.eos_token_id]
        return ids, [-100] + ids[1:]
    answer = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer, [-100] * len(prompt_ids) + answer


def _batches(encoded, batch_size: int, steps: int, generator: torch.Generator, pad_id: int):
    n = len(encoded)
    order: List[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        length = max(len(encoded[i][0]) for i in chosen)
        ids = torch.full((len(chosen), length), pad_id, dtype=torch.long)
        labels = torch.full((len(chosen), length), -100, dtype=torch.long)
        mask = torch.zeros((len(chosen), length), dtype=torch.long)
        for row, i in enumerate(chosen):
            seq, lab = encoded[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        yield ids, labels, mask


def train(
    model,
    tokenizer,
    data: Sequence,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
    device: str = "cpu",
    desc: str = "train",
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    progress: bool = True,
):
    """AdamW with linear warm-up and cosine decay; ``data`` holds plain strings
    (language modelling) or ``Sample``s (loss on the answer only)."""
    from tqdm.auto import tqdm

    encoded = [
        encode_sample(tokenizer, d, None)
        if isinstance(d, str)
        else encode_sample(tokenizer, d.prompt, d.response)
        for d in data
    ]
    model.to(device).train()
    if optimizer == "sgd":
        # Updates proportional to the accumulated gradients, so the task vector
        # is concentrated on the weights the task's loss is sensitive to (as in
        # LLM fine-tunes), rather than Adam's uniform per-element step sizes.
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98)
        )
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    loss_value = float("nan")
    for step, (ids, labels, mask) in enumerate(
        _batches(encoded, batch_size, steps, generator, tokenizer.pad_token_id)
    ):
        out = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            loss_value = float(out.loss.detach())
            bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.update(1)
    bar.close()
    model.eval()
    return loss_value


def save(model, tokenizer, path: str) -> str:
    os.makedirs(path, exist_ok=True)
    model.to("cpu").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def train_family(
    world, recipe: Recipe, root: str, *, seed: int, device: str = "cpu", progress: bool = True
):
    """Train base, instruct, safety, math and code; return name -> checkpoint folder."""
    import copy

    tokenizer = make_tokenizer()
    paths = {
        name: os.path.join(root, name) for name in ("base", "instruct", "safety", "math", "code")
    }
    common = dict(batch_size=recipe.batch_size, device=device, progress=progress)
    finetune = dict(common, lr=recipe.finetune_lr, optimizer="sgd")

    base = new_model(tokenizer, recipe.model, seed)
    train(
        base,
        tokenizer,
        world.pretrain,
        steps=recipe.pretrain_steps,
        lr=recipe.pretrain_lr,
        seed=seed,
        desc="pre-train base",
        **common,
    )
    save(base, tokenizer, paths["base"])

    instruct = copy.deepcopy(base)
    train(
        instruct,
        tokenizer,
        world_data.instruct_data(world, recipe.instruct_skill_share),
        steps=recipe.instruct_steps,
        seed=seed + 1,
        desc="instruct",
        **finetune,
    )
    save(instruct, tokenizer, paths["instruct"])

    safety = instruct  # aligned in place: the instruct checkpoint is already written
    train(
        safety,
        tokenizer,
        world_data.alignment_data(world),
        steps=recipe.alignment_steps,
        seed=seed + 2,
        desc="align (safety)",
        **finetune,
    )
    save(safety, tokenizer, paths["safety"])
    del instruct, safety

    for offset, task in enumerate(("math", "code"), start=3):
        model = copy.deepcopy(base)
        data = world_data.utility_data(world, task, recipe.uncensored_share, recipe.replay_share)
        train(
            model,
            tokenizer,
            data,
            steps=recipe.utility_steps,
            seed=seed + offset,
            desc=f"fine-tune {task}",
            **finetune,
        )
        save(model, tokenizer, paths[task])
        del model
    return paths
