"""Writes that are one step for readers: written aside, then renamed into place.

A file ``DIR/NAME`` (a record, a manifest, a card, a checkpoint) is written to a
hidden temporary file beside it and renamed over it (``os.replace``)::

    DIR/.NAME.partial-<id>-<pid>@<host>.tmp

A folder (a store, a merge output) is written in a hidden staging area beside it::

    DIR/.NAME.partial-<id>-<pid>@<host>/
        writer.lock   locked (filelock) by the writing process for as long as it lives
        NAME          the new content, renamed onto DIR/NAME once complete
        NAME.old      the previous content, only while a replacement is under way
                      on a filesystem without an atomic exchange

The content keeps the target's own name, so whatever records its folder's
name (mergekit's model card title) records the right one. A folder at the
target path is therefore always complete: on Linux an existing folder is
swapped with the new one in one step (``renameat2(RENAME_EXCHANGE)``);
elsewhere it takes two renames, and the next write to the same target
finishes a replacement a kill interrupted between them.

Durability: what is published (a file by ``write_file``, a folder by
``replace_directory``) is flushed to disk (``fsync``) before the rename, and its
parent folder after it, so a power loss leaves the old or the new content, not
a torn one; ``durable=False`` (locate's progress checkpoints) skips the flushes.

A run killed mid-write leaves only its temporary file or staging area. The next
write to the same target removes those of dead writers (this host, process gone,
lock free) and reports the ones it cannot judge (another host, an older layout);
it never touches those of a live writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import socket
import stat
import sys
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

from mergekit_led.errors import is_safetensors_error

LOG = logging.getLogger(__name__)

STAGING_MARK = ".partial-"
LOCK_NAME = "writer.lock"
OLD_SUFFIX = ".old"
TEMPORARY_SUFFIX = ".tmp"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "unknown-host"


def writer_id() -> str:
    """``<pid>@<host>`` of this process: staging areas and the sweep's scratch folders
    carry it in their names, so a later run can tell a killed writer's leftovers."""
    return f"{os.getpid()}@{_host()}"


def staging_path(target: str) -> str:
    """A fresh hidden staging area path beside ``target`` naming this writer."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}{STAGING_MARK}{uuid.uuid4().hex[:8]}-{writer_id()}")


@dataclass(frozen=True)
class StagingArea:
    """A staging area: ``folder`` (hidden, beside the target) and ``path``
    (``folder/NAME``, where the new content is written)."""

    folder: str
    path: str


@contextlib.contextmanager
def staging_area(target: str) -> Iterator[StagingArea]:
    """Create a locked staging area for ``target``; remove it on exit, whatever
    happened. Stale areas of dead writers to the same target are cleaned first."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    clean_stale_staging(target)
    folder = staging_path(target)
    os.makedirs(folder)
    lock = None
    try:
        lock = _hold_lock(os.path.join(folder, LOCK_NAME))
        with _naming_a_full_disk(target):
            yield StagingArea(folder, os.path.join(folder, os.path.basename(target)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _naming_a_full_disk(target: str) -> Iterator[None]:
    """Re-raise a full disk met while writing ``target`` as an OSError naming it."""
    try:
        yield
    except Exception as error:
        full = _disk_full(error, target)
        if full is None:
            raise
        raise full from error


@contextlib.contextmanager
def staged_directory(target: str) -> Iterator[str]:
    """Yield an empty staging folder; on success it replaces ``target`` whole.

    On any error (or interrupt) the staging area is removed and ``target`` is
    left as it was.
    """
    with staging_area(target) as area:
        os.makedirs(area.path)
        yield area.path
        replace_directory(area.path, os.path.abspath(target))


def _disk_full(error: Exception, target: str) -> Optional[OSError]:
    """A full disk while writing ``target``, as an OSError that names it (None for
    other errors, or when the error names its file already). Writers deep in the
    libraries report ENOSPC without a file name, and safetensors as its own
    error type ("No space left on device (os error 28)")."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, OSError):
        if error.errno not in codes or error.filename is not None:
            return None
        code = error.errno
    elif is_safetensors_error(error) and (
        "os error 28" in str(error) or "No space left" in str(error)
    ):
        code = errno.ENOSPC
    else:
        return None
    return OSError(code, os.strerror(code), target)


def replace_directory(source: str, target: str, *, durable: bool = True) -> None:
    """Move folder ``source`` to ``target``, replacing a folder already there.

    With an existing target: one atomic exchange where the OS supports it (the
    old folder ends up at ``source``, for the caller's clean-up to remove);
    otherwise two renames through ``source + ".old"``, undone if the second
    fails. ``source`` must sit in a staging area beside ``target`` so that a
    kill between the two renames is recovered by the next writer. ``durable``:
    ``source``'s files are flushed to disk first, ``target``'s folder after.
    """
    if durable:
        fsync_tree(source)
    _move_directory(source, target)
    if durable:
        fsync_folder(os.path.dirname(os.path.abspath(target)))


def _move_directory(source: str, target: str) -> None:
    if not os.path.lexists(target):
        try:
            os.rename(source, target)
            return
        except OSError as error:
            # Another writer created the target meanwhile: replace it as below.
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not os.path.isdir(target):
                raise
    if _exchange(source, target):
        _remove(source)
        return
    old = source + OLD_SUFFIX
    os.rename(target, old)
    try:
        os.rename(source, target)
    except BaseException:
        os.rename(old, target)
        raise
    _remove(old)


def write_file(target: str, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call ``write(path)`` on a temporary path beside ``target``, then rename it
    over ``target`` (one step on POSIX filesystems). ``durable``: the file is
    flushed to disk before the rename, its folder after. A failure removes the
    temporary file and leaves ``target`` as it was."""
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    clean_stale_staging(target)
    temporary = staging_path(target) + TEMPORARY_SUFFIX
    try:
        with _naming_a_full_disk(target):
            write(temporary)
            if durable:
                _fsync_path(temporary)
            os.replace(temporary, target)
    except BaseException:
        _remove(temporary)
        raise
    if durable:
        fsync_folder(parent)


def write_text(target: str, text: str, *, durable: bool = True) -> None:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    write_file(target, write, durable=durable)


def fsync_tree(path: str) -> None:
    """Flush every regular file and folder under ``path`` (and ``path`` itself) to
    disk; symbolic links are not followed."""
    if not os.path.isdir(path) or os.path.islink(path):
        _fsync_path(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            file = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(file).st_mode):
                _fsync_path(file)
        fsync_folder(folder)


def fsync_folder(path: str) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders
    cannot be opened (Windows)."""
    if os.name == "posix":
        _fsync_path(path)


def _fsync_path(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)  # a carried-over file may not be writable
    try:
        os.fsync(descriptor)
    except OSError as error:  # a platform or filesystem that cannot flush this way
        if error.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(descriptor)


# --------------------------------------------------------------------------- stale areas


@dataclass(frozen=True)
class StaleArea:
    """A staging area beside a target and what is known of its writer."""

    path: str
    pid: Optional[int]  # None: written by an older version (no writer recorded)
    host: Optional[str]

    def writer_state(self) -> str:
        """``live``, ``dead`` (this host, process gone, lock free), ``other-host``,
        ``unrecorded`` (older layout) or ``unclear`` (the process id runs but
        does not hold the lock: a reused id, or a writer starting this instant)."""
        if self.pid is None:
            return "unrecorded"
        if self.host != _host():
            return "other-host"
        lock_held = _lock_is_held(os.path.join(self.path, LOCK_NAME))
        if lock_held:
            return "live"
        if not _process_alive(self.pid):
            return "dead"
        return "unclear" if os.path.exists(os.path.join(self.path, LOCK_NAME)) else "live"


def stale_areas(target: str) -> List[StaleArea]:
    """Staging areas (and temporaries of older versions) beside ``target``."""
    parent, name = os.path.split(os.path.abspath(target))
    pattern = re.compile(
        rf"\.{re.escape(name)}{re.escape(STAGING_MARK)}[0-9a-f]{{8}}"
        r"(?:-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+?))?(?:\.tmp|\.old)?"
    )
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return []
    areas = []
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match is None:
            continue
        pid = int(match["pid"]) if match["pid"] else None
        areas.append(StaleArea(os.path.join(parent, entry), pid, match["host"]))
    return areas


def clean_stale_staging(target: str) -> List[str]:
    """Remove the staging areas dead writers left beside ``target``; finish a
    replacement a kill interrupted; log (and return) a line for every area kept
    or changed."""
    target = os.path.abspath(target)
    messages = []
    for area in stale_areas(target):
        state = area.writer_state()
        if state == "live":
            continue  # a concurrent run's area: never touched
        if state == "dead":
            messages.append(_clean_dead_area(area, target))
        elif state == "unrecorded":
            messages.append(
                f"{area.path} was left by an interrupted write to {target} (by an older "
                "version, which did not record its process); delete it once no run is "
                "writing there."
            )
        else:
            messages.append(
                f"{area.path} is the staging folder of a write to {target} by process "
                f"{area.pid} on host {area.host}, which this process cannot check; "
                "delete it once that run is over."
            )
    for message in messages:
        LOG.warning("%s", message)
    return messages


def _clean_dead_area(area: StaleArea, target: str) -> str:
    name = os.path.basename(target)
    new, old = os.path.join(area.path, name), os.path.join(area.path, name + OLD_SUFFIX)
    if not os.path.lexists(target) and os.path.isdir(old) and os.path.isdir(new):
        # Killed between the two renames of a replacement: the new copy was
        # complete (replacing starts only then); finish what the run began.
        os.rename(new, target)
        _remove(area.path)
        return (
            f"Finished the replacement of {target} that process {area.pid} began "
            f"before it was killed (its previous copy was in {old}, now removed)."
        )
    _remove(area.path)
    return f"Removed {area.path}, left by a killed write (process {area.pid}) to {target}."


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# --------------------------------------------------------------------------- OS details


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # not ours (PermissionError), or cannot tell: treat as alive, never delete
    return True


def _hold_lock(path: str):
    """A held ``filelock`` lock on ``path``: released by the OS when this process
    dies. None on a filesystem without locks (some NFS): the process id alone tells."""
    from filelock import FileLock

    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Exception:  # Timeout cannot happen on a fresh file; a filesystem without locks
        return None
    return lock


def _lock_is_held(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    from filelock import FileLock, Timeout

    probe = FileLock(path)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    except Exception:
        return True  # cannot tell: treat as held, never delete
    probe.release()
    return False


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def _exchange(first: str, second: str) -> bool:
    """Swap two paths in one atomic step; False where the OS or filesystem
    cannot (the caller falls back to two renames)."""
    if _renameat2 is None:
        return False
    result = _renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), first, None, second)
