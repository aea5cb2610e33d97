"""CPU merges of many tensors: one torch thread per tensor, several tensors at once.

torch splits every op on more than 32K entries over its intra-op threads and joins them at a
barrier. The fused merge passes run many ops on cache-sized blocks (2**17 entries), so each op
is short and the barriers are many; on a shared machine one descheduled intra-op thread stalls
every barrier for a scheduler time slice. A TIES load that took 0.16 s on one thread took 0.6
to 10 s on two threads of a busy 2-core machine. Running each tensor's merge on one intra-op
thread, and as many tensors at once as there were intra-op threads, keeps the cores busy with
no barriers at all; the arithmetic of each tensor is unchanged, so results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def one_op_thread():
    """torch's intra-op threads set to 1 for the block, then restored; yields the old count.

    Threads started inside the block take one intra-op thread too (torch sets a thread's
    count on its first parallel op from the process-wide setting).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def for_each_tensor(
    work: Callable[[int], None], sizes: Sequence[int], cpu: bool = True, workers: int | None = None
) -> None:
    """``work(i)`` for every index of ``sizes``, the largest first, on a pool of threads.

    ``cpu`` False (tensors on an accelerator) runs them in order on the calling thread, as
    torch's own parallelism is not the bottleneck there. ``workers`` defaults to torch's
    intra-op thread count. The first exception raised by any ``work`` is raised here.
    """
    if not cpu or len(sizes) < 2:
        for i in range(len(sizes)):
            work(i)
        return
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    with one_op_thread() as threads:
        count = max(1, workers or threads)
        if count == 1:
            for i in order:
                work(i)
            return
        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(work, i) for i in order]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
