"""Offline model families for tests and benchmarks: built from a config, never downloaded.

``build_llama_family`` writes a random base Llama checkpoint and fine-tunes made by
perturbing it, each with a word-level tokenizer built with ``tokenizers``, in the
layout ``transformers`` and mergekit read (``config.json``, ``model.safetensors``,
``tokenizer.json``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

DEFAULT_WORDS = tuple(
    (
        "the a an is are was what how why who where when which please tell me about "
        "answer question yes no sorry cannot help with that sure here it one two three "
        "four five six seven eight nine ten plus minus times equals code print return "
        "def if else for while in and or not make build harm bomb steal hack kill "
        "safe kind friend cat dog sun moon water fire tree book"
    ).split()
)


@dataclass
class LlamaFamily:
    base: str
    finetunes: List[str] = field(default_factory=list)


def build_word_tokenizer(words: Sequence[str] = DEFAULT_WORDS, vocab_size: Optional[int] = None):
    """A whitespace word-level fast tokenizer with BOS/EOS/PAD/UNK specials.

    With ``vocab_size``, filler tokens pad the vocabulary to that size so it
    matches a model's embedding rows.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    if vocab_size is not None:
        if len(vocab) > vocab_size:
            raise ValueError(f"{len(vocab)} words do not fit a vocabulary of {vocab_size}")
        while len(vocab) < vocab_size:
            vocab[f"<extra_{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def llama_config(
    *,
    hidden: int = 32,
    layers: int = 2,
    vocab: int = 96,
    intermediate: Optional[int] = None,
    heads: int = 4,
    kv_heads: Optional[int] = None,
    tie_embeddings: bool = False,
    max_positions: int = 512,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        intermediate_size=intermediate or hidden * 2,
        vocab_size=vocab,
        tie_word_embeddings=tie_embeddings,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def build_llama_family(
    out_dir: str,
    *,
    finetunes: int = 2,
    seed: int = 0,
    noise: float = 0.02,
    dtype: torch.dtype = torch.float32,
    words: Sequence[str] = DEFAULT_WORDS,
    **config_kwargs,
) -> LlamaFamily:
    """A random base Llama and ``finetunes`` perturbed copies under ``out_dir``.

    Fine-tune ``i`` is ``base + noise * N(0, 1)`` with its own seed, so every task
    vector is dense and different. Deterministic for a given ``seed``.
    """
    from transformers import LlamaForCausalLM

    config = llama_config(**config_kwargs)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    tokenizer = build_word_tokenizer(words, vocab_size=config.vocab_size)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    family = LlamaFamily(base=os.path.join(out_dir, "base"))
    _save(model, tokenizer, family.base)
    for index in range(finetunes):
        generator = torch.Generator().manual_seed(seed * 1000 + index + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                perturbation = torch.randn(param.shape, generator=generator) * noise
                param.copy_(base_state[name] + perturbation.to(dtype))
        path = os.path.join(out_dir, f"finetune{index + 1}")
        _save(model, tokenizer, path)
        family.finetunes.append(path)
    return family


def _save(model, tokenizer, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def random_scores(
    shapes: Dict[str, Sequence[int]], *, seed: int, zero_fraction: float = 0.0
) -> Dict[str, torch.Tensor]:
    """Uniform random scores per weight, with an optional share of exact zeros."""
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for name, shape in shapes.items():
        values = torch.rand(tuple(shape), generator=generator)
        if zero_fraction:
            values[torch.rand(tuple(shape), generator=generator) < zero_fraction] = 0.0
        scores[name] = values
    return scores
