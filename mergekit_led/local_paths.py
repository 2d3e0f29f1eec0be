"""An existing local path is a local model, online or offline.

mergekit's model card (``mergekit.card.is_hf``) asks the Hub whether a model
path with one ``/`` that exists locally (``models/safety``) is also a Hub
repository, to link it. Offline, or without DNS, that question raises a long
``httpx`` traceback at the very end of a merge and the finished merge is lost.
A path that exists on disk is what mergekit merged, so it is local: the card
names it as written, and the Hub is never asked. Applied by the start-up hook
when ``mergekit.card`` is imported (so plain ``mergekit-yaml`` gets it) and again
by ``merge_config`` before every merge of ours.
"""

from __future__ import annotations

import os


def treat_existing_paths_as_local() -> None:
    """Make ``mergekit.card.is_hf`` answer False for a path that exists locally."""
    import mergekit.card as card

    if getattr(card.is_hf, "_local_first", False):
        return
    asks_the_hub = card.is_hf

    def is_hf(path: str) -> bool:
        if os.path.exists(os.path.expanduser(path)):
            return False
        return asks_the_hub(path)

    is_hf._local_first = True  # type: ignore[attr-defined]
    is_hf.__doc__ = asks_the_hub.__doc__
    card.is_hf = is_hf
