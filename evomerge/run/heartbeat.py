"""``running.json``: the heartbeat a run writes while it runs, and how a reader judges it.

The process running a search (``evomerge run`` / ``resume``) holds ``running.json`` in the run
directory: its pid and host, when it started, and a heartbeat refreshed every few seconds with
the evaluations done, the recent evaluations/s and the workers. It removes the file when it
ends, however it ends (a kill -9 leaves it behind with a dead pid). ``evomerge status`` and
``ls`` read it, with the ``flock`` on ``run.lock``, to tell a running run from a stopped one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from evomerge.core.files import pid_alive, write_atomic

LOCK = "running.json"
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 120.0  # a heartbeat from another host older than this: the run is gone


class RunLock:
    """Hold ``running.json`` while a search runs; a thread refreshes its heartbeat."""

    def __init__(self, search, interval: float = HEARTBEAT_SECONDS):
        self.search = search
        self.path = Path(search.run.path) / LOCK
        self.interval = interval
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = (time.time(), search.state.evaluations)
        self._rate = None

    def _info(self) -> dict:
        search, now = self.search, time.time()
        done = int(search.state.evaluations)
        t_prev, d_prev = self._last
        if now - t_prev > 0 and done > d_prev:
            self._rate = (done - d_prev) / (now - t_prev)
        self._last = (now, done)
        evaluator = search.evaluator
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "updated": now,
            "evaluations": done,
            "budget": search.cfg.budget.evaluations,
            "example_evaluations": int(search.example_evaluations),
            "example_budget": search.cfg.budget.example_evaluations,
            "evaluations_per_second": self._rate,
            "evaluator": getattr(evaluator, "kind", None),
            "workers": getattr(evaluator, "workers", 1),
        }

    def beat(self) -> None:
        try:
            write_atomic(self.path, json.dumps(self._info(), indent=1) + "\n")
        except OSError:
            pass  # a full or read-only disk shows up where the run writes checkpoints

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self):
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="evomerge-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def read_lock(path: Path) -> dict | None:
    """``running.json`` as a dict, or None (missing, damaged, or not a mapping)."""
    try:
        data = json.loads((Path(path) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _fresh(lock: dict) -> bool:
    try:
        return time.time() - float(lock.get("updated", 0)) < STALE_SECONDS
    except (TypeError, ValueError):
        return False


def lock_is_live(lock: dict | None, held: bool | None = None) -> bool:
    """Whether a process is writing the run. ``held``: whether ``run.lock``'s flock is held
    (None: no ``run.lock``, a run directory of an earlier version: fall back on the pid)."""
    if held:
        return True
    if not lock:
        return False
    if lock.get("host") == socket.gethostname():
        if held is False:  # the flock is free: nobody on this host writes, whatever the pid
            return False
        pid = lock.get("pid")
        return isinstance(pid, int) and pid_alive(pid)
    return _fresh(lock)


def running_elsewhere(path: str | Path) -> bool:
    """A fresh heartbeat from another host (whose flock this host may not see)."""
    lock = read_lock(Path(path))
    return bool(lock) and lock.get("host") != socket.gethostname() and _fresh(lock)
