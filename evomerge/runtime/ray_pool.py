"""Ray evaluation: a pool of actors, each holding its own set-up copy of the fitness plug-in.

Actors receive genomes (flat parameter vectors), never plug-in objects, and return scores.
With no ``address`` an embedded Ray is started on this machine; with one (``auto`` or
``HOST:PORT``) the pool joins that cluster. A batch is split into chunks that go to whichever
actor is free (order of results is preserved).

A worker whose process or node dies is restarted by Ray (``max_restarts``) and its unfinished
chunk is retried on the new process (``max_task_retries``): scoring is deterministic, so the
run's result does not change. Errors raised by the plug-in itself are not retried.

With ``timeout_s`` a worker that has not returned a chunk of n candidates within
n x ``timeout_s`` seconds of being handed it is taken to hang: its process is killed, Ray
restarts it and retries the chunk on the new process, as for a death. The restarted worker
gets its set-up time on top (5 s + twice what the pool's first set-up took). A chunk that
times out more than ``max_restarts`` times stops the run with one line naming the plug-in and
the timeout. A ``metrics()`` call (one candidate) is held to ``timeout_s`` the same way.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import EvomergeError, PluginError
from ..genome.seed_store import from_description
from ..plugins import read_source
from .host import FitnessHost
from .local import transportable


def _make_seeds(spec, options, source, lineage):
    """A one-off Ray task: the lineage seeds made once for the whole cluster (or, for seeds
    in model folders, the folders the workers map)."""
    host = FitnessHost(spec, options, "cpu", source=source)
    return host.lineage_store(lineage).describe()


class _Worker:
    """The Ray actor body: a FitnessHost living in its own process."""

    def __init__(self, *host_args):
        """``host_args``: FitnessHost's, in its order (spec, options, device, source, threads,
        recipe, lineage, seeds_on_device)."""
        # A failed set-up is kept and raised by info(): errors raised by an actor's
        # constructor reach the driver only as text, task errors keep their type.
        self.error = None
        self.busy = 0.0
        try:
            self.host = FitnessHost(*host_args)
        except EvomergeError as exc:
            self.error = exc

    def info(self):
        if self.error is not None:
            raise self.error
        return self.host.info()

    def score(self, params):
        t0 = time.perf_counter()
        try:
            return self.host.score(params)
        finally:
            self.busy += time.perf_counter() - t0

    def busy_seconds(self) -> float:
        """Seconds this worker process has spent scoring."""
        return self.busy

    def metrics(self, params):
        return self.host.metrics(params)

    def make_seeds(self, count, seed, options):
        return self.host.make_seeds(count, seed, options)

    def seeds_shared(self) -> bool:
        """True when this worker's lineage seeds are shared (object store or mapped files)."""
        seeds = self.host.lineage_seeds
        return seeds is not None and seeds.shared

    def node(self):
        import ray

        return ray.get_runtime_context().get_node_id()


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error, if there is one."""
    cause = getattr(exc, "cause", None)
    while cause is not None and not isinstance(cause, EvomergeError):
        cause = getattr(cause, "cause", None) or getattr(cause, "__cause__", None)
    return cause if isinstance(cause, EvomergeError) else exc


def _join_error(address: str, why: str) -> EvomergeError:
    return EvomergeError(
        f"evaluator.address: cannot join Ray cluster at '{address}' ({why}); "
        "start one with 'ray start --head' or drop the address to run locally"
    )


def resolve_address(address: str) -> str:
    """'auto' means the cluster ``ray start`` recorded on this machine, as Ray reads it."""
    if address != "auto":
        return address
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        found = record.read_text().strip()
    except OSError:
        found = ""
    if not found:
        raise _join_error(address, f"no running cluster is recorded in {record}")
    return found


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes: Ray retries an unreachable GCS for a long time."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # 'ray://...' (Ray Client) and friends: let Ray resolve them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise _join_error(address, exc.strerror or str(exc)) from None


def start_ray(address: str | None, num_cpus: float | None = None) -> bool:
    """Connect to ``address`` or start an embedded local Ray. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        _init_ray(ray, address, num_cpus)
    finally:
        # ray.init installs its own SIGTERM handler in the driver (log and exit 15): put back
        # the program's own, so a scheduler's stop still checkpoints first (evomerge's cli)
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    return True


def _init_ray(ray, address: str | None, num_cpus: float | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")  # set inside 'ray job submit'

    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback-only embedded cluster
        ray.init(
            address="local",  # a new embedded instance, never a cluster left on this machine
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=True,
        )
    else:
        address = resolve_address(address)
        check_reachable(address)
        try:
            ray.init(address=address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise _join_error(address, str(exc)) from None


class RayEvaluator:
    """An actor pool of ``workers`` fitness hosts with ``num_cpus`` / ``num_gpus`` each."""

    kind = "ray"

    def __init__(
        self,
        spec,
        options,
        workers=2,
        num_cpus=1.0,
        num_gpus=0.0,
        address=None,
        recipe=None,
        max_restarts=3,
        lineage=None,
        chunk_size=None,
        timeout_s=None,
        seeds_on_device="auto",
    ):
        import ray

        self._ray = ray
        need = max(workers * num_cpus, os.cpu_count() or 1)
        self._owns_ray = start_ray(address, num_cpus=math.ceil(need))
        self._check_fits(workers, num_cpus, num_gpus)
        device = "cuda" if num_gpus > 0 else "cpu"
        actor = ray.remote(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_restarts=max_restarts,
            # retried until the actor itself is out of restarts: while the cluster has not yet
            # noticed that a node is gone, retries fail at once and would run out first
            max_task_retries=-1,
        )(_Worker)
        source = read_source(spec)
        self.spec_name = spec.rsplit("/", 1)[-1]
        threads = max(1, int(num_cpus))
        self._seeds_ref = None
        if lineage is not None:
            # One copy in the object store per node, mapped read-only by that node's workers
            # (and by restarted ones): workers never each hold a private copy of the seeds.
            task = ray.remote(num_cpus=num_cpus, max_retries=max_restarts)(_make_seeds)
            self._seeds_ref = task.remote(spec, options, source, lineage)
            lineage = self._seeds_ref
        self.actors = [
            actor.remote(spec, options, device, source, threads, recipe, lineage, seeds_on_device)
            for _ in range(workers)
        ]
        t0 = time.monotonic()
        infos = self._get([a.info.remote() for a in self.actors])
        # a worker restarted after a hang gets this on top of its timeout for its set-up
        self.restart_allowance = 5.0 + 2 * (time.monotonic() - t0)
        self.info = infos[0]
        self.workers = workers
        self.device = device
        self.max_restarts = max_restarts
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
        self.timeouts = 0  # hung workers killed (and restarted) so far
        self.scoring_seconds = 0.0  # wall time the driver spent waiting for scores
        self.evaluated = [0] * workers  # candidates scored by each worker slot

    def _check_fits(self, workers: int, num_cpus: float, num_gpus: float) -> None:
        """Refuse at once a pool the cluster cannot hold (Ray would wait for it forever)."""
        have = self._ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        if cpus + 1e-9 >= workers * num_cpus and gpus + 1e-9 >= workers * num_gpus:
            return
        if self._owns_ray:
            self._ray.shutdown()
        raise EvomergeError(
            f"evaluator: {workers} workers need {workers * num_cpus:g} CPUs and "
            f"{workers * num_gpus:g} GPUs, the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs; "
            "lower evaluator.workers / num_cpus / num_gpus or add nodes"
        )

    def _get(self, refs):
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as exc:
            err = _unwrap(exc)
            if err is not exc:
                raise err from None
            first = str(exc).strip().splitlines()
            msg = first[0] if first else type(exc).__name__
            raise PluginError(f"ray worker failed: {msg}") from None

    def score(self, params) -> torch.Tensor:
        t0 = time.perf_counter()
        try:
            return self._score(transportable(params))
        finally:
            self.scoring_seconds += time.perf_counter() - t0

    def _score(self, rows) -> torch.Tensor:
        chunk = self.chunk_size or math.ceil(len(rows) / self.workers)
        chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
        parts = [None] * len(chunks)
        waiting = list(range(len(chunks)))
        free = list(range(self.workers))
        running = {}  # object ref -> (worker slot, chunk index)
        deadline = {}  # object ref -> when its worker is taken to hang (with timeout_s)
        hung = [0] * len(chunks)  # times each chunk's worker was killed for hanging
        try:
            while waiting or running:
                while waiting and free:
                    slot, c = free.pop(0), waiting.pop(0)
                    ref = self.actors[slot].score.remote(chunks[c])
                    running[ref] = (slot, c)
                    if self.timeout_s:
                        deadline[ref] = time.monotonic() + self.timeout_s * len(chunks[c])
                wait = None
                if deadline:
                    wait = max(0.0, min(deadline.values()) - time.monotonic())
                done, _ = self._ray.wait(list(running), num_returns=1, timeout=wait)
                if not done:
                    self._kill_hung(deadline, running, hung, chunks)
                    continue
                ref = done[0]
                deadline.pop(ref, None)
                slot, c = running.pop(ref)
                parts[c] = self._ray.get(ref)
                self.evaluated[slot] += len(chunks[c])
                free.append(slot)
        except self._ray.exceptions.RayError as exc:
            for ref in running:  # the run stops: do not leave the other chunks queued
                try:
                    self._ray.cancel(ref)
                except Exception:  # noqa: BLE001 - best effort; the error below is the news
                    pass
            raise self._failure(exc) from None
        return torch.from_numpy(np.concatenate(parts))

    def _kill_hung(self, deadline: dict, running: dict, hung: list, chunks: list) -> None:
        """Kill the workers past their deadline; Ray restarts them and retries their chunk."""
        now = time.monotonic()
        for ref in [r for r, t in deadline.items() if t <= now]:
            slot, c = running[ref]
            hung[c] += 1
            if hung[c] > self.max_restarts:
                raise PluginError(
                    f"fitness {self.spec_name}: score() did not return within "
                    f"{self.timeout_s:g} s per candidate ({len(chunks[c])} candidates, "
                    f"{hung[c]} tries on restarted workers); raise evaluator.timeout_s or find "
                    "why the plug-in hangs"
                )
            self.timeouts += 1
            self._ray.kill(self.actors[slot], no_restart=False)  # the task is retried
            deadline[ref] = now + self.restart_allowance + self.timeout_s * len(chunks[c])

    def _failure(self, exc: BaseException) -> BaseException:
        """The one-line error for a failed chunk: the plug-in's own, or the worker's death."""
        err = _unwrap(exc)
        if err is not exc:
            return err
        first = str(exc).strip().splitlines()
        msg = first[0] if first else type(exc).__name__
        if isinstance(exc, self._ray.exceptions.RayActorError):
            return PluginError(
                f"ray worker died and was restarted {self.max_restarts} times without "
                f"finishing its candidates ({msg}); raise evaluator.max_restarts or check the "
                "workers' memory and logs"
            )
        return PluginError(f"ray worker failed: {msg}")

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        """Held-out metrics of one candidate; under ``timeout_s`` like one candidate's score."""
        ref = self.actors[0].metrics.remote(transportable(params))
        tries, wait = 0, self.timeout_s
        while self.timeout_s and not self._ray.wait([ref], timeout=wait)[0]:
            tries += 1
            if tries > self.max_restarts:
                raise PluginError(
                    f"fitness {self.spec_name}: metrics() did not return within "
                    f"{self.timeout_s:g} s ({tries} tries on restarted workers); raise "
                    "evaluator.timeout_s or find why the plug-in hangs"
                )
            self.timeouts += 1
            self._ray.kill(self.actors[0], no_restart=False)  # the call is retried
            wait = self.restart_allowance + self.timeout_s
        return self._get(ref)

    def lineage_seeds(self):
        """The store of the seeds the workers' lineage genomes mix (object store or files)."""
        return from_description(self._get(self._seeds_ref))

    def seeds_shared(self) -> list[bool]:
        return self._get([a.seeds_shared.remote() for a in self.actors])

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor:
        seeds = self._get(self.actors[0].make_seeds.remote(count, seed, options))
        return torch.from_numpy(np.array(seeds))  # a writable copy of Ray's read-only array

    def nodes(self) -> list[str]:
        return self._get([a.node.remote() for a in self.actors])

    def workers_report(self) -> list[dict]:
        """Each worker slot's node (now), the candidates it scored and its busy seconds."""
        busy = self._get([a.busy_seconds.remote() for a in self.actors])
        return [
            {"node": node, "evaluated": count, "busy_seconds": round(b, 3)}
            for node, count, b in zip(self.nodes(), self.evaluated, busy, strict=True)
        ]

    def utilisation(self) -> float | None:
        """Worker-busy seconds over workers x the driver's seconds waiting for scores."""
        if self.scoring_seconds <= 0:
            return None
        busy = sum(self._get([a.busy_seconds.remote() for a in self.actors]))
        return busy / (self.workers * self.scoring_seconds)

    def describe(self) -> str:
        return f"ray evaluator: {self.workers} workers on {self.device}"

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()
