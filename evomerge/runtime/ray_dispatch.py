"""Scoring one batch over a Ray pool: chunks to free workers, hung workers killed, and the
candidates of a worker that waits for a node taken over by the others.

A worker that is not alive (restarting after a death, or waiting for a node with room after
its own was lost) is "away": its chunk goes back to the queue and the workers still alive take
it, so a lost worker that cannot be placed again never stalls the run. Scores are
deterministic, so which worker scores a chunk does not change the result. Ray still retries
the chunk on the restarted worker (that copy is cancelled or ignored). A worker that comes back
is handed chunks again. Only a batch that no worker is left to score stops the run: with
``timeout_s``, with one line that names the missing free resources, not the plug-in.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from evomerge.core.contracts import DeferredChildren
from evomerge.core.errors import EvomergeError, PluginError
from evomerge.runtime.ray_cluster import actor_state, free_room, room_for_one

POLL_S = 1.0  # how often the states of busy and missing workers are read
REPORT_AFTER_S = 3.0  # a worker without a node this long is reported (not a quick restart)


def warn(text: str) -> None:
    """One line on stderr, shown with --quiet too: the run is slowed, not stopped."""
    print(f"evomerge: warning: {text}", file=sys.stderr, flush=True)


class Batch:
    """One call of ``score``: the chunks, who holds which, and the deadlines."""

    def __init__(self, pool, rows, example_ids=None):
        self.pool = pool
        self.example_ids = example_ids  # None: every training example
        self.ray = pool._ray
        size = pool.chunk_size or math.ceil(len(rows) / pool.workers)
        starts = range(0, len(rows), size)
        if isinstance(rows, DeferredChildren):  # recipes: each chunk a payload made per worker
            self.chunks = [rows.subset(range(i, min(i + size, len(rows)))) for i in starts]
        else:
            self.chunks = [rows[i : i + size] for i in starts]
        self.parts = [None] * len(self.chunks)
        self.waiting = list(range(len(self.chunks)))
        self.free = [s for s in range(pool.workers) if s not in pool.away]
        self.running = {}  # object ref -> (worker slot, chunk index)
        self.deadline = {}  # object ref -> when its worker is taken to hang (with timeout_s)
        self.hung = [0] * len(self.chunks)  # times each chunk's worker was killed for hanging
        self.stalled = None  # since when no worker is alive to take the waiting chunks

    def run(self) -> torch.Tensor:
        ray = self.ray
        try:
            while any(p is None for p in self.parts):
                self._hand_out()
                wait = POLL_S
                if self.deadline:
                    wait = min(wait, max(0.0, min(self.deadline.values()) - time.monotonic()))
                if self.running:
                    done, _ = ray.wait(list(self.running), num_returns=1, timeout=wait)
                else:
                    done = []
                    time.sleep(wait)
                for ref in done:
                    self._collect(ref)
                if time.monotonic() - self.pool.checked >= POLL_S:  # over batches: short ones
                    self._check_away()
                    self.pool.checked = time.monotonic()
                self._kill_hung()
        except ray.exceptions.RayError as exc:
            self._cancel_all()
            raise self.pool._failure(exc) from None
        except BaseException:
            self._cancel_all()
            raise
        return torch.from_numpy(np.concatenate(self.parts))

    def _hand_out(self) -> None:
        pool = self.pool
        while self.waiting and self.free:
            slot, c = self.free.pop(0), self.waiting.pop(0)
            chunk = self.chunks[c]
            if isinstance(chunk, DeferredChildren):
                payload = chunk.payload(pool.held[slot])
                ref = pool.actors[slot].score_children.remote(payload, self.example_ids)
                pool.held[slot] = (pool.held[slot] | chunk.parents()) & set(payload["keep"])
            else:
                ref = pool.actors[slot].score.remote(chunk, self.example_ids)
            self.running[ref] = (slot, c)
            if pool.timeout_s:
                self.deadline[ref] = time.monotonic() + pool.timeout_s * len(self.chunks[c])

    def _collect(self, ref) -> None:
        self.deadline.pop(ref, None)
        slot, c = self.running.pop(ref)
        part = self.ray.get(ref)
        if isinstance(part, dict):  # a replica without the parents: send them again
            self.pool.held[slot] = set()
            self.waiting.insert(0, c)
            self.free.append(slot)
            return
        if self.parts[c] is None:
            self.parts[c] = part
            self.pool.evaluated[slot] += len(self.chunks[c])
        self.free.append(slot)

    def _check_away(self) -> None:
        """Take the chunks of workers that are not alive; hand chunks to those back again."""
        pool = self.pool
        busy = {slot: ref for ref, (slot, _) in self.running.items()}
        for slot in sorted(set(busy) | pool.away):
            state, _ = actor_state(self.ray, pool.actors[slot])
            if state == "ALIVE":
                pool.unplaced.pop(slot, None)
                if slot in pool.away:
                    pool.away.discard(slot)
                    self.free.append(slot)
                continue
            if slot in busy:  # its chunk goes back to the queue, for any worker alive
                ref = busy[slot]
                _, c = self.running.pop(ref)
                self.deadline.pop(ref, None)
                self.waiting.insert(0, c)
                self._cancel(ref)
            pool.away.add(slot)
            pool.held[slot] = set()  # a restarted worker starts with an empty replica
            if state == "DEAD":
                pool.unplaced.pop(slot, None)
                continue
            since = pool.unplaced.setdefault(slot, [time.monotonic(), False])
            away_s = time.monotonic() - since[0]
            if (
                not since[1]
                and away_s >= REPORT_AFTER_S
                and not room_for_one(self.ray, pool.num_cpus, pool.num_gpus)
            ):
                since[1] = True  # one line each time a worker stays away
                warn(
                    f"worker {pool.names[slot]} is {state.lower()} for {away_s:.0f} s, "
                    f"waiting for a node with {pool.need()} free (no free resources now: "
                    f"{free_room(self.ray)}); the other workers take its candidates"
                )
        if len(pool.away) == pool.workers and all(
            actor_state(self.ray, a)[0] == "DEAD" for a in pool.actors
        ):
            raise PluginError(
                f"ray workers died and were restarted {pool.max_restarts} times without "
                "finishing their candidates; raise evaluator.max_restarts or check the "
                "workers' memory and logs"
            )
        self._check_stalled()

    def _check_stalled(self) -> None:
        """With timeout_s, no worker alive for too long stops the run, naming the resources."""
        pool = self.pool
        if len(pool.away) < pool.workers or not self.waiting:
            self.stalled = None
            return
        now = time.monotonic()
        self.stalled = self.stalled or now
        if not pool.timeout_s:
            return
        longest = max(len(self.chunks[c]) for c in self.waiting)
        if now - self.stalled > pool.restart_allowance + pool.timeout_s * longest:
            raise EvomergeError(
                f"evaluator: no free resources: no worker is alive to score "
                f"{sum(len(self.chunks[c]) for c in self.waiting)} candidates for "
                f"{now - self.stalled:.0f} s (evaluator.timeout_s {pool.timeout_s:g}); the "
                f"workers wait for a node with {pool.need()} free (free now: "
                f"{free_room(self.ray)}); add nodes or lower evaluator.workers / num_cpus / "
                "num_gpus, then resume",
                exit_code=1,
            )

    def _kill_hung(self) -> None:
        """Kill the workers past their deadline; Ray restarts them and their chunk is retried.

        A worker past its deadline that is not alive is waiting for a node, not hanging: its
        chunk goes to the others (``_check_away``) and the plug-in is not blamed.
        """
        pool = self.pool
        now = time.monotonic()
        for ref in [r for r, t in self.deadline.items() if t <= now]:
            slot, c = self.running[ref]
            if actor_state(self.ray, pool.actors[slot])[0] != "ALIVE":
                self._check_away()
                return
            self.hung[c] += 1
            if self.hung[c] > pool.max_restarts:
                raise PluginError(
                    f"fitness {pool.spec_name}: score() did not return within "
                    f"{pool.timeout_s:g} s per candidate ({len(self.chunks[c])} candidates, "
                    f"{self.hung[c]} tries on restarted workers); raise evaluator.timeout_s or "
                    "find why the plug-in hangs"
                )
            pool.timeouts += 1
            self.ray.kill(pool.actors[slot], no_restart=False)  # the task is retried
            timeout = pool.timeout_s * len(self.chunks[c])
            self.deadline[ref] = now + pool.restart_allowance + timeout

    def _cancel(self, ref) -> None:
        try:
            self.ray.cancel(ref)
        except Exception:  # noqa: BLE001 - best effort; its result is ignored anyway
            pass

    def _cancel_all(self) -> None:
        for ref in self.running:  # the run stops: do not leave the other chunks queued
            self._cancel(ref)
