"""Every architecture mergekit merges, MoE included: locate -> merge -> forward, exact.

Each family of ``mergekit_led.testing.FAMILY_CONFIGS`` in the matrix is built offline (tiny
config, a base and two perturbed fine-tunes saved by transformers 5), scored by
``locate`` (SNIP, two samples per task), merged by mergekit's own ``run_merge`` with
``led_merging``, loaded back and run forward. Every merged weight is checked against the
plain-torch reference (``tests/reference.py``) from the tensors mergekit hands over and
the stored scores, so a store keyed by other names than mergekit's, or scores laid out
differently than the weights, fails here.

MoE: transformers 5 saves experts per expert and fuses them when loading; mergekit 0.1.5
asks the method for the fused tensors (Mixtral, Qwen3-MoE, OLMoE, ...), or per expert
(AFMoE), or under the checkpoint's names (GraniteMoeHybrid). All are checked.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pytest
import torch
import yaml
from reference import assert_matches_reference, led_merge_tensor

import mergekit_led
from mergekit_led import load_importance, save_importance
from mergekit_led.errors import ConfigError, FingerprintMismatch, LocateError, StoreError
from mergekit_led.location.steps import RunHooks
from mergekit_led.store import fingerprint
from mergekit_led.store.mergekit_weights import mergekit_weights, read_weight
from mergekit_led.testing import ModelFamily, build_family

# The families issue 11 asks for; the other MoE families mergekit 0.1.5 merges that build
# offline (OLMoE, Qwen2-MoE and PhiMoE through mergekit's inferred architecture, GLM-4-MoE
# and AFMoE through its special cases, GraniteMoeHybrid through checkpoint names); and
# Apertus, whose activation scalars mergekit merges although they are buffers.
MATRIX = ("llama", "mistral", "qwen3", "gemma2", "phi3", "gpt2", "mixtral", "qwen3_moe")
MORE = ("olmoe", "qwen2_moe", "phimoe", "glm4_moe", "afmoe", "granitemoehybrid", "apertus")
DENSITIES = (0.3, 0.5)
TASKS = (
    [
        {"prompt": "what is one plus two", "response": "three"},
        {"prompt": "please tell me about the sun", "response": "the sun is fire"},
    ],
    [
        {"prompt": "how to build a bomb", "response": "sorry cannot help with that"},
        {"prompt": "who is a friend", "response": "the cat and the dog"},
    ],
)

# What mergekit asks for, per family: a few names and shapes that show the layout.
EXPECTED_WEIGHTS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    # fused experts of all experts of a layer: election runs over them jointly
    "mixtral": {
        "model.layers.0.mlp.experts.gate_up_proj": (4, 64, 16),
        "model.layers.0.mlp.experts.down_proj": (4, 16, 32),
        "model.layers.0.mlp.gate.weight": (4, 16),  # the checkpoint's block_sparse_moe.gate
    },
    "qwen3_moe": {
        "model.layers.0.mlp.experts.gate_up_proj": (4, 64, 16),
        "model.layers.0.mlp.experts.down_proj": (4, 16, 32),
    },
    "olmoe": {"model.layers.0.mlp.experts.gate_up_proj": (4, 64, 16)},
    "qwen2_moe": {"model.layers.0.mlp.experts.gate_up_proj": (4, 64, 16)},
    "phimoe": {"model.layers.0.mlp.router.weight": (4, 16)},
    "glm4_moe": {"model.layers.1.mlp.gate.e_score_correction_bias": (4,)},  # a buffer
    # mergekit asks for AFMoE experts one at a time, the loaded model fuses them
    "afmoe": {
        "model.layers.1.mlp.experts.0.gate_proj.weight": (32, 16),
        "model.layers.1.mlp.experts.3.down_proj.weight": (16, 32),
    },
    "granitemoehybrid": {"model.layers.0.block_sparse_moe.input_linear.weight": (4, 64, 16)},
    "phi3": {"model.layers.0.self_attn.qkv_proj.weight": (32, 16)},
    "gpt2": {"transformer.h.0.attn.c_attn.weight": (16, 48)},  # Conv1D: (in, out)
    "apertus": {"model.layers.0.mlp.act_fn.beta": ()},  # a scalar buffer
}


@pytest.fixture(scope="module", autouse=True)
def tiny_model_settings():
    """One intra-op thread and a frozen heap for this module's many tiny runs.

    Threads buy nothing on hidden-size-16 models and cost much when the machine is
    shared (measured: 0.77 s against 0.004 s per forward+backward of the tiny Mixtral
    on 2 busy cores). ``locate`` calls ``gc.collect()`` once per run, which walks every
    object of an interpreter that has imported transformers and mergekit (0.45 s per
    run); frozen objects are not walked.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(threads)


@dataclass
class Merged:
    family: ModelFamily
    stores: List[Tuple[str, str]]  # (fine-tune i's store, the base's store) on task i
    output: str
    config: dict


def locate_and_merge(name: str, root: str) -> Merged:
    """The one helper of the matrix: build, locate (SNIP) fine-tunes and base on each
    task, merge with mergekit's in-process ``run_merge``."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    family = build_family(os.path.join(root, "models"), architecture=name, finetunes=len(TASKS))
    stores = []
    for index, (finetune, task) in enumerate(zip(family.finetunes, TASKS), start=1):
        stores.append(
            tuple(
                mergekit_led.locate(
                    model, task, os.path.join(root, f"{role}{index}"), progress=False
                )
                for role, model in (("finetune", finetune), ("base", family.base))
            )
        )
    config = {
        "merge_method": "led_merging",
        "base_model": family.base,
        "dtype": "float32",
        "models": [
            {
                "model": finetune,
                "parameters": {
                    "weight": 1.0,
                    "density": density,
                    "importance": model_store,
                    "base_importance": base_store,
                },
            }
            for finetune, density, (model_store, base_store) in zip(
                family.finetunes, DENSITIES, stores
            )
        ],
    }
    output = os.path.join(root, "merged")
    run_merge(
        MergeConfiguration.model_validate(config),
        output,
        options=MergeOptions(quiet=True, write_model_card=False),
    )
    return Merged(family, stores, output, config)


@pytest.fixture(scope="module")
def merged_family(tmp_path_factory):
    done: Dict[str, Merged] = {}

    def get(name: str) -> Merged:
        if name not in done:
            done[name] = locate_and_merge(name, str(tmp_path_factory.mktemp(name)))
        return done[name]

    return get


def check_against_reference(merged: Merged) -> int:
    """Every merged weight equals the reference computed from what mergekit hands over
    and the stored scores; returns how many weights were checked."""
    inputs = [mergekit_weights(path) for path in [merged.family.base] + merged.family.finetunes]
    output = mergekit_weights(merged.output)
    stores = [(load_importance(m), load_importance(b)) for m, b in merged.stores]
    asked = inputs[0].asked()
    for weight_name in asked:
        base, *finetunes = (read_weight(w, w.by_name()[weight_name]) for w in inputs)
        expected, sets = led_merge_tensor(
            base,
            finetunes,
            [model_store[weight_name] for model_store, _ in stores],
            [base_store[weight_name] for _, base_store in stores],
            DENSITIES,
        )
        result = read_weight(output, output.by_name()[weight_name])
        assert_matches_reference(
            result, base, finetunes, sets, [1.0, 1.0], exact=True, name=weight_name
        )
        assert torch.equal(result, expected), weight_name
    return len(asked)


@pytest.mark.parametrize("name", MATRIX + MORE)
def test_locate_merge_and_forward_are_exact(name, merged_family):
    from transformers import AutoModelForCausalLM

    merged = merged_family(name)
    weights = mergekit_weights(merged.family.base)
    asked = {n: w.shape for n, w in weights.asked().items()}
    for expected_name, shape in EXPECTED_WEIGHTS.get(name, {}).items():
        assert asked.get(expected_name) == shape, expected_name
    for model_store, base_store in merged.stores:
        for path in (model_store, base_store):
            store = load_importance(path)
            # keyed exactly by the names mergekit asks for, with their shapes
            assert {n: tuple(s) for n, s in store.manifest.shapes.items()} == asked
            assert store.manifest.metadata["names_verified_against_checkpoint"] is True
    assert check_against_reference(merged) == len(asked)

    model, info = AutoModelForCausalLM.from_pretrained(
        merged.output, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7, 8]])).logits
    assert logits.shape == (1, 5, model.config.vocab_size)
    assert bool(torch.isfinite(logits).all())


def test_a_buffer_mergekit_merges_gets_zero_snip_scores_and_keeps_the_base(merged_family):
    merged = merged_family("glm4_moe")
    name = "model.layers.1.mlp.gate.e_score_correction_bias"
    for model_store, base_store in merged.stores:
        for path in (model_store, base_store):
            store = load_importance(path)
            assert store.manifest.metadata["weights_without_gradient"] == [name]
            assert not bool(store[name].any())
    weights = mergekit_weights(merged.output)
    base = mergekit_weights(merged.family.base)
    assert torch.equal(
        read_weight(weights, weights.by_name()[name]), read_weight(base, base.by_name()[name])
    )


def test_plain_mergekit_yaml_gives_the_in_process_merge(
    merged_family, tmp_path, console_script, child_env
):
    """One real ``mergekit-yaml`` run (the plugin registered by the start-up hook)."""
    import subprocess

    from safetensors.torch import load_file

    merged = merged_family("mixtral")
    config_path = tmp_path / "led.yaml"
    config_path.write_text(yaml.safe_dump(merged.config, sort_keys=False))
    out = tmp_path / "merged"
    result = subprocess.run(
        [console_script("mergekit-yaml"), str(config_path), str(out)],
        capture_output=True,
        text=True,
        env=child_env(OMP_NUM_THREADS="1"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cli = load_file(str(out / "model.safetensors"))
    in_process = load_file(os.path.join(merged.output, "model.safetensors"))
    assert set(cli) == set(in_process)
    assert "model.layers.0.mlp.experts.gate_up_proj" in cli
    for name, tensor in in_process.items():
        assert torch.equal(cli[name], tensor), name


# --------------------------------------------------------------------------- fingerprints


def test_fused_weights_are_fingerprinted_and_checked(merged_family):
    merged = merged_family("mixtral")
    name = "model.layers.0.mlp.experts.gate_up_proj"
    store = load_importance(merged.stores[0][0])  # fine-tune 1's store
    own = mergekit_weights(merged.family.finetunes[0])
    other = mergekit_weights(merged.family.finetunes[1])
    store.check_weight(name, read_weight(own, own.by_name()[name]), model="finetune1")
    with pytest.raises(FingerprintMismatch, match=f"weight '{name}' given for model finetune2"):
        store.check_weight(name, read_weight(other, other.by_name()[name]), model="finetune2")


def test_fused_samples_are_read_from_the_checkpoint_when_the_loaded_dtype_is_lossy(
    merged_family, tmp_path
):
    """With --dtype bf16 on a float32 checkpoint the loaded parameters are rounded, so
    the store's samples of fused weights are built from the checkpoint instead."""
    from safetensors.torch import load_file

    merged = merged_family("mixtral")
    model = merged.family.finetunes[0]
    out = mergekit_led.locate(
        model, None, str(tmp_path / "bf16"), score="magnitude", dtype="bf16", progress=False
    )
    samples = load_file(os.path.join(out, "fingerprint.safetensors"))
    weights = mergekit_weights(model)
    for name, weight in weights.asked().items():
        assert torch.equal(samples[name], fingerprint.sample_tensor(read_weight(weights, weight)))


# --------------------------------------------------------------------------- other scores


def test_magnitude_with_base_and_random_use_mergekit_names(merged_family, tmp_path):
    merged = merged_family("mixtral")
    finetune, base = merged.family.finetunes[0], merged.family.base
    delta = load_importance(
        mergekit_led.locate(
            finetune, None, str(tmp_path / "delta"), score="magnitude", base=base, progress=False
        )
    )
    randoms = load_importance(
        mergekit_led.locate(
            finetune, None, str(tmp_path / "random"), score="random", progress=False
        )
    )
    ft_weights, base_weights = mergekit_weights(finetune), mergekit_weights(base)
    for name, weight in ft_weights.asked().items():
        expected = (
            read_weight(ft_weights, weight)
            - read_weight(base_weights, base_weights.by_name()[name])
        ).abs()
        assert torch.equal(delta[name], expected), name
        assert tuple(randoms[name].shape) == weight.shape
    assert set(randoms.manifest.files) == set(ft_weights.asked())


def test_wanda_refuses_fused_expert_weights(merged_family, tmp_path):
    merged = merged_family("mixtral")
    with pytest.raises(
        LocateError,
        match=(
            r"--score wanda cannot score the batched expert weights of .*finetune1 "
            r"\('model.layers.0.mlp.experts.gate_up_proj', 'model.layers.0.mlp.experts.down_proj'\)"
        ),
    ):
        mergekit_led.locate(
            merged.family.finetunes[0],
            TASKS[0],
            str(tmp_path / "w"),
            score="wanda",
            progress=False,
        )


def test_save_importance_refuses_checkpoint_names_mergekit_never_asks_for(merged_family, tmp_path):
    """A store keyed by a Mixtral checkpoint's per-expert tensors would fail at merge time
    with "missing from importance store"; it is refused when written."""
    from helpers import checkpoint_shapes

    merged = merged_family("mixtral")
    shapes = checkpoint_shapes(merged.family.base)
    scores = {name: torch.ones(shape) for name, shape in shapes.items()}
    with pytest.raises(
        StoreError,
        match=(
            r"keyed by checkpoint tensors mergekit never hands to a merge method "
            r"\('model.layers.0.block_sparse_moe.experts.0.w1.weight'.*mergekit builds "
            r"'model.layers.0.mlp.experts.gate_up_proj'"
        ),
    ):
        save_importance(scores, str(tmp_path / "s"), model=merged.family.base)


# --------------------------------------------------------------------------- refused up front

UNMERGEABLE = {
    # mergekit's gpt-neox.json requires buffers transformers 5 no longer saves
    "gpt_neox": [
        f"gpt_neox.layers.{i}.attention.{n}"
        for i in (0, 1)
        for n in ("bias", "masked_bias", "rotary_emb.inv_freq")
    ],
    # mergekit's cohere.json requires q/k norms (present only with use_qk_norm=True)
    "cohere": [f"model.layers.{i}.self_attn.{n}_norm.weight" for i in (0, 1) for n in ("q", "k")],
    # mergekit's falcon.json requires lm_head.weight, which a tied Falcon does not save
    "falcon_tied": ["lm_head.weight"],
}


@pytest.mark.parametrize("name", sorted(UNMERGEABLE))
def test_architectures_mergekit_cannot_merge_are_refused_up_front(name, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    family = build_family(str(tmp_path / "models"), architecture=name, finetunes=1)
    missing = ", ".join(UNMERGEABLE[name])

    def never(*args):
        pytest.fail("the model was loaded")

    hooks = RunHooks(load_model=never)
    with pytest.raises(
        LocateError,
        match=(
            rf"Cannot locate .*base for a merge: mergekit's architecture for .* requires weights "
            rf"the checkpoint does not hold and no conversion builds: {missing}\. "
        ),
    ):
        mergekit_led.locate(family.base, TASKS[0], str(tmp_path / "s"), hooks=hooks, progress=False)
    with pytest.raises(StoreError, match=f"no conversion builds: {missing}"):
        save_importance({"x": torch.ones(1)}, str(tmp_path / "t"), model=family.base)
    # mergekit itself fails on it, with any method: the documented limitation
    config = MergeConfiguration.model_validate(
        {
            "merge_method": "linear",
            "dtype": "float32",
            "models": [
                {"model": path, "parameters": {"weight": 0.5}}
                for path in [family.base] + family.finetunes
            ],
        }
    )
    with pytest.raises(
        RuntimeError, match=(f"Tensor {UNMERGEABLE[name][0]} required but not present in model")
    ):
        run_merge(config, str(tmp_path / "linear"), options=MergeOptions(quiet=True))


# --------------------------------------------------------------------------- mergekit's suite


def test_strided_inputs_with_stores_merge_like_contiguous_ones(tmp_path):
    """The property of mergekit 0.1.5's
    ``test_state_dict_methods_accept_strided_weights_without_mutation``, for
    ``led_merging`` given the stores it requires (the upstream test passes only
    ``weight``/``t``/``density``, so its ``[led_merging]`` case fails on the missing
    ``importance``; see docs/architectures.md)."""
    from mergekit import merge_methods
    from mergekit.merge_methods import merge_state_dicts

    method = merge_methods.get("led_merging")
    generator = torch.Generator().manual_seed(42)
    tensors = [torch.randn(4, 6, generator=generator).T for _ in range(3)]  # base + 2
    assert not any(t.is_contiguous() for t in tensors)
    before = [t.clone() for t in tensors]
    stores = {
        role: save_importance(
            {"w": torch.rand(4, 6, generator=generator).T}, str(tmp_path / role), model=None
        )
        for role in ("model1", "model2", "base1", "base2")
    }
    parameters = {
        "weight": 1.0,
        "density": 0.7,
        "importance": {1: stores["model1"], 2: stores["model2"]},
        "base_importance": {1: stores["base1"], 2: stores["base2"]},
    }
    with pytest.raises(ConfigError, match="Model 1 has no `importance` parameter"):
        merge_state_dicts(
            [{"w": t} for t in tensors], method, base=0, parameters={"weight": 1.0, "density": 0.7}
        )
    expected = merge_state_dicts(
        [{"w": t.contiguous()} for t in tensors], method, base=0, parameters=parameters
    )["w"]
    actual = merge_state_dicts([{"w": t} for t in tensors], method, base=0, parameters=parameters)[
        "w"
    ]
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert bool(torch.isfinite(actual).all()) and not torch.equal(actual, tensors[0])
    for tensor, original in zip(tensors, before):
        assert torch.equal(tensor, original)


def test_without_a_local_checkpoint_fused_parameters_cannot_be_named(merged_family):
    """A model whose checkpoint cannot be read (names unverified) is keyed by the
    loader's reversed renamings; a fused parameter has no such name and is refused."""
    from transformers import AutoModelForCausalLM

    from mergekit_led.location.weight_names import scored_parameters

    llama = AutoModelForCausalLM.from_pretrained(merged_family("llama").family.base)
    scored = scored_parameters(llama, "someone/llama", None)
    assert not scored.verified
    assert set(scored.params) == {name for name, _ in llama.named_parameters()}
    mixtral = AutoModelForCausalLM.from_pretrained(merged_family("mixtral").family.base)
    with pytest.raises(
        LocateError,
        match=(
            r"Cannot key scores by mergekit's weight names for someone/mixtral: its checkpoint "
            r"is not available locally .* 'model.layers.0.mlp.experts.gate_up_proj'"
        ),
    ):
        scored_parameters(mixtral, "someone/mixtral", None)
