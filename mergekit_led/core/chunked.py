"""Work on large CPU tensors in cache-sized chunks.

Elementwise work gives the same result, bit for bit, on a whole tensor or on
its pieces; on pieces that fit in the cache its intermediates need not travel
to memory. Two users, both on one shared pool of worker threads:
``elect_merge.elect_and_merge`` hands a weight's chunks to a few workers, each
taking the next chunk when it is done (``map_chunks``; a chunk is small enough
that torch runs every operation on it in the calling thread), and the
selection's numpy pass splits its chunks into one span per worker
(``map_spans``; numpy is single-threaded but releases the GIL inside each call).

Why not torch's own threads on each chunk: every multi-threaded torch call is a
parallel region whose end waits for all of its threads. A merge makes tens of
thousands of such short calls, and on a machine whose cores are busy with other
work each wait can last a scheduler time slice (4-8x the merge's CPU time at
1B, docs/benchmarks.md). Workers that pull chunks from a shared counter only
meet once per weight, and a worker that is not scheduled leaves its chunks to
the others.
"""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import torch

Result = TypeVar("Result")
Span = Tuple[int, int]

# Worker threads at most: more only contend for the GIL.
MAX_WORKERS = 8

_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


# ATen runs an elementwise operation (and a reduction) on at most this many
# elements in the calling thread, without a parallel region (``GRAIN_SIZE``).
SERIAL_NUMEL = 32768


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(numel: int, chunk: int, parallel_min_numel: int) -> int:
    """Threads worth using for ``numel`` elements in chunks of ``chunk``.

    At most torch's thread count, so ``OMP_NUM_THREADS=1`` or
    ``torch.set_num_threads(1)`` keeps the work in the calling thread.
    """
    if numel < parallel_min_numel:
        return 1
    chunks = -(-numel // chunk)
    return max(1, min(torch.get_num_threads(), usable_cpus(), MAX_WORKERS, chunks))


def spans(numel: int, chunk: int, workers: int) -> List[Span]:
    """``workers`` contiguous ``[start, stop)`` spans of whole chunks covering ``numel``."""
    if numel == 0:
        return [(0, 0)]
    chunks = -(-numel // chunk)
    per_worker = -(-chunks // max(1, workers)) * chunk
    return [(start, min(start + per_worker, numel)) for start in range(0, numel, per_worker)]


def chunks_of(span: Span, chunk: int) -> Iterator[Span]:
    """The chunk-sized ``[start, stop)`` pieces of one span."""
    start, stop = span
    for piece in range(start, stop, chunk):
        yield piece, min(piece + chunk, stop)


def map_spans(
    work: Callable[[Span], Result],
    numel: int,
    *,
    chunk: int,
    parallel_min_numel: int,
) -> List[Result]:
    """``work(span)`` for each worker's span of ``numel`` elements, in span order.

    One span per worker (each worker allocates its scratch once, and loops over
    its chunks with ``chunks_of``). The threads come from one shared pool, so
    the many small weights of a merge do not each start threads.
    """
    all_spans = spans(numel, chunk, worker_count(numel, chunk, parallel_min_numel))
    if len(all_spans) == 1:
        return [work(all_spans[0])]
    return list(_shared_pool().map(work, all_spans))


def map_chunks(
    work: Callable[[Span], Result], pieces: Sequence[Span], workers: int
) -> List[Result]:
    """``work(piece)`` for every piece, in piece order, on ``workers`` threads.

    The calling thread is one of the workers; the others come from the shared
    pool. Each worker takes the next piece from a shared counter, so one that
    the OS does not schedule for a while delays nobody but itself until the
    last piece. The first exception raised by ``work`` is raised here after
    every worker has stopped (each stops at its next piece).
    """
    workers = max(1, min(workers, len(pieces)))
    if workers == 1:
        return [work(piece) for piece in pieces]
    results: List[Optional[Result]] = [None] * len(pieces)
    next_index = itertools.count()  # next() on it is atomic under the GIL
    failed = threading.Event()

    def run() -> None:
        try:
            while not failed.is_set():
                index = next(next_index)
                if index >= len(pieces):
                    return
                results[index] = work(pieces[index])
        except BaseException:
            failed.set()
            raise

    helpers = [_shared_pool().submit(run) for _ in range(workers - 1)]
    try:
        run()
    finally:
        for helper in helpers:
            helper.exception()  # wait for every helper before raising anything
    for helper in helpers:
        helper.result()  # a helper's exception, if the calling thread had none
    return results  # type: ignore[return-value]


def _forget_pool_in_child() -> None:
    # A forked child inherits the pool object but not its threads: work handed
    # to it would never run. The child starts its own pool on first use.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=MAX_WORKERS, thread_name_prefix="mergekit-led-chunks"
            )
        return _pool
