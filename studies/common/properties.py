"""Measure, on every seed, that the toy world has the paper's two root causes.

* **Safety is a light update that magnitude selection misreads.** The alignment
  update ``δ = θ_safety − θ_instruct`` is compared in size with the utility
  task vectors; its *critical elements* are the fewest elements that carry half
  of its first-order effect on the safety loss, ``|δ ⊙ ∇L(θ_instruct)|`` on the
  safety location set (an attribution that belongs to no merge method). We
  report how many of them each method's selection keeps from the safety task
  vector: TIES's and Breadcrumbs' magnitude masks (mergekit's own sparsifiers)
  and LED-Merging's elected, disjoint set ``T_safety``.
* **Utility updates interfere with them.** At the critical elements, the share
  where the summed utility task vectors point the other way and are larger;
  and the overlap (Jaccard) of the elected sets at the paper's top 20 %, with
  the share of the safety set the disjoint step drops.
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence

import torch

from mergekit_led.core.statistics import jaccard
from studies.common.merging import BREADCRUMBS_GAMMA, TASKS, MergeSetting

OVERLAP_DENSITY = 0.2  # the paper's overlap analysis elects the top 20 %


def load_weights(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}


def difference(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    return {name: a[name] - b[name] for name in b}


def flat(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def energy_share_elements(vector: torch.Tensor, share: float = 0.5) -> float:
    """The fraction of elements that hold ``share`` of ``vector``'s squared norm
    (small: the update is localized)."""
    squares = vector.pow(2).sort(descending=True).values
    total = float(squares.sum())
    if total == 0:
        return 0.0
    count = int((squares.cumsum(0) < share * total).sum()) + 1
    return count / vector.numel()


def critical_mask(effect: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """The fewest elements whose ``effect`` values sum to ``share`` of the total."""
    values, order = effect.sort(descending=True)
    count = int((values.cumsum(0) < share * float(values.sum())).sum()) + 1
    mask = torch.zeros(effect.numel(), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def safety_loss_gradient(model_path: str, samples, device: str) -> Dict[str, torch.Tensor]:
    """Mean gradient of the answer loss over ``samples`` at the model in ``model_path``,
    each sample tokenised as locate tokenises it (the chat template when the
    tokenizer has one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergekit_led.location.data import make_tokenization, tokenize_example

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenization = make_tokenization(tokenizer, "auto", None)
    model.eval()
    model.zero_grad(set_to_none=True)
    for index, sample in enumerate(samples):
        encoded = tokenize_example(
            tokenizer,
            [{"role": "user", "content": sample.prompt}],
            sample.response,
            tokenization,
            index,
        )
        ids = list(encoded.input_ids)
        labels = [-100] * encoded.prompt_length + ids[encoded.prompt_length :]
        out = model(
            input_ids=torch.tensor([ids], device=device),
            labels=torch.tensor([labels], device=device),
        )
        (out.loss / len(samples)).backward()
    return {
        n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None
    }


def magnitude_keep(
    task_vector: Mapping[str, torch.Tensor], setting: MergeSetting, names
) -> torch.Tensor:
    """Which elements of a task vector TIES / Breadcrumbs keep (mergekit's sparsifiers)."""
    from mergekit.sparsify import magnitude, magnitude_outliers

    masks = []
    for name in names:
        tensor = task_vector[name]
        if setting.method == "ties":
            kept = magnitude(tensor, setting.density)
        else:
            kept = magnitude_outliers(tensor, setting.density, gamma=BREADCRUMBS_GAMMA)
        masks.append((kept != 0).reshape(-1))
    return torch.cat(masks)


def led_sets(
    stores: Mapping[str, Mapping[str, str]],
    densities: Mapping[str, float],
    names,
    *,
    disjoint: bool = True,
):
    """LED-Merging's elected sets ``N_i`` and final sets ``T_i`` per task, flattened:
    the method's own election (``elect_weight``) and disjoint step, not a copy of them."""
    from mergekit_led.core.elect_merge import Election
    from mergekit_led.core.elect_merge import disjoint as make_disjoint
    from mergekit_led.method.weight_election import TaskStorePair, elect_weight
    from mergekit_led.store import load_importance

    tasks = [
        TaskStorePair(
            task,
            densities[task],
            load_importance(stores[task]["model"]),
            load_importance(stores[task]["base"]),
        )
        for task in TASKS
    ]
    elected: Dict[str, List[torch.Tensor]] = {t: [] for t in TASKS}
    final: Dict[str, List[torch.Tensor]] = {t: [] for t in TASKS}
    for name in names:
        masks = elect_weight(name, tasks, Election.both)
        kept = make_disjoint(masks) if disjoint else masks
        for task, n_mask, t_mask in zip(TASKS, masks, kept):
            elected[task].append(n_mask.reshape(-1))
            final[task].append(t_mask.reshape(-1))
    return {t: torch.cat(v) for t, v in elected.items()}, {
        t: torch.cat(v) for t, v in final.items()
    }


LAYER_TYPES = {"attention": ".self_attn.", "mlp": ".mlp."}  # Llama's weight-name parts


def layer_type_mask(weights: Mapping[str, torch.Tensor], names, part: str) -> torch.Tensor:
    """Which elements of the flattened ``names`` belong to weights named ``*part*``."""
    return torch.cat(
        [torch.full((weights[n].numel(),), part in n, dtype=torch.bool) for n in names]
    )


def measure(
    models: Mapping[str, str],
    stores: Mapping[str, Mapping[str, str]],
    safety_samples,
    selected: Mapping[str, MergeSetting],
    *,
    device: str,
) -> Dict[str, float]:
    """The world's properties on one seed (shares in [0, 1], norms as floats).

    ``models``: base / instruct / safety / math / code folders; ``stores``: the
    SNIP stores per task; ``selected``: each method's selected setting.
    """
    weights = {name: load_weights(path) for name, path in models.items()}
    names = [n for n in weights["base"] if weights["base"][n].dtype.is_floating_point]
    tau = {t: flat(difference(weights[t], weights["base"]), names) for t in TASKS}
    align = flat(difference(weights["safety"], weights["instruct"]), names)
    instruct = flat(difference(weights["instruct"], weights["base"]), names)
    utility = tau["math"] + tau["code"]

    gradient = safety_loss_gradient(models["instruct"], safety_samples, device)
    effect = (
        align
        * flat({n: gradient.get(n, torch.zeros_like(weights["base"][n])) for n in names}, names)
    ).abs()
    critical = critical_mask(effect)

    out: Dict[str, float] = {
        "norm_alignment": float(align.norm()),
        "norm_instruct": float(instruct.norm()),
        "norm_safety": float(tau["safety"].norm()),
        "norm_math": float(tau["math"].norm()),
        "norm_code": float(tau["code"].norm()),
        "alignment_half_energy_elements": energy_share_elements(align),
        "utility_half_energy_elements": energy_share_elements(tau["math"]),
        "critical_elements": int(critical.sum()) / critical.numel(),
        "critical_utility_opposes_and_larger": float(
            (
                (torch.sign(utility[critical]) == -torch.sign(align[critical]))
                & (utility[critical].abs() > align[critical].abs())
            )
            .float()
            .mean()
        ),
    }
    safety_vector = difference(weights["safety"], weights["base"])
    for method in ("ties", "breadcrumbs"):
        if method in selected:
            keep = magnitude_keep(safety_vector, selected[method], names)
            out[f"critical_kept_{method}"] = float(keep[critical].float().mean())
    if "led_merging" in selected:
        setting = selected["led_merging"]
        densities = {
            "safety": setting.safety_density,
            "math": setting.utility_density,
            "code": setting.utility_density,
        }
        elected, final = led_sets(stores, densities, names)
        out["critical_kept_led_elected"] = float(elected["safety"][critical].float().mean())
        out["critical_kept_led"] = float(final["safety"][critical].float().mean())
        out["led_safety_dropped_by_disjoint"] = 1 - int(final["safety"].sum()) / max(
            1, int(elected["safety"].sum())
        )
    elected, _ = led_sets(stores, {t: OVERLAP_DENSITY for t in TASKS}, names)
    out["jaccard20_safety_math"] = jaccard(elected["safety"], elected["math"])
    out["jaccard20_safety_code"] = jaccard(elected["safety"], elected["code"])
    out["jaccard20_math_code"] = jaccard(elected["math"], elected["code"])
    # The paper's overlap analysis by layer type: attention vs MLP weights.
    for kind, part in LAYER_TYPES.items():
        mask = layer_type_mask(weights["base"], names, part)
        if not bool(mask.any()):
            continue
        for first, second in (("safety", "math"), ("safety", "code"), ("math", "code")):
            out[f"jaccard20_{first}_{second}_{kind}"] = jaccard(
                elected[first] & mask, elected[second] & mask
            )
    return out
