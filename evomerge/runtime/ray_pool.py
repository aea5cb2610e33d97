"""Ray evaluation: a pool of actors, each holding its own set-up copy of the fitness plug-in.

Actors receive genomes (flat parameter vectors), never plug-in objects, and return scores.
With no ``address`` an embedded Ray is started on this machine; with one (``auto`` or
``HOST:PORT``) the pool joins that cluster. A batch is split into chunks that go to whichever
actor is free (order of results is preserved).

A worker whose process or node dies is restarted by Ray (``max_restarts``) and its unfinished
chunk is retried on the new process (``max_task_retries``): scoring is deterministic, so the
run's result does not change. Errors raised by the plug-in itself are not retried. While a
worker is not alive (restarting, or waiting for a node with room) the others take its
candidates (ray_dispatch.py). The pool is checked against each node's resources first
(ray_cluster.py), and workers are named ``evomerge-<run>-<i>`` in the ``evomerge`` namespace.

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
import time

import numpy as np
import torch

from evomerge.core.contracts import DeferredChildren
from evomerge.core.errors import EvomergeError, PluginError
from evomerge.core.plugins import read_source
from evomerge.runtime.host import FitnessHost
from evomerge.runtime.local import transportable
from evomerge.runtime.ray_cluster import actor_state, check_placement, free_room, start_ray
from evomerge.runtime.ray_dispatch import Batch, warn
from evomerge.spaces.member_children import MemberReplica
from evomerge.tensors.seed_store import from_description

NAMESPACE = "evomerge"  # 'ray list actors' shows the workers as evomerge-<run>-<i> in it
ANSWER_S = 5.0  # how long a report waits for a worker that is not alive


def _make_seeds(spec, options, source, space, extensions=()):
    """A one-off Ray task: the lineage seeds made once for the whole cluster (or, for seeds
    in model folders, the folders the workers map)."""
    host = FitnessHost(spec, options, "cpu", source=source, extensions=extensions)
    return host.lineage_store(space).describe()


class _Worker:
    """The Ray actor body: a FitnessHost living in its own process."""

    def __init__(self, *host_args):
        """``host_args``: FitnessHost's, in its order (spec, options, device, source, threads,
        space, seeds, seeds_on_device, extensions)."""
        # A failed set-up is kept and raised by info(): errors raised by an actor's
        # constructor reach the driver only as text, task errors keep their type.
        self.error = None
        self.busy = 0.0
        self.replica = None  # archive members, for children sent as recipes
        try:
            self.host = FitnessHost(*host_args)
        except EvomergeError as exc:
            self.error = exc

    def info(self):
        if self.error is not None:
            raise self.error
        return self.host.info()

    def score(self, params, example_ids=None):
        t0 = time.perf_counter()
        try:
            return self.host.score(params, example_ids)
        finally:
            self.busy += time.perf_counter() - t0

    def score_children(self, payload, example_ids=None):
        """Scores of dense children sent as recipes over this worker's replica of the
        archive members (:mod:`~evomerge.spaces.member_children`); ``{"missing": ids}``
        when the replica lacks parents (a restarted worker): the driver sends them."""
        t0 = time.perf_counter()
        try:
            if self.replica is None:
                self.replica = MemberReplica()
            missing = self.replica.missing(payload)
            if missing:
                return {"missing": missing}
            return self.host.score(self.replica.rows(payload), example_ids)
        finally:
            self.busy += time.perf_counter() - t0

    def busy_seconds(self) -> float:
        """Seconds this worker process has spent scoring."""
        return self.busy

    def metrics(self, params):
        return self.host.metrics(params)

    def make_seeds(self, count, seed, options):
        return self.host.make_seeds(count, seed, options)

    def seed_genes(self):
        return self.host.seed_genes()

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


class RayEvaluator:
    """An actor pool of ``workers`` fitness hosts with ``num_cpus`` / ``num_gpus`` each."""

    kind = "ray"
    #: dense children may come as recipes (:class:`~evomerge.core.contracts.DeferredChildren`)
    builds_children = True

    def __init__(
        self,
        spec,
        options,
        workers=2,
        num_cpus=1.0,
        num_gpus=0.0,
        address=None,
        space=None,
        max_restarts=3,
        chunk_size=None,
        timeout_s=None,
        name=None,
        seeds_on_device="auto",
        extensions=(),
    ):
        import ray

        self._ray = ray
        need = max(workers * num_cpus, os.cpu_count() or 1)
        self._owns_ray = start_ray(address, num_cpus=math.ceil(need))
        try:
            check_placement(ray, workers, num_cpus, num_gpus)
        except EvomergeError:
            if self._owns_ray:
                ray.shutdown()
            raise
        device = "cuda" if num_gpus > 0 else "cpu"
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
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
        if (space or {}).get("shared_seeds"):
            # One copy in the object store per node, mapped read-only by that node's workers
            # (and by restarted ones): workers never each hold a private copy of the seeds.
            # max_calls=1: the task's process exits after it, with the model the plug-in built
            task = ray.remote(num_cpus=num_cpus, max_retries=max_restarts, max_calls=1)(_make_seeds)
            self._seeds_ref = task.remote(spec, options, source, space, extensions)
        args = (
            spec, options, device, source, threads, space, self._seeds_ref, seeds_on_device,
            extensions,
        )  # fmt: skip
        self.actors, self.names = _named_actors(actor, workers, name or "run", args)
        self.away: set[int] = set()  # worker slots not alive now (restarting, or unplaced)
        self.unplaced: dict[int, list] = {}  # slot -> [since when without a node, reported]
        self.checked = time.monotonic()  # when the workers' states were last read
        t0 = time.monotonic()
        infos = self._get(self._started([a.info.remote() for a in self.actors]))
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
        self.held = [set() for _ in range(workers)]  # member ids each worker's replica holds

    def need(self) -> str:
        """One worker's resources, as the warnings name them."""
        gpus = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.num_cpus:g} CPU{gpus}"

    def _started(self, refs):
        """Wait for the workers' set-up; a worker still without a node is reported once."""
        waited, reported = 0.0, False
        while True:
            _, pending = self._ray.wait(refs, num_returns=len(refs), timeout=10.0)
            if not pending:
                return refs
            waited += 10.0
            slots = [refs.index(r) for r in pending]
            unplaced = [
                self.names[s] for s in slots if not actor_state(self._ray, self.actors[s])[1]
            ]
            # Ray's table shows a worker whose process is still starting (imports on a busy
            # node) like one waiting for room, so the line says both and waits 30 s first
            if unplaced and not reported and waited >= 30.0:
                reported = True
                warn(
                    f"{len(unplaced)} of {len(refs)} workers ({', '.join(unplaced)}) have no "
                    f"process after {waited:.0f} s: still starting, or waiting for a node with "
                    f"{self.need()} free (free now: {free_room(self._ray)}); they start when "
                    "room is made"
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

    def score(self, params, example_ids=None) -> torch.Tensor:
        """``(B, E)`` scores, or ``(B, len(example_ids))`` on those training examples only."""
        t0 = time.perf_counter()
        ids = None if example_ids is None else np.asarray(example_ids, dtype=np.int64)
        try:
            rows = params if isinstance(params, DeferredChildren) else transportable(params)
            return Batch(self, rows, ids).run()
        finally:
            self.scoring_seconds += time.perf_counter() - t0

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

    def _first(self):
        """The first worker that is alive (all of them away: the first one)."""
        alive = [s for s in range(len(self.actors)) if s not in self.away]
        return self.actors[alive[0] if alive else 0]

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        """Held-out metrics of one candidate; under ``timeout_s`` like one candidate's score."""
        first = self._first()
        ref = first.metrics.remote(transportable(params))
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
            self._ray.kill(first, no_restart=False)  # the call is retried
            wait = self.restart_allowance + self.timeout_s
        return self._get(ref)

    def lineage_seeds(self):
        """The store of the seeds the workers' lineage genomes mix (object store or files)."""
        return from_description(self._get(self._seeds_ref))

    def _ask(self, method: str) -> list:
        """Each worker's answer; None from a worker that is not alive (waiting for a node)."""
        refs = [getattr(a, method).remote() for a in self.actors]
        done, _ = self._ray.wait(refs, num_returns=len(refs), timeout=ANSWER_S)
        answers = []
        for ref in refs:
            if ref in done:
                answers.append(self._get(ref))
            else:
                self._ray.cancel(ref)
                answers.append(None)
        return answers

    def seeds_shared(self) -> list[bool]:
        return self._get([a.seeds_shared.remote() for a in self.actors])

    def make_seeds(self, count: int, seed: int, options: dict) -> torch.Tensor:
        seeds = self._get(self._first().make_seeds.remote(count, seed, options))
        return torch.from_numpy(np.array(seeds))  # a writable copy of Ray's read-only array

    def seed_genes(self) -> list[float]:
        """One worker's (the first's) seed genes: a learnt start is learnt once a run."""
        return list(self._get(self._first().seed_genes.remote()))

    def nodes(self) -> list[str | None]:
        """Each worker's node now (None: the worker waits for one)."""
        return self._ask("node")

    def workers_report(self) -> list[dict]:
        """Each worker slot's name, node (now), the candidates it scored and busy seconds."""
        busy = self._ask("busy_seconds")
        return [
            {"name": name, "node": node, "evaluated": count, "busy_seconds": round(b or 0.0, 3)}
            for name, node, count, b in zip(
                self.names, self.nodes(), self.evaluated, busy, strict=True
            )
        ]

    def utilisation(self) -> float | None:
        """Worker-busy seconds over workers x the driver's seconds waiting for scores."""
        if self.scoring_seconds <= 0:
            return None
        busy = sum(b or 0.0 for b in self._ask("busy_seconds"))
        return busy / (self.workers * self.scoring_seconds)

    def describe(self) -> str:
        return f"ray evaluator: {self.workers} workers on {self.device}"

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()


def _named_actors(actor, workers: int, run: str, args: tuple) -> tuple[list, list[str]]:
    """Workers named ``evomerge-<run>-<i>`` in the ``evomerge`` namespace.

    A name held by a live actor (another run of the same name on the cluster, or the workers
    of a driver that is still shutting down) gets a suffix: ``evomerge-<run>.2-<i>``. A
    restarted worker keeps its name (Ray restarts the same actor).
    """
    stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in run)[:80] or "run"
    for k in range(1, 100):
        tag = stem if k == 1 else f"{stem}.{k}"
        names = [f"evomerge-{tag}-{i}" for i in range(workers)]
        made = []
        try:
            for n in names:
                made.append(actor.options(name=n, namespace=NAMESPACE).remote(*args))
        except ValueError:  # the name is taken
            import ray

            for a in made:
                ray.kill(a)
            continue
        return made, names
    raise EvomergeError(f"evaluator: no free worker names for run '{run}' on the cluster")
