"""The "LED-Merging" section of a merged model's card (``README.md``).

``mergekit-led merge`` adds it after mergekit writes its card; ``mergekit-led
card CONFIG OUT_PATH`` adds it to the output of a plain ``mergekit-yaml`` run.
The section records each model's density and weight, where its importance
scores came from (from the stores' manifests), and the share of every layer's
weights taken from each model's task vector (``|T_i| / N``). Adding it again
replaces the previous section.
"""

from __future__ import annotations

import os
from typing import List, Optional

from mergekit.config import MergeConfiguration

from mergekit_led._version import __version__
from mergekit_led.analysis.config_analysis import Analysis, analyze_config, short_label
from mergekit_led.atomic import write_text
from mergekit_led.errors import ConfigError
from mergekit_led.store import load_importance
from mergekit_led.tables import markdown_table

START = "<!-- mergekit-led:led-merging:start -->"
END = "<!-- mergekit-led:led-merging:end -->"
README = "README.md"


def _store_row(role: str, model: str, path: str) -> List[object]:
    manifest = load_importance(path).manifest
    dataset = manifest.dataset
    return [
        role,
        f"`{model}`",
        f"`{path}`",
        manifest.score,
        f"`{dataset.name}`" if dataset and dataset.name else None,
        dataset.samples if dataset else None,
        dataset.answer_tokens if dataset else None,
        (dataset.fingerprint or "")[:16] if dataset else None,
    ]


def led_section(config: MergeConfiguration, analysis: Optional[Analysis] = None) -> str:
    """The section's markdown for an led_merging ``config``."""
    analysis = analysis or analyze_config(config)
    labels = [short_label(label) for label in analysis.labels]
    base = str(config.base_model)
    lines = [
        START,
        "## LED-Merging",
        "",
        f"Merged with [LED-Merging](https://arxiv.org/abs/2502.16770) (Locate, Elect, "
        f"Disjoint; Ma et al., ACL 2025) by mergekit-led {__version__}: election "
        f"`{analysis.election}` (an element is important to a task when it is in the top "
        f"*density* of both the fine-tuned and the base model's importance scores on that "
        f"task's data), disjoint `{str(analysis.disjoint).lower()}`, base model `{base}`.",
        "",
        "### Models",
        "",
    ]
    if analysis.varies_per_slice:
        lines += [
            "The parameters of some models vary per slice; each set is listed with the "
            "slices it applies to.",
            "",
        ]
        lines += markdown_table(
            ["model", "used in", "weight (λ)", "density (r)"],
            [
                [f"`{m.label}`", m.where or "everywhere", f"{m.weight:g}", f"{m.density:g}"]
                for m in analysis.models
            ],
        ).split("\n")
    else:
        lines += markdown_table(
            ["model", "weight (λ)", "density (r)"],
            [[f"`{m.label}`", f"{m.weight:g}", f"{m.density:g}"] for m in analysis.models],
        ).split("\n")
    lines += ["", "### Importance scores", ""]
    rows = []
    for label, importance, base_importance in dict.fromkeys(
        (m.label, m.importance, m.base_importance) for m in analysis.models
    ):
        rows.append(_store_row(f"{short_label(label)} (fine-tuned)", label, importance))
        rows.append(_store_row(f"{short_label(label)} (base)", base, base_importance))
    lines += markdown_table(
        [
            "scores of",
            "scored model",
            "store",
            "score",
            "dataset",
            "samples",
            "answer tokens",
            "dataset fingerprint",
        ],
        rows,
    ).split("\n")
    lines += [
        "",
        "### Share of the weights taken from each model",
        "",
        "Per layer, the share of weight elements whose value is the base plus that "
        "model's task vector (|T_i| / N); every other element is the base model's. "
        "`elected` is |N_i| / N before the disjoint step.",
        "",
    ]
    header = ["weights", "N"]
    for label in labels:
        header += [f"{label}", f"{label} elected"]
    if analysis.disjoint:
        header.append("base only")
    rows = []
    for group in [*analysis.by_layer(), analysis.overall()]:
        row = [group.name, f"{group.numel:,}"]
        for i in range(len(labels)):
            row += [
                f"{group.share(i):.2%}",
                f"{group.elected[i] / group.numel:.2%}" if group.numel else "–",
            ]
        if analysis.disjoint:
            row.append(f"{1 - sum(group.kept) / group.numel:.2%}" if group.numel else "–")
        rows.append(row)
    rows[-1][0] = "**all weights**"
    lines += markdown_table(header, rows).split("\n")
    lines += ["", END, ""]
    return "\n".join(lines)


def add_led_section(
    config: MergeConfiguration, out_path: str, analysis: Optional[Analysis] = None
) -> str:
    """Append (or replace) the LED-Merging section of ``out_path``/README.md.

    Returns the README path. A README is created when the output has none.
    """
    if not os.path.isdir(out_path):
        raise ConfigError(f"Merge output {out_path} is not a folder.")
    section = led_section(config, analysis)
    readme = os.path.join(out_path, README)
    text = ""
    if os.path.isfile(readme):
        with open(readme, encoding="utf-8") as f:
            text = f.read()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        if not text:
            text = (
                "---\nlibrary_name: transformers\ntags:\n- mergekit\n- merge\n- led-merging\n---\n"
            )
        text = text.rstrip("\n") + "\n\n" + section
    write_text(readme, text)
    return readme
