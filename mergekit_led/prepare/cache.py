"""The content-addressed store cache: one complete importance store per key.

Layout under the cache folder (``--cache-dir``, else ``$MERGEKIT_LED_CACHE``,
else ``$XDG_CACHE_HOME/mergekit-led`` or ``~/.cache/mergekit-led``)::

    stores/<key>/          a complete store: led_importance.json, *.safetensors,
                           README.md, and led_cache.json (what the key stands for)
    work/<key>...          a locate run in progress (or killed): never read as a store
    locks/<key>.lock       held while a process computes or removes that key
    verified/<key>.json    the identity each file of the entry had when its hash
                           last matched (see ``_checksum_problem``)

A store is written in ``work/`` and renamed into ``stores/`` in one step, and
only by the process holding the key's lock, so two runs never write the same
entry and a folder in ``stores/`` is never half-written. ``led_cache.json``
lists every file with its size and SHA-256: an entry copied only partly (an
interrupted ``rsync``, or a preallocating copy whose tail is still zeros) or
whose files were swapped with another entry's does not count as complete
either. ``lookup`` (what a merge uses) checks every file against its hash
before serving the entry: a file whose identity (device, inode, size, mtime
and ctime) is the one recorded when it last matched is not hashed again.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from mergekit_led._version import __version__
from mergekit_led.atomic import fsync_folder, fsync_tree, write_text
from mergekit_led.errors import CacheError, StoreError

ENVIRONMENT_VARIABLE = "MERGEKIT_LED_CACHE"
RECORD_NAME = "led_cache.json"
RECORD_FORMAT = "mergekit-led-cache-entry"
# 2: every file's SHA-256 besides its size (version 1 entries are recomputed).
RECORD_VERSION = 2
_KEY = re.compile(r"^[0-9a-f]{8,64}$")


def default_store_cache_dir() -> str:
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "mergekit-led")


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: str
    record: Optional[Dict[str, Any]]  # None when the entry is broken
    problem: Optional[str] = None  # why it does not count as complete

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def size(self) -> int:
        return _folder_size(self.path)

    @property
    def last_used(self) -> float:
        try:
            return os.stat(os.path.join(self.path, RECORD_NAME)).st_mtime
        except OSError:
            return os.stat(self.path).st_mtime


class StoreCache:
    def __init__(self, root: Optional[str] = None):
        self.root = os.path.abspath(os.path.expanduser(root)) if root else default_store_cache_dir()
        self.stores = os.path.join(self.root, "stores")
        self.work = os.path.join(self.root, "work")
        self.locks = os.path.join(self.root, "locks")
        self.verified = os.path.join(self.root, "verified")

    def __repr__(self) -> str:
        return f"StoreCache({self.root!r})"

    # entries -----------------------------------------------------------------
    def entry_path(self, key: str) -> str:
        _check_key(key)
        return os.path.join(self.stores, key)

    def entry(self, key: str, *, verify: bool = False) -> Optional[CacheEntry]:
        """The entry of ``key`` as it is on disk (complete or not); None when absent.
        Sizes are always checked; ``verify`` also hashes every file."""
        path = self.entry_path(key)
        if not os.path.isdir(path):
            return None
        record, problem = _read_record(path, key)
        if problem is None and verify:
            stamp_path = os.path.join(self.verified, f"{key}.json")
            stamps = _read_stamps(stamp_path)
            problem, checked = _checksum_problem(path, record["files"], stamps)
            if problem is not None:
                record = None
            elif checked != stamps:
                with contextlib.suppress(OSError):  # a read-only cache: hash again next time
                    os.makedirs(self.verified, exist_ok=True)
                    write_text(stamp_path, json.dumps(checked))
        return CacheEntry(key, path, record, problem)

    def lookup(self, key: str) -> Optional[CacheEntry]:
        """The complete entry of ``key``, its files checked against their recorded
        checksums, or None; marks it used (for ``prune``)."""
        entry = self.entry(key, verify=True)
        if entry is None or not entry.complete:
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves its entries
            os.utime(os.path.join(entry.path, RECORD_NAME))
        return entry

    def entries(self, *, verify: bool = False) -> List[CacheEntry]:
        if not os.path.isdir(self.stores):
            return []
        names = sorted(n for n in os.listdir(self.stores) if _KEY.match(n))
        return [e for e in (self.entry(n, verify=verify) for n in names) if e is not None]

    def leftovers(self) -> List[str]:
        """Paths a killed run left behind (work folders, half-replaced entries):
        only names the cache itself writes (a key, or a key with a suffix), so a
        folder the user keeps there (a merged model) is neither counted nor pruned."""
        found = []
        if os.path.isdir(self.work):
            found += [
                os.path.join(self.work, n)
                for n in sorted(os.listdir(self.work))
                if _key_of_leftover(n) is not None
            ]
        if os.path.isdir(self.stores):
            found += [
                os.path.join(self.stores, n)
                for n in sorted(os.listdir(self.stores))
                if not _KEY.match(n) and _key_of_leftover(n) is not None
            ]
        return found

    # computing ---------------------------------------------------------------
    @contextlib.contextmanager
    def locked(
        self, key: str, *, wait: bool = True, on_wait: Optional[Callable[[], None]] = None
    ) -> Iterator[None]:
        """Hold the lock of ``key`` (between processes; released if a holder dies)."""
        from filelock import FileLock, Timeout

        os.makedirs(self.locks, exist_ok=True)
        lock = FileLock(os.path.join(self.locks, f"{_check_key(key)}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if not wait:
                raise CacheError(
                    f"Cache entry {key} is in use by another mergekit-led process "
                    f"(lock {lock.lock_file}); try again when it has finished."
                ) from None  # cause: filelock's Timeout adds nothing
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def compute(
        self,
        key: str,
        record: Dict[str, Any],
        write: Callable[[str], None],
        *,
        on_wait: Optional[Callable[[], None]] = None,
    ) -> Tuple[CacheEntry, bool]:
        """The entry of ``key``, computed by ``write(folder)`` unless another
        process already did; returns it and whether this call computed it.

        ``write`` must leave a complete store at ``folder`` (``locate`` does,
        keeping its progress checkpoint beside it so a killed run can resume).
        """
        with self.locked(key, on_wait=on_wait):
            entry = self.lookup(key)
            if entry is not None:
                return entry, False
            os.makedirs(self.work, exist_ok=True)
            folder = os.path.join(self.work, key)
            self._clear_work(key)
            write(folder)
            files = {
                name: _file_record(os.path.join(folder, name))
                for name in sorted(os.listdir(folder))
                if name != RECORD_NAME
            }
            full_record = {
                "format": RECORD_FORMAT,
                "version": RECORD_VERSION,
                "key": key,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "mergekit_led": __version__,
                **record,
                "files": files,
            }
            write_text(os.path.join(folder, RECORD_NAME), json.dumps(full_record, indent=2))
            target = self.entry_path(key)
            os.makedirs(self.stores, exist_ok=True)
            if os.path.lexists(target):  # a broken entry: move it aside, then replace it
                _remove(target)
            # On disk before it is published: a power loss leaves no torn entry.
            fsync_tree(folder)
            os.rename(folder, target)
            fsync_folder(self.stores)
            entry = self.lookup(key)
            if entry is None:  # only if the folder was changed under us
                raise StoreError(f"Cache entry {target} is incomplete right after writing it.")
            return entry, True

    def _clear_work(self, key: str) -> None:
        """Remove what a killed run of ``key`` left in ``work/`` (its lock is held
        now, so no live process owns it) except its progress checkpoint."""
        for name in os.listdir(self.work):
            if name == key or (name.startswith(f".{key}.") and ".partial-" in name):
                _remove(os.path.join(self.work, name))

    # removing ----------------------------------------------------------------
    def match(self, prefix: str) -> CacheEntry:
        """The one entry whose key starts with ``prefix``."""
        prefix = prefix.strip().lower()
        if not re.match(r"^[0-9a-f]{4,64}$", prefix):
            raise CacheError(
                f"{prefix!r} is not a cache key (at least 4 hex digits, as `mergekit-led "
                "cache ls` shows them)."
            )
        found = [e for e in self.entries() if e.key.startswith(prefix)]
        if not found:
            raise CacheError(f"No cache entry in {self.stores} has a key starting with {prefix}.")
        if len(found) > 1:
            raise CacheError(
                f"Key prefix {prefix} matches {len(found)} cache entries "
                f"({', '.join(e.key[:12] for e in found)}); give more digits."
            )
        return found[0]

    def remove(self, key: str) -> None:
        with self.locked(key, wait=False):
            path = self.entry_path(key)
            if os.path.lexists(path):
                _remove(path)
            self._forget_stamps(key)

    def _forget_stamps(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.verified, f"{key}.json"))

    def prune(self, *, older_than_days: Optional[float] = None) -> List[str]:
        """Remove broken entries, leftovers of killed runs (whose key is not in use)
        and, with ``older_than_days``, entries unused for that long. Returns what
        was removed."""
        removed: List[str] = []
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        for entry in self.entries(verify=True):
            if entry.complete and (cutoff is None or entry.last_used >= cutoff):
                continue
            with contextlib.suppress(CacheError), self.locked(entry.key, wait=False):
                _remove(entry.path)
                self._forget_stamps(entry.key)
                removed.append(entry.path)
        for path in self.leftovers():
            key = _key_of_leftover(os.path.basename(path))
            if key is None:
                continue
            with contextlib.suppress(CacheError), self.locked(key, wait=False):
                if os.path.lexists(path):
                    _remove(path)
                    removed.append(path)
        return removed


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise CacheError(f"{key!r} is not a cache key.")
    return key


def _key_of_leftover(name: str) -> Optional[str]:
    match = re.match(r"^\.?([0-9a-f]{8,64})(?=$|\.)", name)
    return match.group(1) if match else None


def _read_record(path: str, key: str):
    record_path = os.path.join(path, RECORD_NAME)
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None, f"no {RECORD_NAME} (not written completely)"
    except (OSError, ValueError) as error:
        return None, f"unreadable {RECORD_NAME}: {error}"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None, f"{RECORD_NAME} is not a {RECORD_FORMAT} record"
    if record.get("version") != RECORD_VERSION or record.get("key") != key:
        return None, f"{RECORD_NAME} is for another key or version"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return None, f"{RECORD_NAME} lists no files"
    for name, listed in files.items():
        file_path = os.path.join(path, str(name))
        if not (
            isinstance(listed, dict)
            and isinstance(listed.get("size"), int)
            and isinstance(listed.get("sha256"), str)
        ):
            return None, f"{RECORD_NAME} lists {name} without its size and sha256"
        if os.path.dirname(str(name)) or not os.path.isfile(file_path):
            return None, f"{name} is missing"
        if os.path.getsize(file_path) != listed["size"]:
            return None, f"{name} has {os.path.getsize(file_path)} bytes, not {listed['size']}"
    return record, None


def _file_record(path: str) -> Dict[str, Any]:
    with open(path, "rb") as f:
        status = os.fstat(f.fileno())
        digest = _sha256(f)
    with _HASHED_LOCK:  # the lookup right after writing the entry need not hash again
        _HASHED[_identity(status)] = digest
    return {"size": status.st_size, "sha256": digest}


def file_sha256(path: str) -> str:
    """``sha256:<hex>`` of the file at ``path`` (remembered for this process
    while the file keeps its identity, as the cache's own checks)."""
    return _file_record(path)["sha256"]


def _sha256(f) -> str:
    """``sha256:<hex>`` of an open binary file, streamed (``hashlib.file_digest``
    is Python 3.11+; this package supports 3.10)."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 24), b""):
        digest.update(block)
    return "sha256:" + digest.hexdigest()


def _identity(status: os.stat_result) -> Tuple[int, int, int, int, int]:
    """What identifies one version of a file without reading it. The kernel sets
    ctime on every write, truncation, rename or link, and ``utime`` cannot set it
    back, so a file with the same identity has the same bytes; a copied, swapped,
    preallocated or edited file has another identity."""
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


# identity -> sha256 of files this process hashed (or wrote): an entry is looked
# up more than once per run (plan, compute, the merge method).
_HASHED: Dict[Tuple[int, int, int, int, int], str] = {}
_HASHED_LOCK = threading.Lock()


def _read_stamps(path: str) -> Dict[str, List[Any]]:
    """``verified/<key>.json``: file name -> [*identity, sha256] when it last
    matched; anything unreadable counts as no stamp (the files are hashed)."""
    try:
        with open(path, encoding="utf-8") as f:
            stamps = json.load(f)
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _checksum_problem(
    path: str, files: Dict[str, Dict[str, Any]], stamps: Dict[str, List[Any]]
) -> Tuple[Optional[str], Dict[str, List[Any]]]:
    """Why the entry's files differ from the checksums its record lists (None if
    they agree), and the stamps of the files as checked now. Sizes alone miss a
    same-size copy with a zero tail, or the scores of two entries swapped; the
    hash does not. A file is hashed unless its identity is the one stamped when
    its hash last matched the record (``_identity``)."""
    checked: Dict[str, List[Any]] = {}
    for name, listed in files.items():
        file_path = os.path.join(path, name)
        try:
            with open(file_path, "rb") as f:
                identity = _identity(os.fstat(f.fileno()))
                if stamps.get(name) == [*identity, listed["sha256"]]:
                    checked[name] = stamps[name]
                    continue
                with _HASHED_LOCK:
                    actual = _HASHED.get(identity)
                if actual is None:
                    actual = _sha256(f)
                    with _HASHED_LOCK:
                        _HASHED[identity] = actual
        except OSError as error:
            return f"{name} cannot be read: {error.strerror or error}", checked
        if actual != listed["sha256"]:
            return (
                f"{name} has checksum {actual[:19]}…, its record says "
                f"{listed['sha256'][:19]}… (changed or damaged after it was written)"
            ), checked
        checked[name] = [*identity, actual]
    return None, checked


def _remove(path: str) -> None:
    """Remove a folder in one visible step: rename it aside, then delete it."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        parent, name = os.path.split(path)
        aside = os.path.join(parent, f".{name.lstrip('.')}.removing-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.remove(path)


def _folder_size(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(folder, name))
    return total
