"""The importance store: per-weight scores on disk, read lazily one weight at a time.

Format reference: ``docs/store.md``.
"""

from mergekit_led.store.convert import convert_store
from mergekit_led.store.inspection import store_info, verify_store
from mergekit_led.store.manifest import MANIFEST_NAME, DatasetInfo, Manifest
from mergekit_led.store.reader import ImportanceStore, load_importance
from mergekit_led.store.writer import save_importance

__all__ = [
    "MANIFEST_NAME",
    "DatasetInfo",
    "ImportanceStore",
    "Manifest",
    "convert_store",
    "load_importance",
    "save_importance",
    "store_info",
    "verify_store",
]
