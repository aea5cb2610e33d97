"""Steps an interrupt must not cut in half.

Ctrl-C and SIGTERM become ``KeyboardInterrupt`` anywhere in the program (the CLI installs the
handler), which is right while work is under way and wrong in the middle of the few renames
that swap a finished output into place: stopped between them, the old output is gone and the new
one is not there yet. :func:`deferred_interrupts` holds those signals back for such a block and
delivers them, in order, once it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Record SIGINT and SIGTERM during the block instead of acting on them, then hand each to
    the handler that was in place before, so the interrupt still happens, just after the block.

    Python runs signal handlers in the main thread only, whichever thread the process's signal
    reached, so swapping the handlers (not masking the signal, which other threads would still
    take) is what holds them back. Off the main thread, or under a handler Python did not
    install, the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _HELD}
    if any(h is None for h in previous.values()):
        yield
        return
    received: list[int] = []
    for s in _HELD:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in received:
            signal.raise_signal(signum)
