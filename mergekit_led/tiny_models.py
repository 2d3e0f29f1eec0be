"""Tiny models built from a config, offline: the word-level tokenizer and the
Llama config that the demo's toy family and the test families
(``mergekit_led.testing``) share.
"""

from __future__ import annotations

from typing import Optional, Sequence

# The test families' vocabulary (the demo's toy world brings its own).
DEFAULT_WORDS = tuple(
    (
        "the a an is are was what how why who where when which please tell me about "
        "answer question yes no sorry cannot help with that sure here it one two three "
        "four five six seven eight nine ten plus minus times equals code print return "
        "def if else for while in and or not make build harm bomb steal hack kill "
        "safe kind friend cat dog sun moon water fire tree book"
    ).split()
)


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
