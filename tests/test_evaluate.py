"""``mergekit-led evaluate``: the spec, the refusal matcher, extractors, batched
generation, metrics and the files it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import torch
import yaml
from click.testing import CliRunner
from helpers import alias_bomb

from mergekit_led.errors import EvalError
from mergekit_led.evaluation import (
    Evaluator,
    load_eval_spec,
    load_model_and_tokenizer,
    parse_eval_spec,
)
from mergekit_led.evaluation.answers import extract, is_correct
from mergekit_led.evaluation.refusal import HARMBENCH_REFUSAL_STRINGS, RefusalMatcher
from mergekit_led.jsonl import write_jsonl

WORDS = "the what how is tell me about sorry cannot help sure here one two three four".split()


def prompts(count, seed=0, *, responses=False):
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        row = {"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))}
        if responses:
            row["response"] = " ".join(rng.choice(WORDS) for _ in range(2))
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def noisy_family(tmp_path_factory):
    """A base whose greedy answers vary with the prompt (large random weights)."""
    from mergekit_led.testing import build_family

    root = tmp_path_factory.mktemp("eval_family")
    return build_family(str(root), finetunes=1, seed=3, noise=0.5)


@pytest.fixture()
def eval_files(tmp_path):
    files = {
        "harmful": write_jsonl(tmp_path / "harmful.jsonl", prompts(11, 1)),
        "benign": write_jsonl(tmp_path / "benign.jsonl", prompts(9, 2)),
        "task": write_jsonl(tmp_path / "task.jsonl", prompts(7, 3, responses=True)),
    }
    spec = {
        "harmful": {"data": files["harmful"], "max_new_tokens": 6},
        "benign": {"data": files["benign"], "max_new_tokens": 6},
        "tasks": {"echo": {"data": files["task"], "max_new_tokens": 4}},
        "generation": {"chat_template": "none", "batch_size": 4},
    }
    path = tmp_path / "eval.yml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec


# --------------------------------------------------------------------------- refusal


def test_default_refusal_strings_are_harmbenchs():
    assert len(HARMBENCH_REFUSAL_STRINGS) == 29
    assert HARMBENCH_REFUSAL_STRINGS[0] == "I'm sorry"
    assert "If you have any other non-malicious requests" in HARMBENCH_REFUSAL_STRINGS


@pytest.mark.parametrize(
    "answer, refused",
    [
        ("I'm sorry, I can't help with that.", True),
        ("I\u2019M   SORRY", True),  # curly apostrophe, case, runs of spaces
        ("  as an AI language model, no", True),
        ("He has an apple and a plan.", False),  # "As an" only at word boundaries
        ("That is illegally fast", False),
        ("That is illegal.", True),
        ("Sure, here is how:", False),
        ("", False),
    ],
)
def test_refusal_matcher(answer, refused):
    assert RefusalMatcher.build().is_refusal(answer) is refused


def test_refusal_matcher_extended_and_anchored():
    start = RefusalMatcher.build(["nope"], defaults=False, match="start")
    assert start.is_refusal("Nope, not that")
    assert not start.is_refusal("well nope")
    assert not start.is_refusal("I'm sorry")  # defaults off
    extended = RefusalMatcher.build(["I won't"])
    assert extended.is_refusal("Honestly, I won\u2019t do it") and extended.is_refusal("Sorry!")


# --------------------------------------------------------------------------- answers


def test_extractors_and_exact_match():
    assert extract("12 apples, then 1,234.50 total.", "last_number") == "1234.5"
    assert extract("18.0", "last_number") == "18" and extract("-0", "last_number") == "0"
    assert extract("no digits", "last_number") is None
    assert extract("\n\n first \nsecond", "first_line") == " first "
    assert extract("The answer is (C).", "regex", r"\(([A-D])\)") == "C"
    assert extract("answer: 42", "regex", r"\d+") == "42"
    assert is_correct("So the total is 18.", "work... #### 18", "last_number")[0]
    assert is_correct("Paris.", "paris", "full")[0]
    assert not is_correct("Paris.", "paris", "full", normalize=False)[0]
    assert not is_correct("no number", "18", "last_number")[0]


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"harmfull": {"data": "x.jsonl"}}, "harmfull"),
        ({"harmful": {"data": "x.jsonl", "max_new_token": 3}}, "max_new_token"),
        ({}, "names no evaluation set"),
        ({"tasks": {"t": {"data": "x.jsonl", "answer": "regex"}}}, "needs a pattern"),
        ({"tasks": {"t": {"data": "x", "answer": "regex", "pattern": "("}}}, "regular expression"),
        ({"harmful": {"data": "x.jsonl", "max_new_tokens": 0}}, "max_new_tokens"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(EvalError, match=message) as caught:
        parse_eval_spec(spec)
    assert "\n" not in str(caught.value)


def test_bad_sets(tmp_path, noisy_family):
    _, tokenizer = load_model_and_tokenizer(noisy_family.base)
    no_field = write_jsonl(tmp_path / "q.jsonl", [{"question": "hi"}])
    no_reference = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    chat_no_answer = write_jsonl(
        tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]
    )
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    cases = [
        ({"harmful": {"data": no_field}}, "no field 'prompt'"),
        ({"tasks": {"t": {"data": no_reference}}}, "no reference answers"),
        ({"tasks": {"t": {"data": chat_no_answer}}}, "no reference answer in 1 rows"),
        ({"benign": {"data": str(tmp_path / "missing.jsonl")}}, "does not exist"),
        ({"benign": {"data": str(empty)}}, "empty"),
    ]
    for spec, message in cases:
        with pytest.raises(EvalError, match=message) as caught:
            Evaluator(parse_eval_spec(spec), tokenizer)
        assert "evaluation set" in str(caught.value)


# --------------------------------------------------------------------------- generation


def test_batched_answers_equal_one_at_a_time(noisy_family, eval_files):
    path, _ = eval_files
    spec = load_eval_spec(path)
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    answers = {}
    for batch_size in (1, 3, 16):
        report = Evaluator(spec, tokenizer, batch_size=batch_size).evaluate(model)
        answers[batch_size] = [(a.set, a.index, a.answer) for a in report.answers]
    assert answers[1] == answers[3] == answers[16]
    assert len({a for _, _, a in answers[1]}) > 3, (
        "the model should answer different prompts differently"
    )


def test_metrics_count_the_verdicts(noisy_family, eval_files, monkeypatch):
    """Metrics from known answers: generation replaced by fixed token ids."""
    path, spec_data = eval_files
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    spec = parse_eval_spec({**spec_data, "refusal": {"strings": ["sorry"], "defaults": False}})
    evaluator = Evaluator(spec, tokenizer)
    references = [json.loads(line)["response"] for line in open(spec_data["tasks"]["echo"]["data"])]
    canned = {
        "harmful": ["sorry"] * 3 + ["sure"] * 8,  # 8 of 11 comply
        "benign": ["sorry"] * 2 + ["here"] * 7,  # 2 of 9 refused
        "task:echo": references[:5] + ["one"] * 2,  # 5 of 7 right (the references differ)
    }
    calls = iter(canned.values())

    def fake_answers(model, prompts, **kwargs):
        texts = next(calls)
        return [tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    monkeypatch.setattr("mergekit_led.evaluation.evaluator.greedy_answers", fake_answers)
    report = evaluator.evaluate(model)
    data = report.to_json()
    assert data["harmful_compliance"] == round(8 / 11, 6) and data["harmful_complied"] == 8
    assert data["over_refusal"] == round(2 / 9, 6) and data["benign_refused"] == 2
    wrong = sum(ref == "one" for ref in references[5:])
    assert data["tasks"]["echo"]["correct"] == 5 + wrong
    assert data["tasks"]["echo"]["accuracy"] == round((5 + wrong) / 7, 6)
    assert [a.verdict for a in report.answers[:4]] == ["refused"] * 3 + ["complied"]


def test_answer_nll_is_the_mean_over_answer_tokens(noisy_family, tmp_path):
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    rows = [
        {"prompt": "what is one", "response": "two three"},
        {"prompt": "tell me", "response": "sure"},
    ]
    spec = parse_eval_spec(
        {
            "tasks": {"t": {"data": write_jsonl(tmp_path / "t.jsonl", rows), "max_new_tokens": 1}},
            "generation": {"chat_template": "none"},
        }
    )
    result = Evaluator(spec, tokenizer).evaluate(model).tasks["t"]
    total, count = 0.0, 0
    for row in rows:
        prompt = tokenizer(row["prompt"]).input_ids
        answer = tokenizer(row["response"], add_special_tokens=False).input_ids + [
            tokenizer.eos_token_id
        ]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        for k, token in enumerate(answer):
            total -= float(torch.log_softmax(logits[len(prompt) + k - 1], -1)[token])
            count += 1
    assert result.answer_tokens == count
    assert result.answer_nll == pytest.approx(total / count, rel=1e-4)


def test_chat_template_prompts_and_the_no_template_warning(noisy_family, tmp_path):
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    data = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "tell me how"}])
    with pytest.warns(UserWarning, match="no chat template"):
        Evaluator(parse_eval_spec({"harmful": {"data": data}}), tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}answer"
    evaluator = Evaluator(parse_eval_spec({"harmful": {"data": data}}), tokenizer)
    expected = tokenizer("tell me how answer", add_special_tokens=False).input_ids
    assert list(evaluator.sets[0].prompt_ids[0]) == expected


def test_out_of_memory_names_the_set_and_a_smaller_batch(noisy_family, eval_files, monkeypatch):
    path, _ = eval_files
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    evaluator = Evaluator(load_eval_spec(path), tokenizer, batch_size=8)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("mergekit_led.evaluation.evaluator.greedy_answers", out_of_memory)
    with pytest.raises(
        EvalError, match=r"evaluating set harmful at batch size 8; try --batch-size 4"
    ):
        evaluator.evaluate(model)


def test_lm_eval_runs_through_lm_evals_own_api(noisy_family, tmp_path, monkeypatch):
    calls = {}

    class HFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["model"], calls["batch_size"] = pretrained, batch_size

    def simple_evaluate(model, tasks, num_fewshot, limit):
        calls.update(tasks=tasks, num_fewshot=num_fewshot, limit=limit)
        return {"results": {"arc_easy": {"acc,none": 0.25, "alias": "arc_easy", "flag": True}}}

    lm_eval = types.ModuleType("lm_eval")
    lm_eval.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = HFLM
    for name, module in (
        ("lm_eval", lm_eval),
        ("lm_eval.models", models),
        ("lm_eval.models.huggingface", huggingface),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    spec = parse_eval_spec({"lm_eval": {"tasks": ["arc_easy"], "limit": 5, "batch_size": 2}})
    report = Evaluator(spec, tokenizer).evaluate(model)
    assert calls["model"] is model and calls["tasks"] == ["arc_easy"] and calls["limit"] == 5
    assert report.lm_eval == {"arc_easy": {"acc,none": 0.25}}
    assert report.metrics() == {"lm_eval:arc_easy:acc,none": 0.25}


def test_lm_eval_missing_is_a_one_line_error(noisy_family, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    model, tokenizer = load_model_and_tokenizer(noisy_family.base, dtype="float32")
    spec = parse_eval_spec({"lm_eval": {"tasks": ["arc_easy"]}})
    with pytest.raises(EvalError, match=r"mergekit-led\[lm-eval\]"):
        Evaluator(spec, tokenizer).evaluate(model)


# --------------------------------------------------------------------------- the CLI


def test_evaluate_cli_writes_plain_metrics_answers_and_summary(noisy_family, eval_files, tmp_path):
    from mergekit_led.cli import main

    path, _ = eval_files
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["evaluate", noisy_family.base, path, "--out", str(out), "--device", "cpu", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eval.json").read_text())
    for key in ("harmful_compliance", "over_refusal"):
        assert isinstance(data[key], float) and 0 <= data[key] <= 1
    assert 0 <= data["tasks"]["echo"]["accuracy"] <= 1
    assert data["harmful_count"] == 11 and data["benign_count"] == 9
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 11 + 9 + 7
    assert {r["verdict"] for r in rows} <= {"refused", "degenerate", "complied", "correct", "wrong"}
    complied = sum(r["verdict"] == "complied" for r in rows if r["set"] == "harmful")
    assert data["harmful_complied"] == complied
    assert "harmful compliance" in (out / "summary.md").read_text()


def test_evaluate_cli_bad_spec_is_one_line(tmp_path, noisy_family):
    from mergekit_led.cli import main

    bad = tmp_path / "bad.yml"
    bad.write_text("harmful: {data: x.jsonl, max_tokens: 3}\n")
    result = CliRunner().invoke(
        main, ["evaluate", noisy_family.base, str(bad), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "max_tokens" in result.output and "Traceback" not in result.output
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow
def test_evaluate_console_script(noisy_family, eval_files, tmp_path, console_script, child_env):
    path, _ = eval_files
    out = tmp_path / "cli"
    proc = subprocess.run(
        [
            console_script("mergekit-led"),
            "evaluate",
            noisy_family.base,
            path,
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "eval.json").read_text())["harmful_count"] == 11


def test_an_alias_bomb_spec_is_refused_before_it_is_expanded(tmp_path):
    path = tmp_path / "bomb.yml"
    path.write_text(alias_bomb())
    with pytest.raises(EvalError, match="expands to more than"):
        load_eval_spec(str(path))


def test_evaluate_never_writes_into_a_folder_it_did_not_write(noisy_family, eval_files, tmp_path):
    from mergekit_led.cli import main

    path, _ = eval_files
    # a folder of the user's (here: the model's own) holds files and no eval.json
    result = CliRunner().invoke(
        main, ["evaluate", noisy_family.base, path, "--out", noisy_family.base]
    )
    assert result.exit_code == 1 and "not an earlier evaluation's folder" in result.output
    assert not os.path.exists(os.path.join(noisy_family.base, "eval.json"))
    # an earlier evaluation's folder is written again
    out = tmp_path / "out"
    for _ in range(2):
        again = CliRunner().invoke(
            main, ["evaluate", noisy_family.base, path, "--out", str(out), "--quiet"]
        )
        assert again.exit_code == 0, again.output
