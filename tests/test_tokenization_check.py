"""The sanity check of tokenized location data (``mergekit_led.location.tokenizer_check``).

The end-to-end case is the transformers override issue 11 found: a Qwen2 checkpoint
whose saved tokenizer ``AutoTokenizer`` replaces by ``Qwen2Tokenizer``, which drops
every answer word outside a byte-level vocabulary.
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest

import mergekit_led
from mergekit_led import load_importance
from mergekit_led.errors import LocateError
from mergekit_led.location.tokenizer_check import answer_check
from mergekit_led.testing import build_family, build_word_tokenizer

ANSWERS = [
    "sure here it is one two three",
    "sorry cannot help with that",
    "the cat and the dog are safe",
]
PAIRS = [{"prompt": "what is one plus two", "response": answer} for answer in ANSWERS]


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_word_tokenizer(vocab_size=128)


def test_answers_in_the_vocabulary_pass_silently(word_tokenizer):
    check = answer_check(word_tokenizer, ANSWERS)
    assert (check.answers, check.answer_tokens) == (3, 19)
    assert check.answer_unk_share == 0.0 and check.empty_answer_share == 0.0
    assert check.answer_chars_recovered == 1.0
    assert check.warnings() == [] and not check.refused()
    assert check.manifest_fields() == {
        "mean_answer_tokens": 6.333,
        "answer_unk_share": 0.0,
        "empty_answer_share": 0.0,
        "answer_chars_recovered": 1.0,
    }


def test_some_unknown_words_warn_without_refusing(word_tokenizer):
    check = answer_check(word_tokenizer, [a + " zebra xylophone quark" for a in ANSWERS])
    assert check.answer_unk_share == 9 / 28  # three unknown words per answer
    assert 0.5 < check.answer_chars_recovered < 0.9
    assert check.warnings()[0] == "32.1% of the answer tokens are the unknown token"
    assert not check.refused()


def test_mostly_unknown_or_empty_answers_are_refused(word_tokenizer):
    unknown = answer_check(word_tokenizer, ["zebra xylophone quark", "zebra"])
    assert unknown.answer_unk_share == 1.0 and unknown.refused()
    empty = answer_check(word_tokenizer, ["", " ", "three"])
    assert empty.empty_answer_share == pytest.approx(2 / 3) and empty.refused()


@pytest.fixture(scope="module")
def qwen2_model(tmp_path_factory):
    return build_family(
        str(tmp_path_factory.mktemp("qwen2")), architecture="qwen2", finetunes=0
    ).base


def test_qwen2_tokenizer_override_is_refused_with_the_numbers(qwen2_model, tmp_path, caplog):
    from transformers import AutoTokenizer

    assert type(AutoTokenizer.from_pretrained(qwen2_model)).__name__ == "Qwen2Tokenizer"
    caplog.set_level(logging.WARNING, logger="mergekit_led")
    with pytest.raises(
        LocateError,
        match=(
            r"The answers of location data <in-memory list> tokenized for .*qwen2.*/base by "
            r"Qwen2Tokenizer \(tokenizer_config.json declares TokenizersBackend\) are mostly "
            r"lost: 33.3% of the answers give no token; decoding the answers' tokens gives "
            r"back only 8.8% of their characters \(3 answers\)\. transformers replaced the "
            r"declared tokenizer class .* Pass --allow-bad-tokenization"
        ),
    ):
        mergekit_led.locate(qwen2_model, PAIRS, str(tmp_path / "refused"), progress=False)
    assert (
        "declares class TokenizersBackend in tokenizer_config.json, but transformers "
        "loaded Qwen2Tokenizer" in caplog.text
    )
    assert not os.path.exists(tmp_path / "refused")

    # with the override flag the store is written, and records the numbers
    out = mergekit_led.locate(
        qwen2_model,
        PAIRS,
        str(tmp_path / "allowed"),
        allow_bad_tokenization=True,
        progress=False,
    )
    dataset = load_importance(out).manifest.dataset
    assert dataset.empty_answer_share == 0.3333 and dataset.answer_chars_recovered == 0.0882
    assert dataset.mean_answer_tokens == 2.0 and dataset.answer_unk_share == 0.0
    assert load_importance(out).manifest.metadata["options"]["allow_bad_tokenization"] is True


def test_the_hinted_fix_loads_the_declared_tokenizer(qwen2_model, tmp_path):
    """A folder with the tokenizer files but no config.json is not overridden."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(qwen2_model, name), folder / name)
    out = mergekit_led.locate(
        qwen2_model, PAIRS, str(tmp_path / "store"), tokenizer=str(folder), progress=False
    )
    dataset = load_importance(out).manifest.dataset
    assert dataset.answer_chars_recovered == 1.0 and dataset.empty_answer_share == 0.0
    assert dataset.mean_answer_tokens == 6.333
