"""The run directory: resolved config, checkpoints, history and summary of one search.

``config.yaml`` (the resolved config), ``checkpoints/``, ``history.jsonl`` (one JSON record
per line) and ``summary.json`` (written when the run ends). Everything is text or safetensors.
"""

from __future__ import annotations

import json
import math
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import yaml

from evomerge.core import safe_yaml
from evomerge.core.errors import RunDirError
from evomerge.core.files import append_durably, try_lock, write_atomic

CONFIG = "config.yaml"
RUN_LOCK = "run.lock"  # flock held by the one process writing the run (run / resume)
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


def _finite(value):
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_json(value, indent: int | None = None) -> str:
    """Valid JSON whatever ``value`` holds: a non-finite number is written as null (the run's
    metrics name theirs in ``nonfinite_metrics``), never as ``NaN`` or ``Infinity``."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


class RunDir:
    """Paths and small-file I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._made = False

    @contextmanager
    def writer(self, create: bool):
        """Be the run's one writer while the block runs, or refuse in one line.

        Taken before anything is written: an exclusive ``flock`` on ``run.lock``, which the
        kernel releases when this process ends however it ends, so a lock left by a dead
        process never blocks (whatever its pid now belongs to). ``create``: make the folder
        if it is missing (``evomerge run``); if no run came of it, nothing is left behind.
        """
        if any(len(part.encode()) > 255 for part in self.path.parts):
            raise RunDirError(
                f"{self.path}: cannot create the run directory (File name too long: a name "
                "over 255 bytes); choose a shorter --out"
            )
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: is a file, not a folder; choose another --out")
        if create and not self.path.exists():
            try:
                self.path.mkdir(parents=True)
                self._made = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise RunDirError(
                    f"{self.path}: cannot create the run directory ({exc.strerror})"
                ) from None
        try:
            fd = try_lock(self.path / RUN_LOCK)
        except OSError as exc:
            self._leave_nothing()
            raise RunDirError(
                f"{self.path}: cannot lock the run directory ({exc.strerror}); fix permissions"
            ) from None
        if fd is None:
            raise RunDirError(
                f"{self.path}: is running now (another evomerge process{self._holder()} writes "
                f"it; see 'evomerge status {self.path}'); wait for it to end or stop it first"
            )
        self._lock_fd = fd
        try:
            holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode() + b"\n", 0)
        except OSError:
            pass  # who holds it is for messages only
        try:
            yield self
        finally:
            self._lock_fd = None
            self._leave_nothing()
            os.close(fd)

    def _holder(self) -> str:
        try:
            info = json.loads((self.path / RUN_LOCK).read_text(encoding="utf-8"))
            return f" (pid {int(info['pid'])} on {str(info['host'])[:64]})"
        except Exception:  # noqa: BLE001 - a damaged lock file still locks
            return ""

    def _leave_nothing(self) -> None:
        """No run was made here (no config.yaml): remove the lock file, and the folder if
        this process made it."""
        if (self.path / CONFIG).exists():
            return
        try:
            (self.path / RUN_LOCK).unlink(missing_ok=True)
            if self._made:
                self.path.rmdir()
        except OSError:
            pass

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def create(self, config: dict) -> None:
        """Make the directory for a new run; refuses one that already holds a run.

        A folder holding only the temporary file of a config write that was killed counts
        as empty (the run never started).
        """
        leftovers = [p for p in self.path.glob(f".{CONFIG}.tmp-*") if p.is_file()]
        leftovers += [p for p in [self.path / RUN_LOCK] if p.is_file()]
        if (self.path / CONFIG).exists() or (
            self.path.exists() and any(p not in leftovers for p in self.path.iterdir())
        ):
            raise RunDirError(
                f"{self.path}: already exists and is not empty; resume it with "
                f"'evomerge resume {self.path}' or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for p in leftovers:
                if p.name != RUN_LOCK:
                    p.unlink(missing_ok=True)
            write_atomic(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        except OSError as exc:
            raise RunDirError(
                f"{self.path}: cannot create the run directory ({exc.strerror})"
            ) from None

    def write_config(self, config: dict) -> None:
        """Replace config.yaml (e.g. a resume on a new cluster records its address)."""
        write_atomic(self.path / CONFIG, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        if not (self.path / CONFIG).is_file():
            what = "does not exist" if not self.path.exists() else "is not an evomerge run"
            raise RunDirError(
                f"{self.path}: {what} (no {CONFIG}); start a run with 'evomerge run CONFIG'"
            )
        try:
            return safe_yaml.load_file(self.path / CONFIG)
        except OSError as exc:
            raise RunDirError(f"{self.path / CONFIG}: cannot read ({exc.strerror})") from None
        except safe_yaml.YamlError as exc:
            raise RunDirError(
                f"{self.path / CONFIG}: damaged ({exc}); restore it from a copy"
            ) from None

    def append_history(self, record: dict) -> None:
        try:
            append_durably(self.path / HISTORY, strict_json(record) + "\n")
        except OSError as exc:
            raise self._write_error(HISTORY, exc) from None

    def _write_error(self, name: str, exc: OSError) -> RunDirError:
        err = RunDirError(
            f"{self.path / name}: cannot write ({exc.strerror or exc}); free disk space or fix "
            "permissions",
            exit_code=1,
        )
        err.why = f"{name}: {exc.strerror or exc}"
        return err

    def history(self) -> list[dict]:
        """Records written so far; a line cut short by a crash, or damaged, is ignored (the
        damaged ones are counted in ``damaged_history_lines``)."""
        out = []
        self.damaged_history_lines = 0
        path = self.path / HISTORY
        if path.is_file():
            lines = path.read_bytes().splitlines()
            for i, line in enumerate(lines):
                try:
                    rec = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError):
                    rec = None
                if isinstance(rec, dict):
                    out.append(rec)
                elif i < len(lines) - 1 or line.strip():
                    self.damaged_history_lines += i < len(lines) - 1
        return out

    def read_summary(self) -> dict | None:
        """``summary.json`` (None when the run has not finished); RunDirError when damaged."""
        path = self.path / SUMMARY
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise RunDirError(f"{path}: damaged ({str(exc)[:80]})") from None
        if not isinstance(summary, dict):
            raise RunDirError(f"{path}: damaged (not a JSON object)")
        return summary

    def truncate_history(self, evaluations: int) -> None:
        """Drop records after ``evaluations`` (they are re-made when a run resumes)."""
        kept = [r for r in self.history() if r.get("evaluations", 0) <= evaluations]
        try:
            write_atomic(self.path / HISTORY, "".join(strict_json(r) + "\n" for r in kept))
        except OSError as exc:
            raise self._write_error(HISTORY, exc) from None

    def write_summary(self, summary: dict) -> None:
        try:
            write_atomic(self.path / SUMMARY, strict_json(summary, indent=2) + "\n")
        except OSError as exc:
            raise self._write_error(SUMMARY, exc) from None

    def clear_summary(self) -> None:
        (self.path / SUMMARY).unlink(missing_ok=True)
