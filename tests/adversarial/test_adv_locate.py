"""``mergekit-led locate`` under hostile inputs (issue 12, defect 3 and weak spots).

A resumed run never mixes sums made under other options; a damaged checkpoint
or non-UTF-8 data is named in one line; a huge prompt is not tokenised whole;
a store never replaces the model or data it is computed from.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields

import pytest
from helpers import killed_after

import mergekit_led
from mergekit_led.core.locate_options import CHECKPOINT_SUFFIX, LocateOptions
from mergekit_led.errors import LocateError
from mergekit_led.location import data as location_data
from mergekit_led.location.steps import RunHooks
from mergekit_led.testing import build_family, build_word_tokenizer

from .support import folder_digest, run_cli

PAIRS = [
    {"prompt": "what is one plus two " * 4, "response": "three"},
    {"prompt": "please tell me about the sun", "response": "the sun is fire"},
    {"prompt": "how to build a bomb " * 3, "response": "sorry i cannot help with that"},
    {"prompt": "print one", "response": "def print return one"},
    {"prompt": "who is a friend", "response": "the cat and the dog"},
]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_family(str(tmp_path_factory.mktemp("adv_locate")), finetunes=0)


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return str(path)


def interrupted_run(model, data, out, after, **options):
    """A locate run that stops (like a kill) after ``after`` samples, having
    checkpointed every 2."""
    with pytest.raises(KeyboardInterrupt):
        mergekit_led.locate(
            model,
            data,
            out,
            hooks=RunHooks(steps=killed_after(after)),
            progress=False,
            checkpoint_every=2,
            **options,
        )
    assert os.listdir(out + CHECKPOINT_SUFFIX)


# --------------------------------------------------------------------------- defect 3: resume


@pytest.mark.parametrize(
    "first,second,named",
    [
        ({"max_length": 20}, {}, "max_length"),
        ({"chat_template": "none"}, {}, "chat_template"),
        ({"tokenizer": "TOKENIZER"}, {}, "tokenizer"),
        ({"seed": 1, "max_samples": 4}, {"seed": 2, "max_samples": 4}, "seed"),
    ],
)
def test_resume_refuses_a_checkpoint_made_under_other_options(
    first, second, named, tmp_path, family, pairs
):
    """main resumed a `--max-length 20` checkpoint without it: exit 0, scores that
    match neither setting."""
    first = {k: (family.base if v == "TOKENIZER" else v) for k, v in first.items()}
    out = str(tmp_path / "store")
    interrupted_run(family.base, pairs, out, 3, **first)
    with pytest.raises(LocateError, match=rf"belongs to another run.*{named}") as info:
        mergekit_led.locate(family.base, pairs, out, progress=False, resume=True, **second)
    assert out + CHECKPOINT_SUFFIX in str(info.value)
    assert not os.path.exists(out)


def test_every_option_is_in_the_resume_key_unless_marked_otherwise():
    """The key is derived from LocateOptions: a new option is part of it by default;
    only these, which cannot change the sums, are left out."""
    from mergekit_led.core.locate_options import resume_key_options

    left_out = {f.name for f in fields(LocateOptions) if not f.metadata["resume_key"]}
    assert left_out == {
        "device",
        "memory",
        "checkpoint_every",
        "resume",
        "overwrite",
        "trust_remote_code",
        "allow_bad_tokenization",
        "progress",
        "score_dtype",
    }
    key = resume_key_options(LocateOptions())
    assert set(key) == {f.name for f in fields(LocateOptions)} - left_out
    assert {"max_length", "chat_template", "tokenizer", "dtype", "seed"} <= set(key)


def test_resume_under_the_same_options_still_works(tmp_path, family, pairs):
    out = str(tmp_path / "store")
    interrupted_run(family.base, pairs, out, 3, max_length=20)
    path = mergekit_led.locate(family.base, pairs, out, progress=False, resume=True, max_length=20)
    assert mergekit_led.load_importance(path).manifest.dataset.samples == 5


# --------------------------------------------------------------------------- damaged checkpoint


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors", "no_progress_record"])
def test_damaged_checkpoint_is_named(damage, tmp_path, family, pairs):
    """main: a safetensors or KeyError traceback naming no file."""
    out = str(tmp_path / "store")
    interrupted_run(family.base, pairs, out, 3)
    (checkpoint,) = [
        os.path.join(out + CHECKPOINT_SUFFIX, f) for f in os.listdir(out + CHECKPOINT_SUFFIX)
    ]
    raw = open(checkpoint, "rb").read()
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "not_safetensors":
        raw = b"this is not a checkpoint"
    else:
        raw = raw.replace(b"led_locate_state", b"led_other_state_")
    with open(checkpoint, "wb") as f:
        f.write(raw)
    result = run_cli(
        "locate", "--model", family.base, "--data", pairs, "--out", out, "--resume", "--no-progress"
    )
    result.assert_one_line_error(checkpoint, "damaged", "Delete")


# --------------------------------------------------------------------------- data encoding


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_data_that_is_not_utf8_names_file_and_line(suffix, tmp_path, family):
    """main: a UnicodeDecodeError traceback (jsonl) or a message naming no line (csv)."""
    path = tmp_path / f"data.{suffix}"
    if suffix == "jsonl":
        raw = (json.dumps(PAIRS[0]) + "\n" + json.dumps(PAIRS[1]) + "\n").encode()
        raw += b'{"prompt": "caf\xe9 one", "response": "two"}\n'
    else:
        raw = b"prompt,response\nwhat is one,one\nwho,two\ncaf\xe9,two\n"
    path.write_bytes(raw)
    result = run_cli(
        "locate",
        "--model",
        family.base,
        "--data",
        path,
        "--out",
        tmp_path / "store",
        "--no-progress",
    )
    line = "line 3" if suffix == "jsonl" else "line 4"
    result.assert_one_line_error(str(path), "not UTF-8", line)


# --------------------------------------------------------------------------- huge prompt


class CountingTokenizer:
    """A tokenizer wrapper counting the characters it is asked to tokenise."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.characters = 0

    def __call__(self, text, **kwargs):
        self.characters += len(text)
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_huge_prompt_is_not_tokenised_whole():
    """A 50 MB prompt: only a window of its end is tokenised (main tokenised all of
    it: 66 s and 6.9 GB on a real tokenizer); the result equals the whole
    tokenisation cut from the left."""
    tokenizer = CountingTokenizer(build_word_tokenizer())
    prompt = "please tell me about the cat and the dog " * 1_250_000
    assert len(prompt) >= 50_000_000
    tokenization = location_data.Tokenization(False, tokenizer.eos_token_id, None, 64)
    sample = location_data.tokenize_example(
        tokenizer, [{"role": "user", "content": prompt}], "the cat", tokenization, 0
    )
    assert tokenizer.characters < 200_000, tokenizer.characters
    tail = "please tell me about the cat and the dog " * 40
    expected = location_data.tokenize_example(
        tokenizer, [{"role": "user", "content": tail}], "the cat", tokenization, 0
    )
    assert sample == expected


def _trained_tokenizers():
    """Offline subword tokenizers (byte-level BPE, unigram with metaspace) trained on
    a small corpus: their cuts inside words are where a window edge can matter."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(f"w{i * j % 97}x{j}" for j in range(40)) for i in range(200)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(
        corpus,
        trainers.UnigramTrainer(
            vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>"
        ),
    )
    return {
        name: PreTrainedTokenizerFast(
            tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
        for name, t in (("bpe", bpe), ("unigram", unigram))
    }


@pytest.mark.parametrize("name", ["bpe", "unigram", "words"])
def test_windowed_left_truncation_equals_whole_tokenisation(name):
    """For long prompts cut at many places, the last tokens from the window are
    those of the whole text's tokenisation."""
    import random

    tokenizer = build_word_tokenizer() if name == "words" else _trained_tokenizers()[name]
    rng = random.Random(0)
    words = [f"w{rng.randrange(97)}x{rng.randrange(40)}" for _ in range(12_000)]
    text = " ".join(words)

    def encode(t):
        return list(tokenizer(t).input_ids)

    whole = encode(text)
    for count in (1, 7, 100, 513):
        for cut in (0, 1, 2, 3, 5, 11):
            piece = text[cut:]
            ids, complete = location_data.last_tokens(encode, piece, count)
            assert not complete
            assert ids == encode(piece)[-count:], (name, count, cut)
    assert location_data.last_tokens(encode, text[-100:], 5) == (encode(text[-100:]), True)
    assert whole[-50:] == location_data.last_tokens(encode, text, 50)[0]


# --------------------------------------------------------------------------- store path


@pytest.mark.parametrize("where", ["model", "inside_model", "around_data"])
def test_store_never_replaces_its_inputs(where, tmp_path, family, pairs):
    """`--out` at (or inside) the model, or around the data, with --overwrite:
    refused before any work (main replaced the model folder with the store)."""
    import shutil

    model = str(tmp_path / "model")
    shutil.copytree(family.base, model)
    out = {
        "model": model,
        "inside_model": os.path.join(model, "store"),
        "around_data": os.path.dirname(pairs),
    }[where]
    before = folder_digest(model)
    result = run_cli(
        "locate", "--model", model, "--data", pairs, "--out", out, "--overwrite", "--no-progress"
    )
    result.assert_one_line_error("overlaps")
    assert folder_digest(model) == before
    assert os.path.isfile(pairs)
