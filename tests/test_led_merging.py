"""The led_merging method against tests/reference.py, through merge_state_dicts,
mergekit's YAML merge (in process) and the real ``mergekit-yaml`` console script."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import reference as ref
import torch
import yaml
from helpers import DENSITIES, make_scores
from safetensors.torch import load_file

from mergekit_led import save_importance

ARXIV = "https://arxiv.org/abs/2502.16770"
OTHER_WEIGHTS = (0.8, 1.25, -0.5)


def merge_sd(models, **parameters):
    from mergekit.merge_methods import merge_state_dicts

    base = parameters.pop("base", "base")
    kwargs = {}
    for key in ("dtype", "out_dtype"):
        if key in parameters:
            kwargs[key] = parameters.pop(key)
    return merge_state_dicts(models, "led_merging", parameters=parameters, base=base, **kwargs)


def sd_inputs(
    family_state_dicts,
    task_stores,
    count,
    *,
    dtype=None,
    densities=DENSITIES,
    weights=None,
    stores=None,
    **shared,
):
    """Models keyed by id and per-model parameters as dicts keyed by id."""
    stores = stores or task_stores
    ids = [f"finetune{i}" for i in range(1, count + 1)]

    def cast(sd):
        return {k: v.to(dtype) for k, v in sd.items()} if dtype is not None else sd

    models = {"base": cast(family_state_dicts["base"])}
    for i in ids:
        models[i] = cast(family_state_dicts[i])
    params = {
        "density": {i: densities[k] for k, i in enumerate(ids)},
        "importance": {i: stores[k].model_store for k, i in enumerate(ids)},
        "base_importance": {i: stores[k].base_store for k, i in enumerate(ids)},
        **shared,
    }
    if weights is not None:
        params["weight"] = {i: weights[k] for k, i in enumerate(ids)}
    return models, params


def reference_for(
    models, task_stores, count, *, densities=DENSITIES, weights=None, election="both", disjoint=True
):
    ids = [f"finetune{i}" for i in range(1, count + 1)]
    return ref.led_merge_state_dict(
        models["base"],
        [models[i] for i in ids],
        [t.model_scores for t in task_stores[:count]],
        [t.base_scores for t in task_stores[:count]],
        densities[:count],
        weights[:count] if weights is not None else None,
        election,
        disjoint,
    )


def check_against_reference(out, models, expected, count, weights, disjoint):
    ids = [f"finetune{i}" for i in range(1, count + 1)]
    assert set(out) == set(models["base"])
    w = list(weights[:count]) if weights is not None else [1.0] * count
    elected_anything = False
    for name, (_, sets) in expected.items():
        elected_anything |= any(bool(s.any()) for s in sets)
        ref.assert_matches_reference(
            out[name],
            models["base"][name],
            [models[i][name] for i in ids],
            sets,
            w,
            exact=disjoint or count == 1,
            name=name,
        )
    assert elected_anything, "test setup elects nothing: it would not test the merge"


# --------------------------------------------------------------------------- merge_state_dicts


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("election", ref.ELECTIONS)
@pytest.mark.parametrize("disjoint", [True, False])
def test_merge_state_dicts_matches_reference(
    family_state_dicts, task_stores, count, election, disjoint
):
    weights = None if election == "both" and disjoint else OTHER_WEIGHTS
    models, params = sd_inputs(
        family_state_dicts,
        task_stores,
        count,
        weights=weights,
        election=election,
        disjoint=disjoint,
    )
    out = merge_sd(models, **params)
    expected = reference_for(
        models, task_stores, count, weights=weights, election=election, disjoint=disjoint
    )
    check_against_reference(out, models, expected, count, weights, disjoint)


def test_default_election_is_both_and_disjoint_on(family_state_dicts, task_stores):
    models, params = sd_inputs(family_state_dicts, task_stores, 3)
    out_default = merge_sd(models, **params)
    out_explicit = merge_sd(models, **params, election="both", disjoint=True)
    for name in out_default:
        assert torch.equal(out_default[name], out_explicit[name]), name


def test_default_weight_is_one(family_state_dicts, task_stores):
    models, params = sd_inputs(family_state_dicts, task_stores, 2)
    out = merge_sd(models, **params)
    out_ones = merge_sd(models, **params, weight={"finetune1": 1.0, "finetune2": 1.0})
    for name in out:
        assert torch.equal(out[name], out_ones[name]), name


def test_sequence_parameters_in_input_order(family_state_dicts, task_stores):
    """Models as a list, per-model parameters as sequences (non-base inputs in order)."""
    from mergekit.merge_methods import merge_state_dicts

    models, params = sd_inputs(family_state_dicts, task_stores, 3, weights=OTHER_WEIGHTS)
    as_list = [models["base"], models["finetune1"], models["finetune2"], models["finetune3"]]
    seq_params = {
        "density": list(DENSITIES),
        "importance": [t.model_store for t in task_stores],
        "base_importance": [t.base_store for t in task_stores],
        "weight": list(OTHER_WEIGHTS),
    }
    out = merge_state_dicts(as_list, "led_merging", parameters=seq_params, base=0)
    expected = reference_for(models, task_stores, 3, weights=OTHER_WEIGHTS)
    check_against_reference(out, models, expected, 3, OTHER_WEIGHTS, True)
    out_dict = merge_sd(models, **params)
    for name in out:
        assert torch.equal(out[name], out_dict[name]), name


def test_base_first_or_last_does_not_matter(family_state_dicts, task_stores):
    models, params = sd_inputs(family_state_dicts, task_stores, 2)
    reordered = {
        "finetune2": models["finetune2"],
        "finetune1": models["finetune1"],
        "base": models["base"],
    }
    a = merge_sd(models, **params)
    b = merge_sd(reordered, **params)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_k_zero_output_is_base_bit_for_bit(family_state_dicts, task_stores):
    # the largest weight has 96*32 = 3072 elements: floor(1e-4 * 3072) = 0 everywhere
    models, params = sd_inputs(
        family_state_dicts, task_stores, 3, densities=(1e-4, 1e-4, 1e-4), weights=OTHER_WEIGHTS
    )
    for election in ref.ELECTIONS:
        out = merge_sd(models, **params, election=election)
        for name, tensor in models["base"].items():
            assert torch.equal(out[name], tensor), (election, name)


def test_all_zero_base_scores_never_elected_one_model_ratio_one(
    family_state_dicts, task_stores, weight_shapes, llama_family, tmp_path
):
    """One model, density 1: zero scores must still never be elected (spec 2)."""
    model_scores = make_scores(weight_shapes, seed=77)
    zero_scores = {name: torch.zeros(shape) for name, shape in weight_shapes.items()}
    ms = save_importance(model_scores, str(tmp_path / "ft"), model=llama_family.finetunes[0])
    zs = save_importance(zero_scores, str(tmp_path / "base_zero"), model=llama_family.base)
    zm = save_importance(zero_scores, str(tmp_path / "ft_zero"), model=llama_family.finetunes[0])
    base = family_state_dicts["base"]
    ft = family_state_dicts["finetune1"]
    models = {"base": base, "finetune1": ft}

    def run(importance, base_importance, election):
        return merge_sd(
            models,
            density={"finetune1": 1.0},
            importance={"finetune1": importance},
            base_importance={"finetune1": base_importance},
            election=election,
        )

    # both: top(I, 1) & top(0, 1) = empty -> base everywhere
    out = run(ms, zs, "both")
    for name in base:
        assert torch.equal(out[name], base[name]), name
    # base_only: top(0, 1) minus ... = empty -> base everywhere
    out = run(ms, zs, "base_only")
    for name in base:
        assert torch.equal(out[name], base[name]), name
    # model_only: top(I, 1) minus empty = {I > 0}
    out = run(ms, zs, "model_only")
    for name in base:
        chosen = model_scores[name] > 0
        assert torch.equal(out[name][chosen], ft[name][chosen]), name
        assert torch.equal(out[name][~chosen], base[name][~chosen]), name
    # all scores zero on both sides: nothing is elected under any election
    for election in ref.ELECTIONS:
        out = run(zm, zs, election)
        for name in base:
            assert torch.equal(out[name], base[name]), (election, name)


def test_zero_scored_weight_in_family_stores_stays_base(family_state_dicts, task_stores):
    """Task 1's base scores of model.norm.weight are all zero: never elected."""
    models, params = sd_inputs(family_state_dicts, task_stores, 1, densities=(1.0, 1.0, 1.0))
    out = merge_sd(models, **params)
    assert torch.equal(out["model.norm.weight"], models["base"]["model.norm.weight"])
    # while a weight with positive scores at density 1 is elected where both are > 0
    name = "model.layers.0.mlp.up_proj.weight"
    chosen = (task_stores[0].model_scores[name] > 0) & (task_stores[0].base_scores[name] > 0)
    assert chosen.any() and not chosen.all()
    assert torch.equal(out[name][chosen], models["finetune1"][name][chosen])
    assert torch.equal(out[name][~chosen], models["base"][name][~chosen])


@pytest.mark.parametrize("disjoint", [True, False])
def test_bfloat16_inputs(family_state_dicts, task_stores, disjoint):
    weights = (1.0, 1.0, 1.0) if disjoint else OTHER_WEIGHTS
    models, params = sd_inputs(
        family_state_dicts, task_stores, 3, dtype=torch.bfloat16, weights=weights, disjoint=disjoint
    )
    out = merge_sd(models, **params)
    expected = reference_for(models, task_stores, 3, weights=weights, disjoint=disjoint)
    for name, tensor in out.items():
        assert tensor.dtype == torch.bfloat16, name
    check_against_reference(out, models, expected, 3, weights, disjoint)
    if disjoint:
        # weight 1, one task vector per element: bf16 theta is reproduced exactly
        for name, (_, sets) in expected.items():
            for i, s in enumerate(sets, start=1):
                assert torch.equal(out[name][s], models[f"finetune{i}"][name][s]), name


def test_bfloat16_arithmetic_is_float32(family_state_dicts, task_stores):
    """Weights that are not exact in bf16 arithmetic: the result is the float32
    (or wider) evaluation cast once to bf16, not a bf16 evaluation."""
    weights = (0.3, 0.7, 1.9)
    models, params = sd_inputs(
        family_state_dicts, task_stores, 3, dtype=torch.bfloat16, weights=weights
    )
    out = merge_sd(models, **params)
    expected = reference_for(models, task_stores, 3, weights=weights)
    check_against_reference(out, models, expected, 3, weights, True)


def test_out_dtype_cast(family_state_dicts, task_stores):
    models, params = sd_inputs(family_state_dicts, task_stores, 2, weights=OTHER_WEIGHTS)
    out32 = merge_sd(models, **params)
    out16 = merge_sd(models, **params, out_dtype=torch.bfloat16)
    for name in out32:
        assert out16[name].dtype == torch.bfloat16
        assert torch.equal(out16[name], out32[name].to(torch.bfloat16)), name


def test_repeated_runs_bit_identical(family_state_dicts, task_stores):
    models, params = sd_inputs(
        family_state_dicts, task_stores, 3, weights=OTHER_WEIGHTS, disjoint=False
    )
    a = merge_sd(models, **params)
    b = merge_sd(models, **params)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_format1_store_merges_identically(family_state_dicts, task_stores, task_stores_format1):
    for election, disjoint in (("both", True), ("model_only", False)):
        models, params = sd_inputs(
            family_state_dicts,
            task_stores,
            3,
            weights=OTHER_WEIGHTS,
            election=election,
            disjoint=disjoint,
        )
        _, plain = sd_inputs(
            family_state_dicts,
            task_stores_format1,
            3,
            weights=OTHER_WEIGHTS,
            election=election,
            disjoint=disjoint,
        )
        a = merge_sd(models, **params)
        b = merge_sd(models, **plain)
        for name in a:
            assert torch.equal(a[name], b[name]), (election, name)


def test_inputs_not_modified(family_state_dicts, task_stores):
    models, params = sd_inputs(family_state_dicts, task_stores, 2)
    copies = {k: {n: t.clone() for n, t in sd.items()} for k, sd in models.items()}
    merge_sd(models, **params)
    for k, sd in models.items():
        for n, t in sd.items():
            assert torch.equal(t, copies[k][n]), (k, n)


# --------------------------------------------------------------------------- registration


def test_registered_once_and_register_is_idempotent():
    from mergekit.merge_methods import get, registered_methods

    import mergekit_led

    mergekit_led.register()
    mergekit_led.register()
    names = [m.spec.name for m in registered_methods()]
    assert names.count("led_merging") == 1
    method = get("led_merging")
    assert method.spec.pretty_name == "LED-Merging"
    assert method.spec.reference_url == ARXIV


@pytest.mark.parametrize(
    "code",
    [
        "import mergekit_led, mergekit.merge_methods as mm; mergekit_led.register()",
        "import mergekit.merge_methods as mm; import mergekit_led; mergekit_led.register(); "
        "mergekit_led.register()",
        "import mergekit_led.method.led_merging; import mergekit.merge_methods as mm; "
        "import mergekit_led; mergekit_led.register()",
    ],
    ids=["led-first", "mergekit-first", "module-first"],
)
def test_registration_in_any_import_order(code, child_env):
    check = (
        "; names = [m.spec.name for m in mm.registered_methods()]"
        "; assert names.count('led_merging') == 1, names"
        "; assert mm.get('led_merging').spec.pretty_name == 'LED-Merging'"
        "; print('OK')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code + check],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


# --------------------------------------------------------------------------- YAML, in process


def read_output(out_dir):
    tensors = {}
    for f in sorted(glob.glob(os.path.join(out_dir, "*.safetensors"))):
        tensors.update(load_file(f))
    return tensors


def run_yaml_in_process(config_path, out_dir):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    with open(config_path, encoding="utf-8") as f:
        source = f.read()
    config = MergeConfiguration.model_validate(yaml.safe_load(source))
    run_merge(
        config,
        str(out_dir),
        options=MergeOptions(quiet=True, copy_tokenizer=False),
        config_source=source,
    )
    return read_output(str(out_dir))


@pytest.mark.parametrize(
    "count,election,disjoint,weights,dtype",
    [
        (3, "both", True, OTHER_WEIGHTS, "float32"),
        (2, "model_only", False, (0.5, 2.0), "float32"),
        (1, "base_only", True, None, "float32"),
        (3, "both", True, None, "bfloat16"),
    ],
)
def test_mergekit_yaml_in_process(
    tmp_path,
    llama_family,
    family_state_dicts,
    task_stores,
    yaml_writer,
    led_model_entries,
    count,
    election,
    disjoint,
    weights,
    dtype,
):
    config = yaml_writer(
        tmp_path / "led.yml",
        base=llama_family.base,
        models=led_model_entries(task_stores, count, weights=weights),
        dtype=dtype,
        parameters={"election": election, "disjoint": disjoint},
    )
    out = run_yaml_in_process(config, tmp_path / "out")
    torch_dtype = getattr(torch, dtype)
    models = {
        k: {n: t.to(torch_dtype) for n, t in sd.items()} for k, sd in family_state_dicts.items()
    }
    expected = reference_for(
        models, task_stores, count, weights=weights, election=election, disjoint=disjoint
    )
    check_against_reference(out, models, expected, count, weights, disjoint)


# --------------------------------------------------------------------------- mergekit-yaml CLI


@pytest.mark.slow
def test_mergekit_yaml_console_script(
    tmp_path,
    llama_family,
    family_state_dicts,
    task_stores,
    yaml_writer,
    led_model_entries,
    console_script,
    child_env,
):
    """The real console script in a fresh interpreter: the method is found through the
    startup hook alone, the output matches the reference, the card names the method."""
    weights = (1.0, 0.6, 1.4)
    config = yaml_writer(
        tmp_path / "led.yml",
        base=llama_family.base,
        models=led_model_entries(task_stores, 3, weights=weights),
        parameters={"election": "both", "disjoint": True},
    )
    out_dir = tmp_path / "merged"
    proc = subprocess.run(
        [console_script("mergekit-yaml"), config, str(out_dir), "--copy-tokenizer"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = read_output(str(out_dir))
    expected = reference_for(family_state_dicts, task_stores, 3, weights=weights)
    check_against_reference(out, family_state_dicts, expected, 3, weights, True)
    readme = (out_dir / "README.md").read_text()
    assert "LED-Merging" in readme
    assert ARXIV in readme

    # the same config merged again (here in process) gives bit-identical tensors
    again = run_yaml_in_process(config, tmp_path / "merged_again")
    assert set(again) == set(out)
    for name in out:
        assert torch.equal(out[name], again[name]), name
