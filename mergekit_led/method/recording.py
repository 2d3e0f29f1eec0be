"""Election statistics gathered while mergekit merges, for the model card.

``mergekit-led merge`` runs mergekit in this process; while a recording is
active, the merge method adds the counts of every weight it elects, so the
card needs no second pass over the stores.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, Optional

from mergekit_led.core.statistics import WeightStats

_lock = threading.Lock()
_active: Optional[Dict[str, WeightStats]] = None


@contextlib.contextmanager
def recording_statistics() -> Iterator[Dict[str, WeightStats]]:
    """Collect ``weight name -> WeightStats`` of every weight merged inside the block."""
    global _active
    with _lock:
        if _active is not None:
            raise RuntimeError("election statistics are already being recorded")
        _active = {}
        recorded = _active
    try:
        yield recorded
    finally:
        with _lock:
            _active = None


def is_recording() -> bool:
    return _active is not None


def record(stats: WeightStats) -> None:
    """Keep ``stats`` if a recording is active (thread-safe: mergekit's executor
    may merge in several threads)."""
    with _lock:
        if _active is not None:
            _active[stats.name] = stats
