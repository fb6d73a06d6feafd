"""Whether a one-token kernel shares its work among Numba's threads: for big work, not small.

A parallel loop wakes Numba's worker threads. On an idle machine that costs microseconds, on a
busy one far more (a worker that went to sleep must be scheduled again: measured 0.5 ms per
loop on this 2-core machine while another process kept one core busy). A decode step runs a few
hundred loops, most of them over small matrices whose product takes less time than a wake-up.
So the one-token kernels take `shared`: True runs their parallel loop, False the same work as a
plain loop on the calling thread (changing Numba's thread count instead costs microseconds of
Python per call).
"""

from __future__ import annotations

# Bytes a kernel call reads from which it is shared among the threads: about 0.1 ms of work.
PARALLEL_BYTES = 1 << 20


def shared(nbytes: int) -> bool:
    """Whether a kernel call that reads `nbytes` should share its work among the threads."""
    return nbytes >= PARALLEL_BYTES
