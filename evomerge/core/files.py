"""Crash-safe file writes: write to a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a file or a folder (after a rename, its entry) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts): the owner of a
    temporary checkpoint folder or of a run's ``running.json``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def try_lock(path: Path, retry_seconds: float = 0.5) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing): its file descriptor, or None
    when another process holds it.

    The kernel drops the lock when the holder dies, however it dies, so a lock never outlives
    its process: no pid to compare, nothing to clean up after a reboot or in a container where
    pids are reused. A short retry lets readers (:func:`is_locked`) pass without refusing a
    writer.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    deadline = time.monotonic() + retry_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
        except OSError:
            os.close(fd)
            raise


def is_locked(path: Path) -> bool | None:
    """Whether some process holds the ``flock`` of ``path`` (None: no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock at once
    return False


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden temporary name beside ``path`` (same file system, so renaming is atomic),
    shortened with a hash when ``path``'s name is near the 255-byte limit of a file name."""
    path = Path(path)
    suffix = f".{tag}-{os.getpid()}"
    name = f".{path.name}{suffix}"
    if len(name.encode()) > 255:
        digest = hashlib.sha256(path.name.encode()).hexdigest()[:12]
        name = f".{path.name.encode()[:180].decode(errors='ignore')}-{digest}{suffix}"
    return path.parent / name
