"""Offline model families for tests and benchmarks: built from a config, never downloaded.

``build_family`` is the one entry point. Without ``architecture`` it writes a
random base Llama (shaped by ``llama_config``'s options) and fine-tunes made by
perturbing it; with an ``architecture`` of ``FAMILY_CONFIGS`` (Mistral, Qwen3,
Gemma2, Phi-3, GPT-2, Mixtral, Qwen3-MoE, ...) it does the same for that
architecture's tiny config. Every checkpoint has a word-level tokenizer, in the
layout ``transformers`` and mergekit read (``config.json``, ``model.safetensors``,
``tokenizer.json``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from mergekit_led.tiny_models import DEFAULT_WORDS, build_word_tokenizer, llama_config


@dataclass
class ModelFamily:
    base: str
    finetunes: List[str] = field(default_factory=list)
    architecture: Optional[str] = None  # a key of FAMILY_CONFIGS; None: the configurable Llama


def build_family(
    out_dir: str,
    *,
    architecture: Optional[str] = None,
    finetunes: int = 2,
    seed: int = 0,
    noise: float = 0.02,
    dtype: torch.dtype = torch.float32,
    words: Sequence[str] = DEFAULT_WORDS,
    **llama_options,
) -> ModelFamily:
    """A random base model and ``finetunes`` perturbed copies under ``out_dir``
    (``base/``, ``finetune1/``, ...). Deterministic for a given ``seed``.

    Without ``architecture``: a Llama shaped by ``llama_options`` (``llama_config``'s
    keywords), in ``dtype``, with a tokenizer of ``words``; fine-tune ``i`` is
    ``base + noise * N(0, 1)`` with its own seed, so every task vector is dense and
    different. With ``architecture`` (a key of ``FAMILY_CONFIGS``): that family's
    tiny config, see ``_build_architecture``.
    """
    if architecture is not None:
        if llama_options or dtype != torch.float32 or tuple(words) != DEFAULT_WORDS:
            raise TypeError("llama_options, dtype and words shape the Llama family only")
        return _build_architecture(
            architecture, out_dir, finetunes=finetunes, seed=seed, noise=noise
        )
    from transformers import LlamaForCausalLM

    config = llama_config(**llama_options)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    tokenizer = build_word_tokenizer(words, vocab_size=config.vocab_size)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    family = ModelFamily(base=os.path.join(out_dir, "base"))
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


def synthetic_scores(
    shapes: Dict[str, Sequence[int]], *, seed: int, zero_fraction: float = 0.0
) -> Dict[str, torch.Tensor]:
    """Uniform random scores per weight, with an optional share of exact zeros: stores
    for tests and benchmarks (``--score random`` is ``location.scores.random_scores``)."""
    generator = torch.Generator().manual_seed(seed)
    scores = {}
    for name, shape in shapes.items():
        values = torch.rand(tuple(shape), generator=generator)
        if zero_fraction:
            values[torch.rand(tuple(shape), generator=generator) < zero_fraction] = 0.0
        scores[name] = values
    return scores


# --------------------------------------------------------------------------- other families

TINY_VOCAB = 128  # fits the word tokenizer (DEFAULT_WORDS and its specials)

_DECODER: Dict[str, Any] = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)
_MOE: Dict[str, Any] = dict(_DECODER, num_hidden_layers=1)
_GPT: Dict[str, Any] = dict(
    vocab_size=TINY_VOCAB,
    n_embd=16,
    n_layer=2,
    n_head=2,
    n_positions=64,
    bos_token_id=1,
    eos_token_id=2,
)
_FALCON: Dict[str, Any] = dict(
    vocab_size=TINY_VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    new_decoder_architecture=True,
    num_kv_heads=1,
    bos_token_id=1,
    eos_token_id=2,
)

# family -> (transformers config class, its arguments): tiny configs (hidden 16, one or two
# layers, four experts) that build in well under a second on a CPU. Notes:
# - Gemma, Qwen3 and GLM families default to a head_dim of 128-256: set to hidden / heads.
# - transformers 5 saves MoE experts per expert (the checkpoint layout) and fuses them
#   when loading; mergekit 0.1.5 asks a merge method for the fused tensors.
# - "gpt_neox", "cohere" (no q/k norm) and "falcon_tied" build, but mergekit 0.1.5 cannot
#   merge them: its architecture files require tensors transformers 5 does not save.
# - "qwen2": AutoTokenizer swaps this family's saved word tokenizer for Qwen2Tokenizer,
#   which drops every answer (a transformers override; locate refuses such data).
FAMILY_CONFIGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(_DECODER)),
    "mistral": ("MistralConfig", dict(_DECODER, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_DECODER)),
    "qwen3": ("Qwen3Config", dict(_DECODER, head_dim=8)),
    "gemma": ("GemmaConfig", dict(_DECODER, head_dim=8)),
    "gemma2": (
        "Gemma2Config",
        dict(_DECODER, head_dim=8, query_pre_attn_scalar=8, sliding_window=32),
    ),
    "gemma3_text": (
        "Gemma3TextConfig",
        dict(_DECODER, head_dim=8, query_pre_attn_scalar=8, sliding_window=32),
    ),
    "phi3": ("Phi3Config", dict(_DECODER, original_max_position_embeddings=64)),
    "gpt2": ("GPT2Config", dict(_GPT)),
    "olmo2": ("Olmo2Config", dict(_DECODER)),
    "stablelm": ("StableLmConfig", dict(_DECODER)),
    "starcoder2": ("Starcoder2Config", dict(_DECODER)),
    "granite": ("GraniteConfig", dict(_DECODER)),
    "glm4": ("Glm4Config", dict(_DECODER, head_dim=8)),
    "cohere_qk_norm": ("CohereConfig", dict(_DECODER, use_qk_norm=True)),
    "cohere2": ("Cohere2Config", dict(_DECODER, sliding_window=32)),
    "falcon": ("FalconConfig", dict(_FALCON, tie_word_embeddings=False)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(_GPT)),
    "phi": ("PhiConfig", dict(_DECODER)),
    "arcee": ("ArceeConfig", dict(_DECODER)),
    "apertus": ("ApertusConfig", dict(_DECODER)),  # mergekit merges 4 activation buffers
    "lfm2": ("Lfm2Config", dict(_DECODER, layer_types=["conv", "full_attention"])),
    "mamba": (
        "MambaConfig",
        dict(
            vocab_size=TINY_VOCAB,
            hidden_size=16,
            state_size=4,
            num_hidden_layers=2,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        ),
    ),
    # MoE
    "mixtral": ("MixtralConfig", dict(_MOE, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(
            _MOE,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            decoder_sparse_step=1,
        ),
    ),
    "olmoe": ("OlmoeConfig", dict(_MOE, num_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(
            _MOE,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
    ),
    "phimoe": ("PhimoeConfig", dict(_MOE, num_local_experts=4, num_experts_per_tok=2)),
    "glm4_moe": (
        "Glm4MoeConfig",
        dict(
            _MOE,
            num_hidden_layers=2,
            head_dim=8,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
        ),
    ),
    "afmoe": (
        "AfmoeConfig",
        dict(
            _MOE,
            num_hidden_layers=2,
            head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            num_dense_layers=1,
            n_group=1,
            topk_group=1,
        ),
    ),
    "granitemoehybrid": (
        "GraniteMoeHybridConfig",
        dict(
            _MOE,
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=32,
            layer_types=["attention"],
            mamba_n_heads=4,
            mamba_d_head=8,
        ),
    ),
    # mergekit 0.1.5 cannot merge these (see above)
    "gpt_neox": ("GPTNeoXConfig", dict(_DECODER)),
    "cohere": ("CohereConfig", dict(_DECODER)),
    "falcon_tied": ("FalconConfig", dict(_FALCON)),
}


def family_config(name: str):
    """The tiny transformers config of family ``name`` (a key of ``FAMILY_CONFIGS``)."""
    import transformers

    if name not in FAMILY_CONFIGS:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(FAMILY_CONFIGS)}")
    class_name, kwargs = FAMILY_CONFIGS[name]
    return getattr(transformers, class_name)(**kwargs)


def _build_architecture(
    name: str, out_dir: str, *, finetunes: int, seed: int, noise: float
) -> ModelFamily:
    """A random base model of family ``name`` and ``finetunes`` perturbed copies.

    The base is ``from_config`` plus ``noise``-sized noise on every parameter (some
    families initialise norms or experts to constants). Fine-tune ``i`` adds its own
    seeded ``noise * N(0, 1)`` to every floating tensor of the saved checkpoint, so it
    keeps the checkpoint's names and layout (per-expert tensors for MoE models), as a
    fine-tune saved by transformers would. Deterministic for a given ``seed``.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    config = family_config(name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * noise)
    family = ModelFamily(os.path.join(out_dir, "base"), architecture=name)
    _save(model, build_word_tokenizer(vocab_size=config.vocab_size), family.base)
    base_file = os.path.join(family.base, "model.safetensors")
    tensors = load_file(base_file)
    for index in range(finetunes):
        path = os.path.join(out_dir, f"finetune{index + 1}")
        shutil.copytree(family.base, path)
        generator = torch.Generator().manual_seed(seed * 1000 + index + 1)
        perturbed = {
            key: tensor + torch.randn(tensor.shape, generator=generator).to(tensor.dtype) * noise
            if tensor.is_floating_point()
            else tensor
            for key, tensor in tensors.items()
        }
        save_file(perturbed, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        family.finetunes.append(path)
    return family
