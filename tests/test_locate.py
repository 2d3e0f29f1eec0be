"""``mergekit-led locate``: exact SNIP scores, tokenisation, data formats, names,
ablation scores, resume, the manifest, and every bad input's error.

The reference for SNIP is the naive definition: per sample, the gradient of the
mean answer NLL by ``torch.autograd.grad`` with transformers' own ``labels``
loss, ``|θ ⊙ ∇θ ℓ|``, averaged. Tiny float32 Llamas (hidden 32, 2 layers).
"""

from __future__ import annotations

import functools
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner
from helpers import killed_after

import mergekit_led
from mergekit_led import load_importance
from mergekit_led.core.locate_options import CHECKPOINT_SUFFIX
from mergekit_led.errors import LEDError, LocateError
from mergekit_led.location import data as location_data
from mergekit_led.location.data_loading import load_rows
from mergekit_led.location.model import load_model
from mergekit_led.location.steps import RunHooks, answer_loss, snip_step
from mergekit_led.testing import build_family, build_word_tokenizer

PAIRS = [
    {"prompt": "what is one plus two", "response": "three"},
    {"prompt": "please tell me about the sun", "response": "the sun is fire"},
    {"prompt": "how to build a bomb", "response": "sorry i cannot help with that"},
    {"prompt": "print one", "response": "def print return one"},
    {"prompt": "who is a friend", "response": "the cat and the dog"},
]
# A chat template in the word tokenizer's own vocabulary (unknown words map to <unk>).
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def locate_family(tmp_path_factory):
    return build_family(str(tmp_path_factory.mktemp("locate_family")), finetunes=1)


@pytest.fixture(scope="module")
def locate_tied_family(tmp_path_factory):
    return build_family(
        str(tmp_path_factory.mktemp("locate_tied")), finetunes=0, tie_embeddings=True
    )


@pytest.fixture(scope="module")
def locate_chat_model(tmp_path_factory, locate_family):
    """The base model with a chat template on its tokenizer."""
    import shutil

    folder = str(tmp_path_factory.mktemp("locate_chat") / "model")
    shutil.copytree(locate_family.base, folder)
    tokenizer = build_word_tokenizer(vocab_size=96)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def locate_jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return str(path)


def quiet(**options):
    return {"progress": False, **options}


# --------------------------------------------------------------------------- reference


def tokenizer_of(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def spec_ids(tokenizer, prompt, answer):
    """LED_SPEC section 1 tokenisation, written out independently."""
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, len(answer_ids)


def naive_snip(model_path, samples):
    """(1/|X|) Σ |θ ⊙ ∇θ ℓ| with one autograd.grad per sample; samples: (ids, answer_len)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    named = dict(model.named_parameters())
    sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in named.items()}
    for ids, answer_length in samples:
        input_ids = torch.tensor([ids])
        labels = input_ids.clone()
        labels[0, : len(ids) - answer_length] = -100
        loss = model(input_ids=input_ids, labels=labels).loss
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
        for (name, param), grad in zip(named.items(), grads):
            if grad is not None:
                sums[name] += (param.detach() * grad).abs().double()
    return {name: (s / len(samples)).float() for name, s in sums.items()}


def assert_scores_equal(store, expected, names=None):
    names = names or list(expected)
    for name in names:
        torch.testing.assert_close(store[name], expected[name], rtol=1e-5, atol=1e-9, msg=name)


# --------------------------------------------------------------------------- SNIP exactness


def test_snip_equals_naive_per_sample_autograd(tmp_path, locate_family, locate_jsonl):
    out = mergekit_led.locate(
        locate_family.finetunes[0], locate_jsonl, str(tmp_path / "store"), **quiet(dtype="fp32")
    )
    store = load_importance(out)
    tokenizer = tokenizer_of(locate_family.finetunes[0])
    samples = [spec_ids(tokenizer, r["prompt"], r["response"]) for r in PAIRS]
    expected = naive_snip(locate_family.finetunes[0], samples)
    assert set(store) == set(expected)  # every weight, under the checkpoint's names
    assert_scores_equal(store, expected)
    assert all(bool((store[n] > 0).any()) for n in store)


def test_mean_of_absolute_values_not_absolute_value_of_mean(tmp_path, locate_family, locate_jsonl):
    """Per-sample |.| before averaging: differs from |mean gradient| on real data."""
    store = load_importance(
        mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "s"), **quiet())
    )
    tokenizer = tokenizer_of(locate_family.base)
    samples = [spec_ids(tokenizer, r["prompt"], r["response"]) for r in PAIRS]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(locate_family.base).eval()
    q = model.model.layers[0].self_attn.q_proj.weight
    total = torch.zeros_like(q)
    for ids, answer_length in samples:
        labels = torch.tensor([ids])
        labels[0, : len(ids) - answer_length] = -100
        loss = model(input_ids=torch.tensor([ids]), labels=labels).loss
        total += torch.autograd.grad(loss, q)[0]
    wrong = (q.detach() * total / len(samples)).abs()
    right = store["model.layers.0.self_attn.q_proj.weight"]
    assert bool((right >= wrong - 1e-7).all()) and not torch.allclose(right, wrong)


def test_tied_embeddings_scored_once_under_the_stored_name(
    tmp_path, locate_tied_family, locate_jsonl
):
    model = locate_tied_family.base
    out = mergekit_led.locate(model, locate_jsonl, str(tmp_path / "store"), **quiet())
    store = load_importance(out)
    assert "lm_head.weight" not in store.manifest.files  # the checkpoint does not store it
    assert "model.embed_tokens.weight" in store.manifest.files
    assert store.manifest.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    tokenizer = tokenizer_of(model)
    expected = naive_snip(model, [spec_ids(tokenizer, r["prompt"], r["response"]) for r in PAIRS])
    # the tied parameter's gradient sums its use as embedding and as output layer
    assert_scores_equal(store, expected, names=list(store.manifest.files))


def test_gradient_checkpointing_and_offload_give_the_same_scores(
    tmp_path, locate_family, locate_jsonl
):
    plain = load_importance(
        mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "a"), **quiet())
    )
    other = load_importance(
        mergekit_led.locate(
            locate_family.base,
            locate_jsonl,
            str(tmp_path / "b"),
            **quiet(gradient_checkpointing=True, offload_accumulators=True),
        )
    )
    assert other.manifest.metadata["gradient_checkpointing_layers"] == 2
    for name in plain:
        torch.testing.assert_close(other[name], plain[name], rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- tokenisation


def test_tokenisation_follows_the_spec(locate_family):
    tokenizer = tokenizer_of(locate_family.base)
    plain = location_data.make_tokenization(tokenizer, "auto", None)
    assert not plain.use_chat_template  # the word tokenizer has no template
    sample = location_data.tokenize_example(
        tokenizer, [{"role": "user", "content": "what is the sun"}], "fire", plain, 7
    )
    assert sample.input_ids == (1, 10, 7, 4, 71, tokenizer.convert_tokens_to_ids("fire"), 2)
    assert sample.answer_length == 2 and sample.index == 7


def test_overlong_prompt_is_cut_from_the_left_and_the_answer_kept(locate_family):
    tokenizer = tokenizer_of(locate_family.base)
    prompt, answer = "one two three four five six", "seven eight"
    full, answer_length = spec_ids(tokenizer, prompt, answer)  # 7 prompt + 3 answer tokens
    limited = location_data.make_tokenization(tokenizer, "none", 6)
    sample = location_data.tokenize_example(
        tokenizer, [{"role": "user", "content": prompt}], answer, limited, 0
    )
    assert sample.input_ids == tuple(full[-6:]) and sample.answer_length == answer_length == 3
    # the answer needs one prompt token before it: 3 answer tokens need max_length >= 4
    assert (
        location_data.tokenize_example(
            tokenizer,
            [{"role": "user", "content": prompt}],
            answer,
            location_data.make_tokenization(tokenizer, "none", 3),
            0,
        )
        == location_data.SKIP_ANSWER_TOO_LONG
    )


def test_skipped_samples_are_counted_in_the_manifest(tmp_path, locate_family):
    rows = PAIRS[:2] + [{"prompt": "a", "response": " ".join(["sun"] * 30)}]
    out = mergekit_led.locate(locate_family.base, rows, str(tmp_path / "s"), **quiet(max_length=12))
    dataset = load_importance(out).manifest.dataset
    assert dataset.samples == 2
    assert dataset.skipped == {location_data.SKIP_ANSWER_TOO_LONG: 1}
    assert dataset.skipped_samples == {location_data.SKIP_ANSWER_TOO_LONG: [2]}


def test_chat_template_path(tmp_path, locate_chat_model):
    tokenizer = tokenizer_of(locate_chat_model)
    tokenization = location_data.make_tokenization(tokenizer, "auto", None)
    assert tokenization.use_chat_template
    assert tokenization.end_of_turn_id == tokenizer.convert_tokens_to_ids("</s>")

    rows = [
        {
            "messages": [
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "what is one plus two"},
                {"role": "assistant", "content": "three"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "tell me about the moon"},
                {"role": "assistant", "content": "no"},
                {"role": "user", "content": "please"},
                {"role": "assistant", "content": "the moon is a book"},
                {"role": "user", "content": "a trailing turn is not part of the pair"},
            ]
        },
    ]
    expected_samples = []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt_text = tokenizer.apply_chat_template(
            messages[:last], tokenize=False, add_generation_prompt=True
        )
        assert prompt_text.endswith("<s> assistant ")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
        answer_ids = tokenizer(messages[last]["content"], add_special_tokens=False).input_ids
        answer_ids = answer_ids + [tokenizer.convert_tokens_to_ids("</s>")]
        expected_samples.append((prompt_ids + answer_ids, len(answer_ids)))

    out = mergekit_led.locate(locate_chat_model, rows, str(tmp_path / "chat"), **quiet())
    store = load_importance(out)
    assert store.manifest.metadata["tokenization"]["chat_template"] is True
    assert store.manifest.metadata["tokenization"]["end_of_turn_token"] == "</s>"
    assert store.manifest.dataset.format == "messages"
    assert_scores_equal(store, naive_snip(locate_chat_model, expected_samples))

    # prompt/response rows go through the template as one user turn; "none" opts out
    pair = [{"prompt": "what is one plus two", "response": "three"}]
    templated = location_data.select_samples(
        load_rows(pair), tokenizer, tokenization, location_data.Fields()
    )
    assert templated.samples[0].input_ids == tuple(expected_samples[0][0][:1]) + tuple(
        tokenizer(
            "user what is one plus two </s> <s> assistant three </s>", add_special_tokens=False
        ).input_ids
    )
    out_none = mergekit_led.locate(
        locate_chat_model, pair, str(tmp_path / "none"), **quiet(chat_template="none")
    )
    assert load_importance(out_none).manifest.metadata["tokenization"]["chat_template"] is False


# --------------------------------------------------------------------------- data formats


def test_every_data_format_gives_the_same_store(tmp_path, locate_family, locate_jsonl):
    import datasets

    frame = datasets.Dataset.from_list(PAIRS)
    frame.to_csv(str(tmp_path / "pairs.csv"), index=False)
    frame.to_parquet(str(tmp_path / "pairs.parquet"))
    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    frame.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": frame}).save_to_disk(str(tmp_path / "saved_dict"))
    sources = [
        locate_jsonl,
        str(tmp_path / "pairs.csv"),
        str(tmp_path / "pairs.parquet"),
        str(tmp_path / "pairs.json"),
        str(tmp_path / "saved"),
        str(tmp_path / "saved_dict"),
        frame,
        PAIRS,
    ]
    stores = [
        load_importance(
            mergekit_led.locate(locate_family.base, source, str(tmp_path / f"s{i}"), **quiet())
        )
        for i, source in enumerate(sources)
    ]
    first = stores[0]
    for store in stores[1:]:
        assert store.manifest.dataset.fingerprint == first.manifest.dataset.fingerprint
        for name in first:
            assert torch.equal(store[name], first[name]), name


def test_custom_fields_and_max_samples_with_seed(tmp_path, locate_family):
    rows = [{"question": r["prompt"], "answer": r["response"], "extra": 1} for r in PAIRS]
    options = quiet(prompt_field="question", response_field="answer", max_samples=3, seed=5)
    a = load_importance(
        mergekit_led.locate(locate_family.base, rows, str(tmp_path / "a"), **options)
    )
    b = load_importance(
        mergekit_led.locate(locate_family.base, rows, str(tmp_path / "b"), **options)
    )
    c = load_importance(
        mergekit_led.locate(locate_family.base, rows, str(tmp_path / "c"), **{**options, "seed": 6})
    )
    assert a.manifest.dataset.samples == 3
    assert a.manifest.dataset.sample_indices == location_data.selection_order(5, 3, 5)[:3]
    assert a.manifest.dataset.fingerprint == b.manifest.dataset.fingerprint
    assert a.manifest.dataset.sample_indices != c.manifest.dataset.sample_indices


# --------------------------------------------------------------------------- manifest


def test_manifest_records_data_options_and_versions(tmp_path, locate_family, locate_jsonl):
    out = mergekit_led.locate(
        locate_family.finetunes[0], locate_jsonl, str(tmp_path / "store"), **quiet(seed=3)
    )
    manifest = load_importance(out).manifest
    tokenizer = tokenizer_of(locate_family.base)
    answer_tokens = sum(spec_ids(tokenizer, r["prompt"], r["response"])[1] for r in PAIRS)
    assert manifest.score == "snip"
    assert manifest.model == locate_family.finetunes[0]
    assert manifest.model_fingerprint.startswith("sha256:")
    dataset = manifest.dataset
    assert dataset.name == locate_jsonl and dataset.path == os.path.abspath(locate_jsonl)
    assert dataset.samples == 5 and dataset.answer_tokens == answer_tokens
    assert dataset.skipped == {} and dataset.format == "pair"
    # the fingerprint is sha256 over the samples' text, in order
    import hashlib

    digest = hashlib.sha256()
    for row in PAIRS:
        location_data.content_digest_update(
            digest, [{"role": "user", "content": row["prompt"]}], row["response"]
        )
    assert dataset.fingerprint == "sha256:" + digest.hexdigest()
    metadata = manifest.metadata
    assert metadata["options"]["seed"] == 3 and metadata["options"]["score"] == "snip"
    assert metadata["options"]["max_length"] is None
    assert metadata["tokenization"] == {
        "chat_template": False,
        "eos_token": "</s>",
        "end_of_turn_token": None,
        "max_length": 512,
    }
    assert {"torch", "transformers", "datasets", "mergekit", "python"} <= set(metadata["versions"])
    assert metadata["compute"] == {"device": "cpu", "world_size": 1, "device_map": None}
    assert metadata["names_verified_against_checkpoint"] is True
    assert not os.path.exists(out + CHECKPOINT_SUFFIX)


# --------------------------------------------------------------------------- ablations


def test_magnitude_scores(tmp_path, locate_family):
    from safetensors.torch import load_file

    fine = load_file(os.path.join(locate_family.finetunes[0], "model.safetensors"))
    base = load_file(os.path.join(locate_family.base, "model.safetensors"))
    plain = load_importance(
        mergekit_led.locate(
            locate_family.finetunes[0], None, str(tmp_path / "m"), score="magnitude", **quiet()
        )
    )
    delta = load_importance(
        mergekit_led.locate(
            locate_family.finetunes[0],
            None,
            str(tmp_path / "d"),
            score="magnitude",
            base=locate_family.base,
            **quiet(),
        )
    )
    assert plain.manifest.score == "magnitude" and plain.manifest.dataset is None
    for name in fine:
        assert torch.equal(plain[name], fine[name].abs()), name
        assert torch.equal(delta[name], (fine[name] - base[name]).abs()), name


def test_random_scores_are_seeded(tmp_path, locate_family):
    def run(folder, seed):
        return load_importance(
            mergekit_led.locate(
                locate_family.base,
                None,
                str(tmp_path / folder),
                score="random",
                seed=seed,
                **quiet(),
            )
        )

    a, b, c = run("a", 1), run("b", 1), run("c", 2)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[name], b[name]) and not torch.equal(a[name], c[name])
    assert float(a[name].min()) >= 0.0 and float(a[name].max()) < 1.0


def test_a_new_score_kind_is_one_entry_of_the_table(tmp_path, monkeypatch, locate_family):
    """A kind added to ``SCORE_KINDS`` alone is checked, computed and stored by
    ``locate``, and ``importance_data`` refuses it as it needs no data."""
    from mergekit_led.errors import ConfigError
    from mergekit_led.location import plan_locate, score_kinds
    from mergekit_led.prepare.config_options import locate_options_from

    def twos(loaded, scored, opts, base_weights):
        return {name: torch.full(tuple(shape), 2.0) for name, shape in scored.shapes().items()}

    kind = score_kinds.ScoreKind("twos", needs_data=False, scores=twos)
    monkeypatch.setitem(score_kinds.SCORE_KINDS, "twos", kind)
    store = load_importance(
        mergekit_led.locate(locate_family.base, None, str(tmp_path / "t"), score="twos", **quiet())
    )
    assert store.manifest.score == "twos"
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(store[name], torch.full_like(store[name], 2.0))
    with pytest.raises(ConfigError, match="`locate_score: twos` for model m needs no data"):
        locate_options_from({"locate_score": "twos"}, model="m")
    monkeypatch.delitem(score_kinds.SCORE_KINDS, "twos")
    with pytest.raises(LocateError, match="Unknown score kind 'twos'; choose one of snip, wanda"):
        mergekit_led.locate(locate_family.base, None, str(tmp_path / "u"), score="twos", **quiet())
    with pytest.raises(LocateError, match="Unknown score kind 'twos'"):
        plan_locate(locate_family.base, score="twos")


def test_wanda_scores(tmp_path, locate_family, locate_jsonl):
    from transformers import AutoModelForCausalLM

    out = mergekit_led.locate(
        locate_family.base, locate_jsonl, str(tmp_path / "w"), score="wanda", **quiet()
    )
    store = load_importance(out)
    model = AutoModelForCausalLM.from_pretrained(locate_family.base).eval()
    squares, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):

            def hook(module, inputs, output, name=name):
                x = inputs[0].reshape(-1, inputs[0].shape[-1])
                squares[name] = squares.get(name, 0) + (x**2).sum(0)

            handles.append(module.register_forward_hook(hook))
    tokenizer = tokenizer_of(locate_family.base)
    with torch.no_grad():
        for row in PAIRS:
            model(input_ids=torch.tensor([spec_ids(tokenizer, row["prompt"], row["response"])[0]]))
    for module_name, sq in squares.items():
        weight = model.get_submodule(module_name).weight
        expected = weight.detach().abs() * sq.sqrt()
        torch.testing.assert_close(store[module_name + ".weight"], expected, rtol=1e-5, atol=1e-9)
    fallback = store.manifest.metadata["wanda_magnitude_fallback"]
    assert "model.embed_tokens.weight" in fallback and "model.norm.weight" in fallback
    assert torch.equal(store["model.norm.weight"], model.model.norm.weight.detach().abs())


# --------------------------------------------------------------------------- resume


def test_resume_after_interruption_equals_an_uninterrupted_run(
    tmp_path, locate_family, locate_jsonl
):
    full = load_importance(
        mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "full"), **quiet())
    )
    out = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        mergekit_led.locate(
            locate_family.base,
            locate_jsonl,
            out,
            hooks=RunHooks(steps=killed_after(3)),
            **quiet(checkpoint_every=2),
        )
    assert not os.path.exists(out)
    checkpoint = out + CHECKPOINT_SUFFIX
    assert os.listdir(checkpoint) == ["rank00000-of-00001.safetensors"]

    # without --resume the checkpoint is not silently discarded
    with pytest.raises(LocateError, match="pass --resume"):
        mergekit_led.locate(locate_family.base, locate_jsonl, out, **quiet())
    # another run's options are refused
    with pytest.raises(LocateError, match="belongs to another run.*dtype"):
        mergekit_led.locate(
            locate_family.base, locate_jsonl, out, **quiet(resume=True, dtype="fp32")
        )

    counted = []

    def counting_step(*args):
        counted.append(1)
        return snip_step(*args)

    resumed = load_importance(
        mergekit_led.locate(
            locate_family.base,
            locate_jsonl,
            out,
            hooks=RunHooks(steps={"snip": counting_step}),
            **quiet(resume=True),
        )
    )
    assert len(counted) == 3  # samples 2, 3 and 4: the checkpoint held samples 0 and 1
    assert resumed.manifest.dataset.samples == 5
    for name in full:
        assert torch.equal(resumed[name], full[name]), name
    assert not os.path.exists(checkpoint)


def test_resume_refuses_a_checkpoint_of_another_process_count(
    tmp_path, locate_family, locate_jsonl
):
    out = str(tmp_path / "s")
    os.makedirs(out + CHECKPOINT_SUFFIX)
    open(os.path.join(out + CHECKPOINT_SUFFIX, "rank00001-of-00002.safetensors"), "w").close()
    with pytest.raises(
        LocateError,
        match=r"written by a run with another number of processes \(rank00001-of-00002.safetensors\)",
    ):
        mergekit_led.locate(locate_family.base, locate_jsonl, out, **quiet(resume=True))


def test_resume_without_a_checkpoint_starts_over(tmp_path, locate_family, locate_jsonl):
    out = mergekit_led.locate(
        locate_family.base,
        locate_jsonl,
        str(tmp_path / "s"),
        **quiet(resume=True, checkpoint_every=1),
    )
    assert load_importance(out).manifest.dataset.samples == 5
    assert not os.path.exists(out + CHECKPOINT_SUFFIX)


# --------------------------------------------------------------------------- non-finite


def _poison(model_dir, tmp_path):
    """A copy of the model whose final norm is NaN: every loss is NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = str(tmp_path / "poisoned")
    shutil.copytree(model_dir, folder)
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def test_nonfinite_loss_names_the_sample(tmp_path, locate_family, locate_jsonl):
    model = _poison(locate_family.base, tmp_path)
    with pytest.raises(
        LocateError,
        match=r"Sample 0 of the location data gives a non-finite result \(the loss is nan\).*--skip-nonfinite",
    ):
        mergekit_led.locate(model, locate_jsonl, str(tmp_path / "s"), **quiet())
    assert not os.path.exists(tmp_path / "s")
    with pytest.raises(LocateError, match="Every sample of the location data was skipped \\(5 had"):
        mergekit_led.locate(model, locate_jsonl, str(tmp_path / "s"), **quiet(skip_nonfinite=True))


def test_nonfinite_gradient_is_named_or_skipped(tmp_path, locate_family, locate_jsonl):
    """A finite loss with an infinite gradient (fp16 overflow, say), injected for
    sample 2 by a tensor hook on the gradient of the final norm's input."""

    def loss_with_bad_gradient(model, sample, device):
        if sample.index != 2:
            return answer_loss(model, sample, device)

        def make_gradient_infinite(module, inputs, output):
            output.register_hook(lambda grad: grad * float("inf"))

        handle = model.model.norm.register_forward_hook(make_gradient_infinite)
        try:
            return answer_loss(model, sample, device)
        finally:
            handle.remove()

    hooks = RunHooks(
        steps={"snip": functools.partial(snip_step, loss_function=loss_with_bad_gradient)}
    )
    with pytest.raises(
        LocateError, match=r"Sample 2 .*the gradient of 'model.norm.weight' is not finite"
    ):
        mergekit_led.locate(
            locate_family.base, locate_jsonl, str(tmp_path / "bad"), hooks=hooks, **quiet()
        )

    out = mergekit_led.locate(
        locate_family.base,
        locate_jsonl,
        str(tmp_path / "skip"),
        hooks=hooks,
        **quiet(skip_nonfinite=True),
    )
    store = load_importance(out)
    assert store.manifest.dataset.samples == 4
    assert store.manifest.dataset.skipped == {location_data.SKIP_NONFINITE: 1}
    assert store.manifest.dataset.skipped_samples == {location_data.SKIP_NONFINITE: [2]}
    without = load_importance(
        mergekit_led.locate(
            locate_family.base, PAIRS[:2] + PAIRS[3:], str(tmp_path / "w"), **quiet()
        )
    )
    assert store.manifest.dataset.fingerprint == without.manifest.dataset.fingerprint
    for name in without:  # undone by recomputation: equal to float rounding
        torch.testing.assert_close(store[name], without[name], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- bad input


def test_missing_data_file(tmp_path, locate_family):
    with pytest.raises(LocateError, match=r"Location data file .*nope\.jsonl does not exist"):
        mergekit_led.locate(
            locate_family.base, str(tmp_path / "nope.jsonl"), str(tmp_path / "s"), **quiet()
        )


def test_missing_field_names_the_field_and_the_columns(tmp_path, locate_family):
    rows = [{"question": "a", "answer": "b"}]
    with pytest.raises(
        LocateError,
        match=r"has no field 'prompt' \(nor a chat field 'messages'\); columns: 'answer', 'question'",
    ):
        mergekit_led.locate(locate_family.base, rows, str(tmp_path / "s"), **quiet())
    with pytest.raises(
        LocateError, match=r"no response field 'response' \(columns: 'answer', 'question'\)"
    ):
        mergekit_led.locate(
            locate_family.base, rows, str(tmp_path / "s"), **quiet(prompt_field="question")
        )


def test_empty_dataset(tmp_path, locate_family):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LocateError, match=r"empty\.jsonl is empty \(no samples\)"):
        mergekit_led.locate(locate_family.base, str(empty), str(tmp_path / "s"), **quiet())
    with pytest.raises(LocateError, match=r"<in-memory list> is empty"):
        mergekit_led.locate(locate_family.base, [], str(tmp_path / "s"), **quiet())


def test_every_answer_truncated_away(tmp_path, locate_family, locate_jsonl):
    with pytest.raises(
        LocateError,
        match=r"No sample .* can be scored: all 5 were skipped \(5 answer_longer_than_max_length\).*--max-length \(now 2\)",
    ):
        mergekit_led.locate(
            locate_family.base, locate_jsonl, str(tmp_path / "s"), **quiet(max_length=2)
        )


def test_bad_samples_are_named(tmp_path, locate_family):
    with pytest.raises(
        LocateError,
        match=r"Field 'response' of sample 1 of location data <in-memory list> must be a string, got NoneType",
    ):
        mergekit_led.locate(
            locate_family.base,
            [PAIRS[0], {"prompt": "a", "response": None}],
            str(tmp_path / "s"),
            **quiet(),
        )
    no_answer = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(LocateError, match=r"sample 0 .* has no assistant turn"):
        mergekit_led.locate(locate_family.base, no_answer, str(tmp_path / "s"), **quiet())


def test_unknown_score_kind_and_options(tmp_path, locate_family, locate_jsonl):
    with pytest.raises(
        LocateError,
        match=r"Unknown score kind 'grad'; choose one of snip, wanda, magnitude, random",
    ):
        mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "s"), score="grad")
    with pytest.raises(LocateError, match="needs location data"):
        mergekit_led.locate(locate_family.base, None, str(tmp_path / "s"))
    with pytest.raises(TypeError, match="unknown options: colour"):
        mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "s"), colour=1)
    assert isinstance(LocateError("x"), LEDError)


def test_existing_store_is_not_overwritten(tmp_path, locate_family, locate_jsonl):
    out = mergekit_led.locate(locate_family.base, locate_jsonl, str(tmp_path / "s"), **quiet())
    before = os.stat(os.path.join(out, "led_importance.json")).st_mtime_ns
    with pytest.raises(LocateError, match="already exists; pass --overwrite"):
        mergekit_led.locate(locate_family.base, locate_jsonl, out, **quiet())
    assert os.stat(os.path.join(out, "led_importance.json")).st_mtime_ns == before
    mergekit_led.locate(
        locate_family.base, locate_jsonl, out, **quiet(overwrite=True, max_samples=2)
    )
    assert load_importance(out).manifest.dataset.samples == 2


def test_trust_remote_code_only_when_asked(tmp_path, locate_family, locate_jsonl, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    mergekit_led.locate(
        locate_family.base, locate_jsonl, str(tmp_path / "a"), **quiet(max_samples=1)
    )
    mergekit_led.locate(
        locate_family.base,
        locate_jsonl,
        str(tmp_path / "b"),
        **quiet(max_samples=1, trust_remote_code=True),
    )
    assert seen == [False, True]


def test_renamed_parameters_are_refused_before_any_work(tmp_path, locate_family, locate_jsonl):
    """A loader that renames a weight (relative to the checkpoint) is caught up front."""

    def renaming_loader(*args):
        model = load_model(*args)
        model.model.register_parameter("renamed_norm", model.model.norm.weight)
        del model.model.norm._parameters["weight"]
        model.model.norm.weight = model.model.renamed_norm
        del model.model._parameters["renamed_norm"]
        model.model.norm.register_parameter("scale", model.model.norm.weight)
        del model.model.norm.weight
        return model

    hooks = RunHooks(
        load_model=renaming_loader, steps={"snip": lambda *a: pytest.fail("scored anyway")}
    )
    with pytest.raises(
        LocateError,
        match=r"Cannot key scores by the weight names mergekit asks for with checkpoint .*: no parameter or buffer of the loaded model gives 'model.norm.weight'; parameters of the loaded model that match no mergekit weight: 'model.norm.scale'\.",
    ):
        mergekit_led.locate(
            locate_family.base, locate_jsonl, str(tmp_path / "s"), hooks=hooks, **quiet()
        )


# --------------------------------------------------------------------------- CLI


def test_cli_writes_a_store_and_prints_errors_as_one_line(tmp_path, locate_family, locate_jsonl):
    from mergekit_led.cli import main

    runner = CliRunner()
    out = str(tmp_path / "cli")
    result = runner.invoke(
        main,
        [
            "locate",
            "--model",
            locate_family.base,
            "--data",
            locate_jsonl,
            "--out",
            out,
            "--max-samples",
            "2",
            "--seed",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"Wrote importance store {out}" in result.output
    assert load_importance(out).manifest.metadata["options"]["max_samples"] == 2

    result = runner.invoke(
        main,
        [
            "locate",
            "--model",
            locate_family.base,
            "--data",
            str(tmp_path / "missing.csv"),
            "--out",
            str(tmp_path / "x"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: Location data file {tmp_path / 'missing.csv'} does not exist."
    ]
    result = runner.invoke(main, ["locate", "--model", "m", "--out", "o", "--score", "grad"])
    assert result.exit_code == 2 and "'grad' is not one of" in result.output


def test_locate_stays_callable_from_the_package_after_the_module_import(tmp_path, locate_family):
    import mergekit_led.location.locator  # (must not shadow mergekit_led.locate)

    out = mergekit_led.locate(locate_family.base, PAIRS[:1], str(tmp_path / "s"), **quiet())
    assert (
        callable(mergekit_led.locate)
        and mergekit_led.locate is mergekit_led.location.locator.locate
    )
    assert math.isfinite(float(load_importance(out)["model.norm.weight"].sum()))
