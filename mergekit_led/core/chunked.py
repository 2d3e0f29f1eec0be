"""Work on large CPU tensors in cache-sized chunks.

Elementwise work gives the same result, bit for bit, on a whole tensor or on
its pieces; on pieces that fit in the cache its intermediates need not travel
to memory. Two users: ``election.elect_and_merge`` walks a weight's chunks in
the calling thread (``chunks_of``; each torch operation on a chunk still uses
torch's own threads), and the selection's numpy pass splits its chunks into one
span per worker thread of a shared pool (``map_spans``; numpy is single-threaded
but releases the GIL inside each call).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import torch

Result = TypeVar("Result")
Span = Tuple[int, int]

# Worker threads at most: more only contend for the GIL.
MAX_WORKERS = 8

_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


def worker_count(numel: int, chunk: int, parallel_min_numel: int) -> int:
    """Threads worth using for ``numel`` elements in chunks of ``chunk``."""
    if numel < parallel_min_numel:
        return 1
    chunks = -(-numel // chunk)
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, MAX_WORKERS, chunks))


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
