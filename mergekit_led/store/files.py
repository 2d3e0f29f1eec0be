"""The files of a store, read as untrusted input and pinned to the version opened.

A store names its files in its manifest; each name must be a plain file name in
the store folder (no separators, no ``..``, no absolute path, no symlink
resolving outside the folder), and each file a regular safetensors file whose
header is well formed and covers the file exactly.

A file's identity (device, inode, size, modification time) and header are
recorded when the store is opened; every later read opens the file again,
checks that it is still that file (before and after reading, with ``os.fstat``
on the descriptor it reads through) and reads with ``os.preadv``. A store is
therefore read at the version that was opened, or the read fails naming the
store, the file and the weight; no descriptor stays open between reads, so a
process may open any number of stores. safetensors' own ``safe_open`` maps the
file, which cannot detect a change and crashes (SIGBUS) on a file truncated
under it, hence this small reader of the (simple, stable) safetensors layout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch

from mergekit_led.errors import StoreError

# safetensors dtype names -> torch dtypes a store may hold.
SAFETENSORS_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_MAX_READ = 1 << 30  # bytes per preadv call (Linux reads at most ~2 GiB at once)
_HASH_BLOCK = 1 << 24
_SPARSE_CHECK_MIN = 64 * 1024 * 1024  # tensors this large are checked for a data-less claim
_SPARSE_PROBE = 64 * 1024


def available_memory() -> Optional[int]:
    """Bytes the OS can hand out without swapping (Linux ``MemAvailable``; else the
    free pages), or None when it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_file_name(file_name: object, *, store: str, role: str) -> str:
    """``file_name`` if it is a plain file name inside the store, else StoreError."""
    if not isinstance(file_name, str) or not file_name:
        raise StoreError(
            f"Importance store {store}: {role} names file {file_name!r}, not a file name."
        )
    if (
        file_name in (".", "..")
        or "/" in file_name
        or "\\" in file_name
        or "\0" in file_name
        or os.path.isabs(file_name)
    ):
        raise StoreError(
            f"Importance store {store}: {role} names file {file_name!r}; a store may only "
            "reference plain file names inside its own folder (no separators, '..' or "
            "absolute paths)."
        )
    return file_name


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: dtype, shape and absolute byte range."""

    dtype: torch.dtype
    shape: Tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)

    def difference(self, other: FileIdentity) -> Optional[str]:
        if (self.device, self.inode) != (other.device, other.inode):
            return "it was replaced by another file"
        if self.size != other.size:
            return f"its size changed from {self.size} to {other.size} bytes"
        if self.mtime_ns != other.mtime_ns:
            return "it was modified"
        return None


def allowed_folders(store: str) -> Tuple[str, ...]:
    """Where a store's files may really live: the store folder itself and, for a
    store inside a Hugging Face Hub cache snapshot
    (``<cache>/models--org--name/snapshots/<commit>/...``), that repository's
    ``blobs`` folder, which the cache's symlinks point into."""
    real = os.path.realpath(store)
    folders = [real]
    parts = real.split(os.sep)
    for index in range(len(parts) - 2, 0, -1):
        repo = os.sep.join(parts[:index])
        if (
            parts[index] == "snapshots"
            and parts[index - 1].startswith(("models--", "datasets--", "spaces--"))
            and os.path.isdir(os.path.join(repo, "blobs"))
        ):
            folders.append(os.path.join(repo, "blobs"))
            break
    return tuple(folders)


def open_in_store(store: str, file_name: str, *, role: str) -> int:
    """Open ``file_name`` of the store read-only; refuse anything but a regular
    file inside the store folder. Returns the descriptor."""
    path = os.path.join(store, file_name)
    if not os.path.lexists(path):
        raise StoreError(f"Importance store {store} is incomplete: {role} {file_name} is missing.")
    resolved = os.path.realpath(path)
    if os.path.dirname(resolved) not in allowed_folders(store):
        raise StoreError(
            f"Importance store {store}: {role} {file_name} is a symlink to {resolved}, "
            "outside the store folder; a store may only reference its own files."
        )
    try:
        # O_NONBLOCK: a FIFO planted as a store file must not hang the open.
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise StoreError(
            f"Importance store {store}: cannot open {role} {file_name}: {error}"
        ) from error
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"Importance store {store}: {role} {file_name} is not a regular file.")
    return fd


_SCRATCH_MAX = 256 * 1024 * 1024
_thread_scratch = threading.local()


def _scratch(size: int) -> Optional[torch.Tensor]:
    """``size`` bytes of this thread's reusable read buffer (None above the cap)."""
    if size > _SCRATCH_MAX:
        return None
    buffer = getattr(_thread_scratch, "buffer", None)
    if buffer is None or buffer.numel() < size:
        buffer = torch.empty(size, dtype=torch.uint8)
        _thread_scratch.buffer = buffer
    return buffer[:size]


class PinnedFile:
    """A safetensors file of a store: its identity and validated header, as opened."""

    def __init__(self, store: str, file_name: str, *, role: str):
        self.store = store
        self.file_name = file_name
        self.role = role
        fd = open_in_store(store, file_name, role=role)
        try:
            self.identity = FileIdentity.of(os.fstat(fd))
            self.tensors, self.metadata = self._read_header(fd)
            self._check_claims(fd)
        finally:
            os.close(fd)

    @property
    def where(self) -> str:
        return f"{self.role} {self.file_name} of importance store {self.store}"

    # header ------------------------------------------------------------------
    def _read_header(self, fd: int) -> Tuple[Dict[str, TensorEntry], Dict[str, str]]:
        size = self.identity.size
        if size < 8:
            raise StoreError(
                f"The {self.where} is truncated ({size} bytes); it is not a safetensors file."
            )
        (length,) = struct.unpack("<Q", self._pread(fd, 8, 0))
        if length > min(_MAX_HEADER, size - 8):
            raise StoreError(
                f"The {self.where} is not a valid safetensors file (header of {length} "
                f"bytes in a file of {size}): truncated or corrupt."
            )
        try:
            raw = json.loads(self._pread(fd, length, 8).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise StoreError(
                f"The {self.where} has a corrupt safetensors header: {error}."
            ) from error
        if not isinstance(raw, dict):
            raise StoreError(f"The {self.where} has a corrupt safetensors header (not an object).")
        metadata = raw.pop("__metadata__", None) or {}
        data_start = 8 + length
        tensors: Dict[str, TensorEntry] = {}
        for name, spec in raw.items():
            tensors[name] = self._entry(name, spec, data_start)
        # The tensors must tile the data section exactly: no overlap, no gap, no
        # bytes missing at the end (a truncated file) or left over.
        position = data_start
        for name, entry in sorted(tensors.items(), key=lambda item: item[1].start):
            if entry.start != position:
                raise StoreError(
                    f"The {self.where} is corrupt: tensor {name!r} starts at byte "
                    f"{entry.start}, expected {position} (overlapping or missing data)."
                )
            position = entry.end
        if position != size:
            raise StoreError(
                f"The {self.where} is truncated or corrupt: its header describes "
                f"{position} bytes, the file has {size}."
            )
        return tensors, metadata

    def _check_claims(self, fd: int) -> None:
        """Refuse a large tensor whose byte range holds no data (past its first
        64 KiB): a sparse
        file whose header claims gigabytes it does not store (every reader would
        allocate and zero-fill the claim). Holes inside a tensor are tolerated:
        filesystems with compression (ZFS, btrfs) store runs of zero scores as
        holes, and zero scores are common (embedding rows of unseen tokens)."""
        seek_data = getattr(os, "SEEK_DATA", None)
        if seek_data is None:
            return  # no hole query on this platform
        for name, entry in self.tensors.items():
            if entry.end - entry.start < _SPARSE_CHECK_MIN:
                continue
            # From the first 64 KiB boundary inside the tensor: the block it starts
            # in may hold the header.
            probe = (entry.start // _SPARSE_PROBE + 1) * _SPARSE_PROBE
            try:
                data_at = os.lseek(fd, probe, seek_data)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: no data after that offset
                    continue  # a filesystem that cannot answer: nothing to conclude
                data_at = self.identity.size
            if data_at >= entry.end:
                raise StoreError(
                    f"The {self.where} claims {entry.end - entry.start:,} bytes for tensor "
                    f"{name!r} (shape {entry.shape}), but the file stores no data there: a "
                    "sparse file whose header claims more than it holds. Recompute or copy "
                    "the store again."
                )

    def _entry(self, name: str, spec: object, data_start: int) -> TensorEntry:
        bad = f"The {self.where} has a corrupt header entry for tensor {name!r}"
        if not isinstance(spec, dict):
            raise StoreError(f"{bad}.")
        name_of_dtype = spec.get("dtype")
        dtype = SAFETENSORS_DTYPES.get(name_of_dtype) if isinstance(name_of_dtype, str) else None
        if dtype is None:
            raise StoreError(
                f"The {self.where} holds tensor {name!r} in dtype {spec.get('dtype')!r}; "
                f"a store holds {', '.join(SAFETENSORS_DTYPES)} tensors only."
            )
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise StoreError(f"{bad} (shape {shape!r}, data_offsets {offsets!r}).")
        entry = TensorEntry(dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
        if entry.end - entry.start != entry.numel * dtype.itemsize:
            raise StoreError(
                f"{bad}: shape {tuple(shape)} in {spec['dtype']} needs "
                f"{entry.numel * dtype.itemsize} bytes, its data offsets span "
                f"{entry.end - entry.start}."
            )
        return entry

    # reading -----------------------------------------------------------------
    @contextlib.contextmanager
    def _opened(self, weight: Optional[str]) -> Iterator[int]:
        """The file, opened again and checked to be the version that was pinned,
        before and after the caller's reads."""
        try:
            fd = open_in_store(self.store, self.file_name, role=self.role)
        except StoreError as error:
            raise self._changed(
                weight, f"it can no longer be opened ({error})"
            ) from None  # cause: its text is in the message
        try:
            self._check(fd, weight)
            yield fd
            self._check(fd, weight)
        finally:
            os.close(fd)

    def _check(self, fd: int, weight: Optional[str]) -> None:
        difference = self.identity.difference(FileIdentity.of(os.fstat(fd)))
        if difference is not None:
            raise self._changed(weight, difference)

    def _changed(self, weight: Optional[str], difference: str) -> StoreError:
        holding = f" (reading weight {weight!r})" if weight else ""
        return StoreError(
            f"Importance store {self.store} changed while in use: {self.file_name}{holding}: "
            f"{difference} after the store was opened. A merge reads each store at one "
            "version; run it again once the store is no longer being written."
        )

    def read(
        self, name: str, *, weight: Optional[str] = None, transient: bool = False
    ) -> torch.Tensor:
        """Tensor ``name`` as a CPU tensor (the file's bytes at the pinned version).

        A new tensor, unless ``transient``: then, for tensors up to
        ``_SCRATCH_MAX`` bytes, a view of this thread's scratch buffer, valid
        until the thread's next transient read (fresh allocations page-fault on
        every read; reusing one buffer halves the cost of reading a store).
        """
        entry = self.tensors.get(name)
        if entry is None:
            raise StoreError(f"The {self.where} holds no tensor {name!r}.")
        weight = weight or name
        size = entry.end - entry.start
        buffer = _scratch(size) if transient else None
        if buffer is None:
            buffer = self._allocate(size, name)
        view = memoryview(buffer.numpy())
        with self._opened(weight) as fd:
            done = 0
            while done < len(view):
                count = os.preadv(fd, [view[done : done + _MAX_READ]], entry.start + done)
                if count == 0:
                    raise StoreError(
                        f"The {self.where} is truncated: tensor {name!r} (weight {weight!r}) "
                        f"ends at byte {entry.end}, the file ended at byte {entry.start + done}."
                    )
                done += count
        # safetensors is little-endian, like every machine torch supports in practice.
        tensor = buffer.view(entry.dtype) if entry.numel else torch.empty(0, dtype=entry.dtype)
        return tensor.reshape(entry.shape)

    def _allocate(self, size: int, name: str) -> torch.Tensor:
        """A buffer for one tensor; a claim beyond the memory available is an
        error naming the tensor, not an allocation that swaps or a traceback."""
        available = available_memory()
        claim = f"tensor {name!r} of the {self.where} needs {size:,} bytes"
        if available is not None and size > available:
            raise StoreError(
                f"{claim}, more than the {available:,} bytes of memory available "
                "(a damaged header, or a store too large for this machine)."
            )
        try:
            return torch.empty(size, dtype=torch.uint8)
        except RuntimeError as error:  # torch's allocator: "can't allocate memory"
            raise StoreError(f"{claim}, which cannot be allocated: {error}") from error

    def sha256(self) -> str:
        """``sha256:<hex>`` of the whole file at the pinned version."""
        digest = hashlib.sha256()
        with self._opened(None) as fd:
            for offset in range(0, self.identity.size, _HASH_BLOCK):
                length = min(_HASH_BLOCK, self.identity.size - offset)
                digest.update(self._pread(fd, length, offset))
        return "sha256:" + digest.hexdigest()

    def _pread(self, fd: int, length: int, offset: int) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise StoreError(f"The {self.where} is truncated (short read at byte {offset}).")
        return data
