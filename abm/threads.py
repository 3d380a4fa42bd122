"""Row blocks on several cores: the large array work of a firm-level world, split by rows.

numpy's element-wise operations and scipy's sparse products release the GIL, so one large
operation split into blocks of rows runs on several cores from threads. Rows are independent
in every operation split here (each output row is computed from its own inputs, in the same
order), so the result is bit for bit the one a single thread computes: the number of threads
never changes a trajectory.

Only work of at least :data:`MIN_CELLS` cells per thread is split; the baseline world's arrays
are far smaller and always run on one thread. The number of threads is ``ABM_THREADS`` if set,
else the cores this process may use. Sweeps set ``ABM_THREADS=1`` in their worker processes,
which already use every core between them.

Work is cut into :data:`PIECES` blocks per thread, and each thread takes the next block left as
soon as it is free, so a core that runs slower than the others for a while (a shared virtual
machine's, or a laptop's efficiency core) does less of the work instead of holding up the rest.

One more thread, apart from the row blocks' pool, takes whole pieces of work beside the
caller's (:func:`beside`): a large world keeps its flow log there while its metrics are
collected on the model's thread. Both only read the tick's state and write apart, so that does
not change a result either.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

import numpy as np

MIN_CELLS = 200_000  # least work (array cells, or nonzeros × columns) worth a thread of its own
PIECES = 4  # blocks per thread: a thread that finishes early takes another
ENV = "ABM_THREADS"

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_side: ThreadPoolExecutor | None = None  # one thread for work beside the caller's (beside)
_lock = threading.Lock()  # guards the two pools' creation


def count() -> int:
    """Threads to use: ``ABM_THREADS`` if set, else the cores this process may run on."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{ENV} = {raw!r}: must be a whole number of threads, at least 1")
        return int(raw)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def n_threads(cells: int) -> int:
    """How many threads work of ``cells`` cells is worth (1: do not split)."""
    if cells < 2 * MIN_CELLS:  # most calls: small work, no need to look up the thread count
        return 1
    return min(count(), cells // MIN_CELLS)


def n_blocks(cells: int) -> int:
    """How many blocks to split work of ``cells`` cells into (1: do not split).

    :data:`PIECES` for each thread the work is worth, so that a faster thread can take more,
    but none smaller than :data:`MIN_CELLS` (handing out a block costs too).
    """
    used = n_threads(cells)
    return 1 if used == 1 else min(used * PIECES, cells // MIN_CELLS)


def bounds(weights: np.ndarray, blocks: int) -> list[slice]:
    """Split rows into ``blocks`` consecutive slices of about equal total weight.

    Args:
        weights: cumulative weight at each row boundary (length rows + 1, from 0; a CSR
            matrix's ``indptr`` weighs rows by their nonzeros).
        blocks: number of slices wanted.

    """
    n_rows = len(weights) - 1
    if blocks <= 1 or n_rows < 2:
        return [slice(0, n_rows)]
    targets = np.linspace(0, weights[-1], blocks + 1)[1:-1]
    cuts = np.searchsorted(weights, targets).clip(1, n_rows - 1)
    edges = np.unique(np.concatenate(([0], cuts, [n_rows])))
    return [slice(int(a), int(b)) for a, b in pairwise(edges)]


def even(n_rows: int, width: int) -> list[slice]:
    """Split ``n_rows`` rows of ``width`` cells each into equal blocks worth splitting."""
    blocks = n_blocks(n_rows * width)
    if blocks == 1:
        return [slice(0, n_rows)]
    return bounds(np.arange(n_rows + 1), blocks)


def run_chunked(work: Callable[[slice], None], weights: np.ndarray, chunk: float) -> None:
    """Call ``work(rows)`` for consecutive slices of rows of about ``chunk`` weight each.

    Small slices keep the arrays of a many-pass computation in a core's cache between passes;
    work of at least :data:`MIN_CELLS` weight a thread is shared out among threads, each taking
    the next slice left (:func:`run`). ``weights`` is cumulative, as in :func:`bounds`.
    """
    total = float(weights[-1])  # weights start at 0 and have one more entry than rows
    run(work, bounds(weights, max(int(total // chunk), 1)), n_threads(int(total)))


def run[T](work: Callable[[T], None], blocks: Sequence[T], workers: int | None = None) -> None:
    """Call ``work(block)`` for every block, on this thread and the pool's.

    Each thread takes the next block not yet taken, until none is left; a block is a slice of
    rows, or anything that names one. ``work`` must write only its own rows; it should write
    into arrays made beforehand, so that large allocations stay with the calling thread.

    Args:
        work: called once per block.
        blocks: the blocks, in order.
        workers: threads to use, this one included (never more than the blocks); if not
            given, the threads this process uses (:func:`count`).

    """
    if len(blocks) == 1:  # most calls: small work, no need to look up the thread count
        work(blocks[0])
        return
    workers = min(count() if workers is None else workers, len(blocks))
    if workers <= 1:
        for block in blocks:
            work(block)
        return
    left = iter(blocks)
    taking = threading.Lock()  # hands out each block once
    failed = threading.Event()  # a block raised: no thread takes another

    def work_through() -> None:
        while not failed.is_set():
            with taking:
                block = next(left, _NONE_LEFT)
            if block is _NONE_LEFT:
                return
            try:
                work(block)
            except BaseException:
                failed.set()
                raise

    pending = [_executor(workers - 1).submit(work_through) for _ in range(workers - 1)]
    try:
        work_through()
    finally:
        for future in pending:
            future.result()  # waits, and re-raises an error from a block


_NONE_LEFT = object()  # what the blocks' iterator gives when every block is taken


def beside[T](work: Callable[[], T]) -> Future[T]:
    """Start ``work()`` on a thread of its own, beside the caller: its future.

    Not a thread of the row pool: work there may call :func:`run`, and a pool thread waiting
    for blocks queued behind itself would wait for ever.
    """
    global _side
    with _lock:
        if _side is None:
            _side = ThreadPoolExecutor(1, thread_name_prefix="abm-beside")
        return _side.submit(work)


def _executor(helpers: int) -> ThreadPoolExecutor:
    """The shared pool of helper threads, grown to at least ``helpers`` threads."""
    global _pool, _pool_size
    with _lock:  # the caller's thread and the one beside it may both ask
        if _pool is None or _pool_size < helpers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(helpers, thread_name_prefix="abm-rows")
            _pool_size = helpers
        return _pool


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _pool, _pool_size, _side, _lock
    _pool, _pool_size, _side, _lock = None, 0, None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)
