"""How many of Numba's threads a one-token kernel uses: all of them for big work, one for small.

A parallel loop wakes Numba's worker threads. On an idle machine that costs microseconds, on a
busy one far more (a worker that went to sleep must be scheduled again: measured 0.5 ms per
loop on this 2-core machine while another process kept one core busy). A decode step runs a few
hundred loops, most of them over small matrices whose product takes less time than a wake-up.
So work below PARALLEL_BYTES runs on the calling thread alone; above it, on every thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba

# Bytes a kernel call reads, from which it is shared among the threads: about 0.1 ms of work.
PARALLEL_BYTES = 1 << 20


@contextlib.contextmanager
def threads_for(nbytes: int) -> Iterator[None]:
    """Inside the block Numba's parallel loops use one thread when the call reads fewer than
    PARALLEL_BYTES, else the thread count as it was (restored after)."""
    threads = numba.get_num_threads()
    if nbytes >= PARALLEL_BYTES or threads == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)
