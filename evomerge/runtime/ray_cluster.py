"""Joining a Ray cluster and asking it where workers can go.

``auto`` follows Ray's own rules: ``RAY_ADDRESS``, then the cluster ``ray start`` recorded on
this machine; a record whose cluster no longer answers is one clear line, not a long wait.
A pool is checked against each node's resources before any actor is made (Ray would
otherwise wait for ever for a worker no node can hold), and the state of a worker (alive, or
waiting for a node with room) is read from the cluster's actor table.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path

from evomerge.core.errors import EvomergeError

# Set by Ray's job supervisor in the environment of a job's driver (``ray job submit``).
JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def join_error(address: str, why: str) -> EvomergeError:
    return EvomergeError(
        f"evaluator.address: cannot join Ray cluster at '{address}' ({why}); "
        "start one with 'ray start --head' or drop the address to run locally"
    )


def record_file() -> Path:
    """Where ``ray start --head`` records its address (Ray's temp dir, RAY_TMPDIR aware)."""
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except (ImportError, AttributeError):  # another Ray version: its long-standing default
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
        return Path(base) / "ray" / "ray_current_cluster"


def resolve_address(address: str) -> str:
    """'auto' as Ray reads it: RAY_ADDRESS if set, else the cluster recorded by ``ray start``."""
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    record = record_file()
    try:
        found = record.read_text().strip()
    except OSError:
        found = ""
    if not found:
        why = f"RAY_ADDRESS is not set and no running cluster is recorded in {record}"
        raise join_error(address, why)
    if unreachable(found) is not None:
        raise EvomergeError(
            f"evaluator.address: auto: {record} records the cluster at {found}, which does not "
            "answer (a stale record of a stopped cluster); start one with 'ray start --head', "
            "or give its address with --address HOST:PORT or RAY_ADDRESS"
        )
    return found


def unreachable(address: str, timeout: float = 10.0) -> str | None:
    """Why ``address`` does not answer, or None (also for 'ray://...': Ray resolves those)."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes: Ray retries an unreachable GCS for a long time."""
    why = unreachable(address, timeout)
    if why is not None:
        raise join_error(address, why)


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
            raise join_error(address, str(exc)) from None


def in_ray_job() -> bool:
    """True in the driver of a ``ray job submit`` (Ray's job supervisor sets JOB_ENV)."""
    return JOB_ENV in os.environ


def alive_nodes(ray) -> list[dict]:
    """Each live node: its address and total CPU / GPU."""
    nodes = []
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources") or {}
            nodes.append(
                {
                    "id": node.get("NodeID"),
                    "ip": node.get("NodeManagerAddress", "?"),
                    "CPU": float(res.get("CPU", 0.0)),
                    "GPU": float(res.get("GPU", 0.0)),
                }
            )
    return nodes


def per_node(cpus: float, gpus: float, num_cpus: float, num_gpus: float) -> int:
    """Workers of ``num_cpus`` / ``num_gpus`` one node of ``cpus`` / ``gpus`` can hold."""
    fits = []
    if num_cpus > 0:
        fits.append(math.floor(cpus / num_cpus + 1e-9))
    if num_gpus > 0:
        fits.append(math.floor(gpus / num_gpus + 1e-9))
    return min(fits) if fits else 10**9


def describe_nodes(nodes: list[dict]) -> str:
    return ", ".join(f"{n['ip']} {n['CPU']:g} CPU {n['GPU']:g} GPU" for n in nodes) or "none"


def check_placement(ray, workers: int, num_cpus: float, num_gpus: float) -> None:
    """Refuse at once a pool the cluster's nodes cannot hold: a worker lives on one node."""
    nodes = alive_nodes(ray)
    room = sum(per_node(n["CPU"], n["GPU"], num_cpus, num_gpus) for n in nodes)
    if room >= workers:
        return
    what = "no node can hold one worker" if room == 0 else f"the nodes hold only {room}"
    raise EvomergeError(
        f"evaluator: evaluator.workers {workers} of num_cpus {num_cpus:g} and num_gpus "
        f"{num_gpus:g} each: {what}, as a worker must fit on one node (nodes: "
        f"{describe_nodes(nodes)}); lower evaluator.workers / num_cpus / num_gpus or add "
        "nodes with room"
    )


def actor_state(ray, actor) -> tuple[str, bool]:
    """The actor's state in the cluster's table (ALIVE, RESTARTING, PENDING_CREATION, ...) and
    whether it has a process on a live node (False: it waits for a node with room)."""
    try:
        from ray._private import state

        info = state.actors(actor_id=actor._actor_id.hex())
    except Exception:  # noqa: BLE001 - a version without this table: take it as alive
        return "ALIVE", True
    name = str(info.get("State", "ALIVE"))
    if name == "ALIVE":
        return name, True
    node = (info.get("Address") or {}).get("NodeID")
    live = {n["id"] for n in alive_nodes(ray)}
    # a restarting actor's table entry keeps a process id and names a live node before it
    # has one: only a pending creation's entry tells
    return name, name != "RESTARTING" and bool(info.get("Pid")) and node in live


def free_nodes(ray) -> list[dict] | None:
    """Each live node with what it has free now (None: the cluster does not say)."""
    try:
        from ray._private import state

        free = state.available_resources_per_node()
    except Exception:  # noqa: BLE001 - the report is best effort
        return None
    nodes = alive_nodes(ray)
    for n in nodes:
        have = free.get(n["id"], {})
        n["CPU"], n["GPU"] = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
    return nodes


def free_room(ray) -> str:
    """What each live node has free now (for the line about a worker waiting for a node)."""
    nodes = free_nodes(ray)
    return "unknown" if nodes is None else describe_nodes(nodes)


def room_for_one(ray, num_cpus: float, num_gpus: float) -> bool:
    """True when some live node has room for one more worker now."""
    nodes = free_nodes(ray)
    return nodes is None or any(per_node(n["CPU"], n["GPU"], num_cpus, num_gpus) for n in nodes)


def check_job_out(out: Path) -> None:
    """Under ``ray job submit`` a relative run directory would land in Ray's copy of the job's
    working directory (deleted with the job's files): refuse it, naming the fix."""
    if not in_ray_job() or out.is_absolute():
        return
    where = f"Ray's copy of the working directory ({Path.cwd()})"
    raise EvomergeError(
        f"--out {out}: a relative run directory in a Ray job lands in {where}, which Ray "
        "deletes; give an absolute path on storage that outlives the job, e.g. "
        "--out /shared/populations/NAME"
    )
