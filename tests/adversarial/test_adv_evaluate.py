"""Issue 29: hostile EVAL.yml files and output folders given to ``mergekit-led evaluate``.

Generation is bounded (a documented cap, then the model's context); integers
are integers (``true`` is not 1); a misspelt key gets a "did you mean"; the
output folder is recognised by a marker only ``evaluate`` writes, and a killed
evaluation's folder is written again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mergekit_led.jsonl import write_jsonl

from .support import folder_digest, run_cli


def _rows(count, *, responses=False, words=6):
    from mergekit_led.testing import DEFAULT_WORDS

    rows = []
    for i in range(count):
        row = {"prompt": " ".join(DEFAULT_WORDS[(i + k) % 40] for k in range(words))}
        if responses:
            row["response"] = DEFAULT_WORDS[i % 40]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    """A tiny Llama whose context is 24 positions."""
    from mergekit_led.testing import build_family

    root = tmp_path_factory.mktemp("short_context")
    return build_family(str(root), finetunes=1, seed=5, noise=0.5, max_positions=24).base


def _spec(tmp_path, text: str) -> str:
    write_jsonl(tmp_path / "h.jsonl", _rows(4))
    write_jsonl(tmp_path / "t.jsonl", _rows(3, responses=True))
    path = tmp_path / "EVAL.yml"
    path.write_text(
        text.replace("H", str(tmp_path / "h.jsonl")).replace("T", str(tmp_path / "t.jsonl"))
    )
    return str(path)


def _evaluate(model, spec, out, *extra):
    return run_cli("evaluate", model, spec, "--out", out, "--device", "cpu", "--quiet", *extra)


@pytest.mark.parametrize(
    "text,fragments",
    [
        # main: a billion new tokens on a model that never stops generated for minutes
        (
            "harmful: {data: H, max_new_tokens: 1000000000}\n",
            ["harmful.max_new_tokens", "less than or equal to 8192"],
        ),
        ("tasks: {t: {data: T, max_new_tokens: 9000}}\n", ["tasks.t.max_new_tokens", "8192"]),
        # main: YAML's true became the integer 1
        ("harmful: {data: H, limit: true}\n", ["harmful.limit", "valid integer"]),
        ("harmful: {data: H, max_new_tokens: true}\n", ["harmful.max_new_tokens", "valid integer"]),
        ("harmful: {data: H}\ngeneration: {batch_size: true}\n", ["generation.batch_size"]),
        ("harmful: {data: H, limit: 2.5}\n", ["harmful.limit", "valid integer"]),
        # main: the key was named, with no suggestion (GRID.yml's errors have one)
        (
            "harmful: {data: H, max_new_token: 5}\n",
            ["harmful.max_new_token", "did you mean 'max_new_tokens'?"],
        ),
        (
            "tasks: {t: {data: T, anwser: last_number}}\n",
            ["tasks.t.anwser", "did you mean 'answer'?"],
        ),
        ("harmfull: {data: H}\n", ["harmfull", "did you mean 'harmful'?"]),
        (
            "harmful: {data: H}\ngeneration: {chat_templat: none}\n",
            ["did you mean 'chat_template'?"],
        ),
    ],
    ids=[
        "billion-new-tokens",
        "over-the-cap",
        "limit-true",
        "max-new-tokens-true",
        "batch-size-true",
        "limit-fraction",
        "typo-max-new-token",
        "typo-anwser",
        "typo-harmfull",
        "typo-chat-templat",
    ],
)
def test_bad_spec_values_are_one_line_errors_before_the_model_loads(
    text, fragments, tmp_path, llama_family
):
    spec = _spec(tmp_path, text)
    result = _evaluate(llama_family.base, spec, tmp_path / "out")
    result.assert_one_line_error(f"Evaluation spec {spec}", *fragments)
    assert not (tmp_path / "out").exists()


def test_generation_is_bounded_by_the_models_context(tmp_path, short_context_model):
    """main: max_new_tokens was used as given, far past the model's 24 positions."""
    spec = _spec(
        tmp_path, "harmful: {data: H, max_new_tokens: 3000}\ngeneration: {chat_template: none}\n"
    )
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"answers cut at \d+ new tokens, not max_new_tokens 3000"):
        result = _evaluate(short_context_model, spec, out)
    assert result.exit_code == 0, result.text
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(short_context_model)
    for row in map(json.loads, (out / "answers.jsonl").read_text().splitlines()):
        prompt = tokenizer(row["prompt"])["input_ids"]
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        assert len(prompt) + len(answer) <= 24


def test_a_prompt_longer_than_the_context_is_a_one_line_error(tmp_path, short_context_model):
    write_jsonl(tmp_path / "long.jsonl", _rows(2, words=30))
    spec = tmp_path / "EVAL.yml"
    spec.write_text(
        f"harmful: {{data: {tmp_path / 'long.jsonl'}}}\ngeneration: {{chat_template: none}}\n"
    )
    result = _evaluate(short_context_model, spec, tmp_path / "out")
    result.assert_one_line_error("the model's context is 24", "generation.max_length")
    assert not (tmp_path / "out").exists()


def test_a_folder_of_the_users_own_eval_files_is_never_replaced(tmp_path, llama_family):
    """main: a folder holding any eval.json was taken for an earlier evaluation's,
    and the user's eval.json, summary.md and answers.jsonl were replaced (exit 0)."""
    spec = _spec(
        tmp_path, "harmful: {data: H, max_new_tokens: 2}\ngeneration: {chat_template: none}\n"
    )
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("eval.json", "summary.md", "answers.jsonl"):
        (out / name).write_text(f"the user's own {name}\n")
    before = folder_digest(out)
    result = _evaluate(llama_family.base, spec, out)
    result.assert_one_line_error(
        str(out), "no .mergekit-led-evaluation", "not an earlier evaluation's folder"
    )
    assert folder_digest(out) == before


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _killed_temporary(out, name: str) -> str:
    from mergekit_led.atomic import _host

    path = out / f".{name}.partial-0123abcd-{_dead_pid()}@{_host()}.tmp"
    path.write_text("half")
    return path.name


@pytest.mark.parametrize("stage", ["marker", "answers"])
def test_a_killed_evaluations_folder_is_written_again(stage, tmp_path, llama_family):
    """main: a kill while writing left a temporary file and no eval.json, and the
    folder was refused as "not an earlier evaluation's folder"."""
    from mergekit_led.evaluation.eval_report import OUTPUT_MARKER, OUTPUT_MARKER_TEXT

    spec = _spec(
        tmp_path, "harmful: {data: H, max_new_tokens: 2}\ngeneration: {chat_template: none}\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    if stage == "marker":  # killed while writing the marker, the first file
        left = _killed_temporary(out, OUTPUT_MARKER)
    else:  # killed after the marker, while writing answers.jsonl
        (out / OUTPUT_MARKER).write_text(OUTPUT_MARKER_TEXT)
        left = _killed_temporary(out, "answers.jsonl")
    result = _evaluate(llama_family.base, spec, out)
    assert result.exit_code == 0, result.text
    names = set(os.listdir(out))
    assert names == {OUTPUT_MARKER, "eval.json", "answers.jsonl", "summary.md"}, names
    assert left not in names
    assert json.loads((out / "eval.json").read_text())["harmful_count"] == 4
    # the marker is what counts: its name with other text is not evaluate's
    (out / OUTPUT_MARKER).write_text("mine\n")
    refused = _evaluate(llama_family.base, spec, out)
    refused.assert_one_line_error("not an earlier evaluation's folder")


def test_the_spec_cap_is_documented():
    from pathlib import Path

    from mergekit_led.evaluation.spec import MAX_NEW_TOKENS

    doc = (Path(__file__).parents[2] / "docs" / "evaluate.md").read_text()
    assert f"{MAX_NEW_TOKENS:,}" in doc or str(MAX_NEW_TOKENS) in doc
