"""Writes that are one step for readers: written aside, then renamed into place.

A folder or file at the target path is therefore always complete. Staging
folders are named ``.NAME.partial-<id>`` beside the target, so a run killed
mid-write leaves only a hidden folder that no reader mistakes for a result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Callable, Iterator

STAGING_MARK = ".partial-"


def staging_path(target: str) -> str:
    """A fresh hidden path beside ``target`` for writing it aside."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}{STAGING_MARK}{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def staged_directory(target: str) -> Iterator[str]:
    """Yield an empty staging folder; on success it replaces ``target`` whole.

    On any error (or interrupt) the staging folder is removed and ``target`` is
    left as it was.
    """
    target = os.path.abspath(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    staging = staging_path(target)
    os.makedirs(staging)
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source: str, target: str) -> None:
    """Move folder ``source`` to ``target``, replacing a folder already there."""
    if not os.path.lexists(target):
        os.rename(source, target)
        return
    old = f"{source}.old"
    os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)


def write_file(target: str, write: Callable[[str], None]) -> None:
    """Call ``write(path)`` on a temporary path beside ``target``, then rename it
    over ``target`` (one step on POSIX filesystems)."""
    temporary = f"{staging_path(target)}.tmp"
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(target: str, text: str) -> None:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    write_file(target, write)
