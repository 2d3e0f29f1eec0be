"""The ``README.md`` card of an importance store, so a store folder renders on the Hub.

It says what was scored on what (model and its fingerprint, dataset and its
fingerprint, score kind, samples, tokenisation, tool versions), how to use the
store in an ``led_merging`` config, and how to upload it. Everything comes from
the store's manifest; the card itself is never read back.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional

from mergekit_led._version import __version__
from mergekit_led.atomic import write_text
from mergekit_led.store.manifest import MANIFEST_NAME, Manifest, read_manifest
from mergekit_led.tables import markdown_table

CARD_NAME = "README.md"
PAPER = "https://arxiv.org/abs/2502.16770"
_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/([0-9a-f]{40})/?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_model_id(model: Optional[str]) -> Optional[str]:
    """``org/repo@commit`` for a folder of the Hugging Face Hub cache, ``org/repo``
    for a Hub id as given; None for anything else (a local checkpoint)."""
    if not model:
        return None
    snapshot = _SNAPSHOT.search(model.replace(os.sep, "/"))
    if snapshot:
        return f"{snapshot.group(1)}/{snapshot.group(2)}@{snapshot.group(3)}"
    if _HUB_ID.match(model) and not os.path.exists(model):
        return model
    return None


def store_card(manifest: Manifest) -> str:
    """The card's markdown for a store with this manifest."""
    model = manifest.model or "unknown model"
    hub_model = hub_model_id(manifest.model)
    shown_model = hub_model or model
    dataset = manifest.dataset
    data_name = dataset.name if dataset and dataset.name else None
    extra = (dataset.model_extra or {}) if dataset else {}
    hub_dataset = (
        data_name if data_name and _HUB_ID.match(data_name) and not extra.get("path") else None
    )
    tokenization = manifest.metadata.get("tokenization") or {}
    options = manifest.metadata.get("options") or {}
    versions = manifest.producer or {}

    front = ["---", "library_name: mergekit-led", "tags:"]
    front += ["- mergekit", "- led-merging", "- importance-scores"]
    if hub_model:
        front.append(f"base_model: {hub_model.split('@')[0]}")
    if hub_dataset:
        front += ["datasets:", f"- {hub_dataset}"]
    front.append("---")

    rows: List[List[object]] = [
        ["scored model", f"`{shown_model}`"],
        ["model fingerprint", _code(manifest.model_fingerprint)],
        ["score", f"`{manifest.score}`"],
    ]
    if dataset is not None:
        rows += [
            ["dataset", _code(data_name)],
            ["dataset split", _code(extra.get("split"))],
            ["dataset fingerprint", _code(dataset.fingerprint)],
            ["samples scored", dataset.samples],
            ["answer tokens (the loss tokens)", dataset.answer_tokens],
        ]
    if tokenization:
        rows += [
            ["chat template", "yes" if tokenization.get("chat_template") else "no"],
            ["max length (tokens)", tokenization.get("max_length")],
        ]
    if options:
        rows.append(["dtype", _code(options.get("dtype"))])
    rows += [
        ["weights scored", len(manifest.files)],
        ["created", manifest.created],
        [
            "written by",
            ", ".join(f"{name} {version}" for name, version in versions.items()) or None,
        ],
    ]

    title_data = f" on {data_name}" if data_name else ""
    lines = [
        *front,
        "",
        f"# LED-Merging importance scores: {manifest.score} of {shown_model}{title_data}",
        "",
        f"Per-weight importance scores for [LED-Merging]({PAPER}) (Locate, Elect, "
        "Disjoint; Ma et al., ACL 2025), written by "
        f"[mergekit-led](https://pypi.org/project/mergekit-led/) {__version__}. The folder is "
        f"an importance store: `{MANIFEST_NAME}` (the manifest) and safetensors files holding "
        "one float32 score tensor per weight, named and shaped like the weights of the "
        "scored model.",
        "",
        markdown_table(["", "value"], rows),
        "",
        "## Use it in a merge",
        "",
        "In an `led_merging` config, the fine-tuned model's store on its task's data is "
        "`importance`, and the base model's store on the same data is `base_importance`. "
        "This store scores the model above: give it as `importance` of that model, or, if "
        "that model is the merge's base model, as `base_importance` of the fine-tuned model "
        "whose task data it was scored on. A Hub store is named like a mergekit model, "
        "`org/repo[/folder][@revision]`:",
        "",
        "```yaml",
        "merge_method: led_merging",
        "base_model: BASE_MODEL",
        "models:",
        "  - model: FINE_TUNED_MODEL",
        "    parameters:",
        "      density: 0.1",
        "      importance: ORG/REPO/FOLDER_OF_THE_FINE_TUNED_STORE",
        "      base_importance: ORG/REPO/FOLDER_OF_THE_BASE_STORE",
        "```",
        "",
        "`mergekit-led merge config.yml out/` (or plain `mergekit-yaml` with mergekit-led "
        "installed) fetches it through `huggingface_hub` (its cache, `HF_TOKEN`, "
        "`HF_HUB_OFFLINE`), and refuses it for a model whose weights do not match the "
        "fingerprint above.",
        "",
        "## Upload",
        "",
        "```bash",
        "hf upload ORG/REPO path/to/this/store FOLDER   # huggingface_hub's CLI",
        "```",
        "",
        "or `huggingface_hub.HfApi().upload_folder(repo_id='ORG/REPO', "
        "folder_path='path/to/this/store', path_in_repo='FOLDER')`.",
        "",
    ]
    return "\n".join(lines)


def write_store_card(store: str) -> str:
    """Write (or replace) the ``README.md`` card of the store folder ``store``."""
    path = os.path.join(store, CARD_NAME)
    write_text(path, store_card(read_manifest(store)))
    return path


def _code(value: Optional[object]) -> Optional[str]:
    return f"`{value}`" if value not in (None, "") else None
