"""Crash-safe file writes: write under a temporary name in the same folder, fsync, rename,
fsync the folder. Every file of a run directory, checkpoint, report, project or model output is
made this way (:func:`publish` is the one place that does it), so a kill or a power cut leaves
the old file or the new one, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evomerge.core.interrupts import deferred_interrupts


def fsync_dir(path: Path) -> None:
    """Flush a file or a folder (after a rename, its entry) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a file, or a folder with every file and folder under it, to disk."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            fsync_tree(child)
    if not path.is_symlink():
        fsync_dir(path)


def publish(tmp: Path, final: Path, aside: Path | None = None, flushed: bool = False) -> None:
    """Make the finished ``tmp`` (a file or a folder beside ``final``) appear as ``final``.

    Its contents are flushed, it is renamed over ``final`` in one step and the folder's entry
    is flushed, so a crash at any moment leaves the old ``final`` or the new one. Given
    ``aside``, an existing ``final`` is first renamed to it and removed once the new one is in
    place (a rename cannot replace a folder that holds files); without, a folder ``final``
    must be empty. ``flushed``: the caller has already run :func:`fsync_tree` on ``tmp`` (to
    tell a failed write from a failed rename in its message).
    """
    tmp, final = Path(tmp), Path(final)
    if not flushed:
        fsync_tree(tmp)
    moved = aside is not None and (final.exists() or final.is_symlink())
    if moved:
        _remove(aside)
    with deferred_interrupts():  # an interrupt here would leave neither the old nor the new
        if moved:
            os.rename(final, aside)
        try:
            os.replace(tmp, final)
        except OSError:
            if moved:
                os.rename(aside, final)  # put the old one back: nothing changed
            raise
        fsync_dir(final.parent)
        if moved:
            _remove(aside)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, if there (a leftover is harmless: it is hidden)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` for the caller to write (a file or a folder); when the
    block ends without an error it replaces ``path`` (:func:`publish`), else it is removed::

        with replacing(out / "stats.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new one, never half."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def append_durably(path: Path, text: str) -> None:
    """Add ``text`` at the end of ``path`` (created if missing) and flush it to disk.

    For logs that only grow (``history.jsonl``): a crash can cut the last line short, which
    readers skip, but never loses a line written before a checkpoint that was kept.
    """
    path = Path(path)
    created = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if created:
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
