"""Row blocks on several cores: the large array work of a firm-level world, split by rows.

numpy's element-wise operations and scipy's sparse products release the GIL, so one large
operation split into blocks of rows runs on several cores from threads. Rows are independent
in every operation split here (each output row is computed from its own inputs, in the same
order), so the result is bit for bit the one a single thread computes: the number of threads
never changes a trajectory.

Only work of at least :data:`MIN_CELLS` cells per block is split; the baseline world's arrays
are far smaller and always run on one thread. The number of threads is ``ABM_THREADS`` if set,
else the cores this process may use. Sweeps set ``ABM_THREADS=1`` in their worker processes,
which already use every core between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np

MIN_CELLS = 200_000  # least work (array cells, or nonzeros × columns) worth a block of its own
ENV = "ABM_THREADS"

_pool: ThreadPoolExecutor | None = None
_pool_size = 0


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


def n_blocks(cells: int) -> int:
    """How many blocks to split work of ``cells`` cells into (1: do not split)."""
    if cells < 2 * MIN_CELLS:  # most calls: small work, no need to look up the thread count
        return 1
    return min(count(), cells // MIN_CELLS)


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


def run[T](work: Callable[[T], None], blocks: Sequence[T]) -> None:
    """Call ``work(block)`` for every block: the first on this thread, the rest on the pool.

    A block is a slice of rows, or anything that names one.

    ``work`` must write only its own rows; it should write into arrays made beforehand, so
    that large allocations stay with the calling thread.
    """
    if len(blocks) == 1:
        work(blocks[0])
        return
    pending = [_executor(len(blocks) - 1).submit(work, block) for block in blocks[1:]]
    try:
        work(blocks[0])
    finally:
        for future in pending:
            future.result()  # waits, and re-raises an error from the block


def _executor(helpers: int) -> ThreadPoolExecutor:
    """The shared pool of helper threads, grown to at least ``helpers`` threads."""
    global _pool, _pool_size
    if _pool is None or _pool_size < helpers:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool, _pool_size = ThreadPoolExecutor(helpers, thread_name_prefix="abm-rows"), helpers
    return _pool


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: start a new pool when needed."""
    global _pool, _pool_size
    _pool, _pool_size = None, 0


os.register_at_fork(after_in_child=_forget_pool)
