"""Election statistics gathered while mergekit merges, for the model card.

``mergekit-led merge`` runs mergekit in this process; while a recording is
active, the merge method adds the counts of every weight it elects, so the
card needs no second pass over the stores.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, Optional, Sequence, Tuple

from mergekit_led.core.statistics import WeightStats

# weight name -> (the models the counts belong to, in their order; the counts)
Recorded = Dict[str, Tuple[Tuple[str, ...], WeightStats]]

_lock = threading.Lock()
_active: Optional[Recorded] = None


@contextlib.contextmanager
def recording_statistics() -> Iterator[Recorded]:
    """Collect ``weight name -> (model labels, WeightStats)`` of every weight
    merged inside the block. The labels matter: slices may list their models in
    another order, or leave some out."""
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


def record(stats: WeightStats, labels: Sequence[str]) -> None:
    """Keep ``stats`` (counts of the models ``labels``, in that order) if a
    recording is active (thread-safe: mergekit's executor may merge in threads)."""
    with _lock:
        if _active is not None:
            _active[stats.name] = (tuple(labels), stats)
