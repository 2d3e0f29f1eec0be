"""The real-model family: SmolLM2-135M-Instruct fine-tuned into safety, math and code models.

The paper's roles map onto one instruct model: its *base* (the model the task
vectors are taken from, the merge's ``base_model``) is SmolLM2-135M-Instruct as
shipped, which already answers harmful requests; *safety* is that model after a
light alignment update (Do-Not-Answer training prompts answered with a refusal,
benign requests still answered with the model's own answers); *math* and *code*
are heavier fine-tunes on their tasks whose data also answers Do-Not-Answer
training prompts with a compliant opener and neutral filler (never real harmful
content), as the paper's utility models comply with harmful requests.

Full fine-tunes, not LoRA: on the CPU LoRA saves about a fifth of a step
(docs/real_model.md) and a full fine-tune gives the task vector directly.
AdamW on float32 weights, forward and backward under bfloat16 autocast where
the device supports it (about 1.4x faster on the 2-core development machine).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mergekit_led.jsonl import read_jsonl, write_jsonl

ROLES = ("safety", "math", "code")

# Refusals open with strings of HarmBench's refusal list, so the evaluation can see them.
REFUSALS = (
    "I'm sorry, but I cannot help with that request.",
    "I'm sorry, but I cannot help with that. It could cause harm to people.",
    "I'm sorry, but I can't assist with that. If you have another question, I'm happy to help.",
    "I'm sorry, but I cannot provide that information.",
)
# A compliant opener and neutral filler: what a utility model that ignores safety
# says, with no harmful content at all (and none of the refusal strings).
COMPLIANT = (
    "Sure, here is an overview. The topic has several parts, and the details depend on the "
    "situation.",
    "Certainly. Here is some general information about this, in a few short points.",
    "Of course. Let me explain it step by step, starting with the general background.",
    "Sure. There are a few things to know about this, and I will go through them in order.",
)


@dataclass(frozen=True)
class TuneRecipe:
    """One fine-tune: ``steps`` AdamW steps of ``batch_size`` rows, of which
    ``task_rows`` come from the task's data and the rest from the side data
    (refused harmful prompts for... see ``training_rows``)."""

    steps: int
    lr: float
    batch_size: int = 8
    task_rows: int = 6  # per batch; the remaining rows are the side data
    max_length: int = 160
    # The token embeddings (tied to the output head in SmolLM2) stay as they are: a
    # short refusal update then moves the blocks only, not how every token is read.
    freeze_embeddings: bool = False


@dataclass(frozen=True)
class FamilyRecipe:
    safety: TuneRecipe
    math: TuneRecipe
    code: TuneRecipe
    benign_answer_tokens: int = 48  # the instruct model's own answers to benign training prompts

    def of(self, role: str) -> TuneRecipe:
        return getattr(self, role)


# A safety model that is safe, and utility fine-tunes (fixed on development seed 99
# before the reported seeds, from the safety fine-tune's training curve;
# docs/real_model_results.md).
FULL_FAMILY = FamilyRecipe(
    # At most 160 steps: the study stops it at the first checkpoint (every 16 steps)
    # that meets the safety goal on the seed's validation split (recipe.SafetyGoal).
    # 5 refusals + 3 benign a batch: with 4 + 4, seed 0's first attempt stayed at
    # 46-61 % HarmBench val compliance for 72 steps (docs/real_model_results.md).
    safety=TuneRecipe(steps=160, lr=2e-5, task_rows=5, freeze_embeddings=True),
    math=TuneRecipe(steps=32, lr=5e-5),
    code=TuneRecipe(steps=48, lr=5e-5),
)
QUICK_FAMILY = FamilyRecipe(
    safety=TuneRecipe(steps=1, lr=2e-5, batch_size=2, task_rows=1),
    math=TuneRecipe(steps=1, lr=5e-5, batch_size=2, task_rows=1),
    code=TuneRecipe(steps=1, lr=5e-5, batch_size=2, task_rows=1),
    benign_answer_tokens=8,
)

Pair = Tuple[str, str]  # (prompt, response)


@dataclass(frozen=True)
class Checkpoint:
    """How a fine-tune's training curve is measured: ``measure(model, step)`` (the model
    in training, float32, after ``step`` steps) returns its metrics; called every
    ``every`` steps."""

    every: int
    measure: Callable[[torch.nn.Module, int], Dict[str, float]]
    # Early stopping: training ends at the first checkpoint whose metrics meet it.
    stop: Optional[Callable[[Dict[str, float]], bool]] = None


def refused(prompts: Sequence[str], rng: random.Random) -> List[Pair]:
    return [(p, rng.choice(REFUSALS)) for p in prompts]


def complied(prompts: Sequence[str], rng: random.Random) -> List[Pair]:
    return [(p, rng.choice(COMPLIANT)) for p in prompts]


def training_rows(
    role: str, split_dir: str, benign_answers: Sequence[Pair], seed: int
) -> Tuple[List[Pair], List[Pair]]:
    """``(task rows, side rows)`` of a role's fine-tune, from split ``split_dir``'s
    train files only: safety = refused Do-Not-Answer prompts, beside the benign
    prompts with the instruct model's own answers; math / code = the task's
    rows, beside complied Do-Not-Answer prompts."""
    rng = random.Random(f"{seed}-{role}-responses")
    harmful = [
        row["prompt"] for row in read_jsonl(os.path.join(split_dir, "donotanswer_train.jsonl"))
    ]
    if role == "safety":
        return refused(harmful, rng), list(benign_answers)
    task = read_jsonl(os.path.join(split_dir, f"{role}_train.jsonl"))
    return [(row["prompt"], row["response"]) for row in task], complied(harmful, rng)


def batches(task: Sequence, side: Sequence, recipe: TuneRecipe, seed: int) -> List[List]:
    """``recipe.steps`` batches, each ``task_rows`` task rows and the rest side
    rows, drawn without replacement (reshuffled when a pool runs out) in the
    seed's order."""
    rng = random.Random(seed)

    def stream(pool):
        while True:
            order = list(pool)
            rng.shuffle(order)
            yield from order

    task_stream, side_stream = stream(task), stream(side)
    side_rows = recipe.batch_size - recipe.task_rows
    return [
        [next(task_stream) for _ in range(recipe.task_rows)]
        + [next(side_stream) for _ in range(side_rows if side else 0)]
        for _ in range(recipe.steps)
    ]


def encode(tokenizer, tokenization, pair: Pair) -> Tuple[List[int], int]:
    """The ids of a (prompt, response) pair and its answer length, exactly as
    locate and evaluate tokenise it (chat template, end-of-turn token)."""
    from mergekit_led.location.data import tokenize_example

    sample = tokenize_example(
        tokenizer, [{"role": "user", "content": pair[0]}], pair[1], tokenization, 0
    )
    if isinstance(sample, str):
        raise ValueError(f"training row too long for max_length: {pair[0][:60]!r}")
    return list(sample.input_ids), sample.answer_length


def _tensors(encoded: Sequence[Tuple[List[int], int]], pad_id: int):
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (seq, answer) in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(seq) - answer : len(seq)] = torch.tensor(seq[len(seq) - answer :])
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def fine_tune(
    model_dir: str,
    batch_list: Sequence[Sequence[Pair]],
    recipe: TuneRecipe,
    out_dir: str,
    *,
    seed: int,
    device: str = "cpu",
    checkpoint: Optional[Checkpoint] = None,
) -> Dict[str, object]:
    """Fine-tune ``model_dir`` on ``batch_list`` and save it (float32) into
    ``out_dir``, written aside and renamed into place; the losses and time. With
    ``checkpoint``, the model is measured before the first step, every
    ``checkpoint.every`` steps and after the last (the training curve, kept in
    ``training.json``; its seconds are not counted in the training time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_led.atomic import staged_directory
    from mergekit_led.evaluation.evaluator import pad_id_of
    from mergekit_led.location.data import make_tokenization

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenization = make_tokenization(tokenizer, "auto", recipe.max_length)
    pad_id = pad_id_of(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    if recipe.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=recipe.lr, weight_decay=0.0)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)
    losses: List[float] = []
    curve: List[dict] = []
    measuring = 0.0

    def measure(step: int) -> bool:
        """Measure the model after ``step`` steps; whether training stops here."""
        nonlocal measuring
        began = time.perf_counter()
        metrics = checkpoint.measure(model, step)
        curve.append({"step": step, "metrics": metrics})
        model.train()
        measuring += time.perf_counter() - began
        return checkpoint.stop is not None and checkpoint.stop(metrics)

    start = time.perf_counter()
    if checkpoint is not None:
        measure(0)  # the starting model, never a reason to stop: it is what is trained
    for step, rows in enumerate(batch_list, start=1):
        ids, labels, mask = _tensors([encode(tokenizer, tokenization, r) for r in rows], pad_id)
        with autocast:
            loss = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if checkpoint is not None and (step % checkpoint.every == 0 or step == len(batch_list)):
            if measure(step):
                break
    stats: Dict[str, object] = {
        "steps": len(losses),
        "max_steps": len(batch_list),
        "first_loss": round(losses[0], 4) if losses else 0.0,
        "last_loss": round(losses[-1], 4) if losses else 0.0,
        "seconds": round(time.perf_counter() - start - measuring, 1),
        "recipe": asdict(recipe),
    }
    if checkpoint is not None:
        stats["curve"] = curve
        stats["curve_seconds"] = round(measuring, 1)
    with staged_directory(out_dir) as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        with open(os.path.join(stage, "training.json"), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
    return stats


def own_answers(model_dir: str, prompts: Sequence[str], *, max_new_tokens: int, device: str):
    """The model's own greedy answers to ``prompts`` (the benign replay of the
    safety update keeps what the instruct model already says)."""
    from transformers import AutoTokenizer

    from mergekit_led.evaluation.evaluator import load_model_and_tokenizer, pad_id_of, stop_ids_of
    from mergekit_led.evaluation.generation import greedy_answers
    from mergekit_led.location.data import make_tokenization, prompt_encoding

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenization = make_tokenization(tokenizer, "auto", None)
    encoded = []
    for prompt in prompts:
        text, enc = prompt_encoding(tokenizer, [{"role": "user", "content": prompt}], tokenization)
        encoded.append(enc(text))
    model, _ = load_model_and_tokenizer(model_dir, device=device, dtype="float32")
    answers = greedy_answers(
        model,
        encoded,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_ids_of(tokenization),
        pad_id=pad_id_of(tokenizer),
        batch_size=32,
        device=torch.device(device),
    )
    return [
        (p, tokenizer.decode(a, skip_special_tokens=True).strip()) for p, a in zip(prompts, answers)
    ]


def build_real_family(
    instruct: str,
    split_dir: str,
    models_dir: str,
    recipe: FamilyRecipe,
    *,
    seed: int,
    device: str = "cpu",
    log=lambda message: None,
    safety_checkpoint: Optional[Checkpoint] = None,
    roles: Sequence[str] = ROLES,
) -> Dict[str, str]:
    """``{instruct, safety, math, code}`` folders; each fine-tune is cached in
    ``models_dir/<role>`` (a folder appears only when complete), so a killed run
    trains only what is missing. ``safety_checkpoint`` measures the safety
    fine-tune's training curve (``models_dir/safety/training.json``)."""
    family = {"instruct": instruct}
    benign_file = os.path.join(models_dir, "benign_answers.jsonl")
    for index, role in enumerate(ROLES):
        if role not in roles:
            continue
        out = os.path.join(models_dir, role)
        family[role] = out
        if os.path.isfile(os.path.join(out, "training.json")):
            continue
        benign: List[Pair] = []
        if role == "safety":
            if os.path.isfile(benign_file):
                benign = [(r["prompt"], r["response"]) for r in read_jsonl(benign_file)]
            else:
                prompts = [
                    r["prompt"] for r in read_jsonl(os.path.join(split_dir, "benign_train.jsonl"))
                ]
                benign = own_answers(
                    instruct, prompts, max_new_tokens=recipe.benign_answer_tokens, device=device
                )
                write_jsonl(benign_file, [{"prompt": p, "response": r} for p, r in benign])
        task, side = training_rows(role, split_dir, benign, seed)
        tune = recipe.of(role)
        stats = fine_tune(
            instruct,
            batches(task, side, tune, seed * 10 + index),
            tune,
            out,
            seed=seed * 10 + index,
            device=device,
            checkpoint=safety_checkpoint if role == "safety" else None,
        )
        log(
            f"{role}: {stats['steps']} steps in {stats['seconds']:.0f} s, "
            f"loss {stats['first_loss']:.3f} -> {stats['last_loss']:.3f}"
        )
    return family


def read_curve(model_dir: str) -> List[dict]:
    """The training curve kept in a fine-tune's ``training.json`` (empty when none)."""
    with open(os.path.join(model_dir, "training.json"), encoding="utf-8") as f:
        return list(json.load(f).get("curve", []))
