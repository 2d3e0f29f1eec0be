"""Where the sweep merges each setting: the scratch root (a RAM disk when the
model fits, else ``OUT/.scratch``), a folder per setting named with its
writer, and the removal of the folders killed sweeps left there."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Callable, List, Optional

from mergekit_led.atomic import StaleArea, writer_id

# A setting's scratch folder: sweep-setting-<index>-<pid>@<host>-<random>.
SCRATCH_PREFIX = "sweep-setting-"
_SCRATCH_NAME = re.compile(
    rf"{SCRATCH_PREFIX}\d+-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+?)-[A-Za-z0-9_]+"
)


def remove_killed_scratch(scratch_root: str, say: Callable[[str], None]) -> List[str]:
    """Remove the setting folders of sweeps killed on this host (their process is
    gone): a kill skips the clean-up, and on the RAM disk a merged model would
    hold its memory until a reboot. Only folders named as this module names them
    are considered; a running sweep's, another host's or a user's are kept."""
    removed = []
    for entry in sorted(os.listdir(scratch_root)):
        match = _SCRATCH_NAME.fullmatch(entry)
        if match is None:
            continue
        area = StaleArea(os.path.join(scratch_root, entry), int(match["pid"]), match["host"])
        if area.writer_state() == "dead":
            shutil.rmtree(area.path, ignore_errors=True)
            removed.append(area.path)
            say(f"Removed {area.path}, left by a killed sweep (process {area.pid}).")
    return removed


def scratch_root(config, out: str, scratch: Optional[str]) -> str:
    """Where settings are merged: ``scratch`` when given; else a RAM disk
    (``/dev/shm``) with room for two copies of the base model; else ``OUT/.scratch``."""
    if scratch:
        os.makedirs(scratch, exist_ok=True)
        return scratch
    size = model_bytes(config["base_model"])
    ram = "/dev/shm"
    if size and os.path.isdir(ram) and os.access(ram, os.W_OK):
        # Room on the RAM disk is not room in RAM: the merge there and the model
        # loaded from it both take memory, so both must fit twice over.
        free_ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if shutil.disk_usage(ram).free > 2 * size and free_ram > 4 * size:
            return ram
    path = os.path.join(out, ".scratch")
    os.makedirs(path, exist_ok=True)
    return path


def model_bytes(model: str) -> int:
    if not os.path.isdir(model):
        return 0
    return sum(
        os.path.getsize(os.path.join(model, name))
        for name in os.listdir(model)
        if name.endswith((".safetensors", ".bin"))
    )


def setting_folder(scratch_root: str, index: int) -> str:
    """A fresh folder for setting ``index``, named with this process
    (``sweep-setting-<index>-<pid>@<host>-<random>``)."""
    return tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{index}-{writer_id()}-", dir=scratch_root)
