"""Busy processes beside a benchmark: the "shared machine" of ``--load N``.

Each is a Python process spinning on one core until stopped, the same for every
method measured while they run, so ratios measured in one run compare methods
under the same competition for the cores.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator, List

# Spins until stopped, or until its parent is gone (a benchmark killed by a signal
# runs no clean-up: its busy processes must not spin on without it).
_SPIN = (
    "import os, sys\n"
    "while os.getppid() == int(sys.argv[1]):\n"
    "    for _ in range(1_000_000):\n"
    "        pass\n"
)


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[List[subprocess.Popen]]:
    """``count`` spinning processes for the duration of the ``with`` block."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())]) for _ in range(count)
    ]
    try:
        yield procs
    finally:
        for proc in procs:  # only the processes started here
            proc.kill()
        for proc in procs:
            proc.wait()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages of ``/proc/loadavg`` ('' where there is none)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return ""
