"""Checkpoints: a strategy's state as safetensors + JSON, with a sha256 manifest. No pickle.

Layout: ``checkpoints/<evaluations, 10 digits>/{state.safetensors, state.json, manifest.json}``.
A checkpoint is assembled in a hidden temporary folder and renamed into place, so a kill at any
moment leaves either the complete checkpoint or none; older ones are pruned only afterwards.
Loading verifies the manifest and reads tensors with safetensors, which never executes code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from evomerge.core.errors import RunDirError
from evomerge.core.files import pid_alive, publish, sha256_file

FORMAT = 1
STATE_FILES = ("state.safetensors", "state.json")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict


def _name(evaluations: int) -> str:
    return f"{evaluations:010d}"


def save(root: Path, tensors: dict[str, torch.Tensor], meta: dict, keep_last: int) -> Path:
    """Write a checkpoint named by ``meta['evaluations']``; keep the newest ``keep_last``.

    An intact checkpoint of the same name (the end of a run saved twice, or a resume at a
    checkpoint) is kept as it is: the state is the same by determinism, and never deleting a
    good checkpoint before its replacement is in place is what makes a kill harmless.
    """
    final = root / _name(int(meta["evaluations"]))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{root}: cannot create ({exc.strerror})", exit_code=1) from None
    if final.is_dir() and verify(final) is None and _holds(final, tensors, meta):
        _prune(root, final, keep_last)
        return final
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    # a damaged one of that name is moved aside, and removed once replaced
    damaged = root / f".tmp-damaged-{final.name}-{os.getpid()}"
    try:
        _write(tmp, tensors, meta)
        publish(tmp, final, aside=damaged)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        why = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        why = why.rpartition("I/O error: ")[2]  # safetensors' wording of an OS error
        err = RunDirError(
            f"{root}: cannot write checkpoint {final.name} ({why}); the previous checkpoint is "
            f"kept: free disk space or fix permissions, then 'evomerge resume {root.parent}'",
            exit_code=1,
        )
        err.why = why
        raise err from None
    _prune(root, final, keep_last)
    return final


def _holds(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> bool:
    """Whether the intact checkpoint at ``path`` holds this very state (its sums can match
    while its contents were refused on resume: then it is replaced, not kept)."""
    try:
        stored = load_file(path / "state.safetensors")
        stored_meta = json.loads((path / "state.json").read_text())
    except (SafetensorError, OSError, ValueError, RecursionError):
        return False
    if stored.keys() != tensors.keys() or not all(
        stored[k].dtype == tensors[k].dtype and torch.equal(stored[k], tensors[k].cpu())
        for k in tensors
    ):
        return False
    if not isinstance(stored_meta, dict):
        return False
    new = json.loads(json.dumps({"format": FORMAT, **meta}))
    return {k: v for k, v in stored_meta.items() if k != "wall_seconds"} == {
        k: v for k, v in new.items() if k != "wall_seconds"
    }


def _write(tmp: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The checkpoint's files in the temporary folder ``tmp`` (:func:`publish` flushes them)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    manifest = {name: sha256_file(tmp / name) for name in STATE_FILES}
    (tmp / "manifest.json").write_text(json.dumps({"sha256": manifest}, indent=1))


def _prune(root: Path, final: Path, keep_last: int) -> None:
    """Keep ``final`` and the ``keep_last - 1`` before it; drop older ones and newer ones.

    Newer ones can only be left from before a resume, which skipped them as damaged (the
    newest intact checkpoint is always the one resumed from): the run is re-making them.
    """
    done = list_checkpoints(root)
    older = [p for p in done if p.name <= final.name]
    for old in older[:-keep_last] + [p for p in done if p.name > final.name]:
        shutil.rmtree(old, ignore_errors=True)
    _remove_orphans(root)


def _remove_orphans(root: Path) -> None:
    """Temporary folders left by a writer that was killed mid-write."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def verify(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is unusable, or None if its manifest matches."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "manifest.json is missing or unreadable"
    if not isinstance(manifest, dict):
        return "manifest.json is not a mapping of file names to sha256 sums"
    for name in STATE_FILES:
        if not (path / name).is_file():
            return f"{name} is missing"
        if sha256_file(path / name) != manifest.get(name):
            return f"{name} does not match its sha256 in manifest.json"
    return None


def load(path: Path) -> Checkpoint:
    problem = verify(path)
    if problem:
        raise RunDirError(f"{path}: {problem}")
    try:
        tensors = load_file(path / "state.safetensors")
        meta = json.loads((path / "state.json").read_text())
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise RunDirError(f"{path}: unreadable checkpoint ({exc})") from None
    problem = _meta_problem(meta)
    if problem:
        raise RunDirError(f"{path}: state.json is damaged ({problem})")
    if meta.get("format") != FORMAT:
        raise RunDirError(
            f"{path}: checkpoint format {meta.get('format')} is not {FORMAT}; "
            "resume it with the evomerge version that wrote it"
        )
    return Checkpoint(path, tensors, meta)


def _meta_problem(meta) -> str | None:
    """What is wrong with the shape of ``state.json`` (valid JSON can still be the wrong kind)."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    for key, kinds in (("evaluations", int), ("wall_seconds", (int, float))):
        value = meta.get(key, 0.0 if key == "wall_seconds" else None)
        if not isinstance(value, kinds) or isinstance(value, bool) or not 0 <= value < INT64:
            return f"'{key}' is {value!r}, not a non-negative number"
    for key in ("next_id", "seed"):
        value = meta.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < INT64:
            return f"'{key}' is {value!r}, not a count that fits 64 bits"
    return _out_of_range(meta, "")


#: every integer a checkpoint stores is a 64-bit one (tensors and the codec's ids)
INT64 = 2**63


def _out_of_range(value, where: str) -> str | None:
    """The first number in ``value`` that no checkpoint writes: an integer beyond 64 bits, or
    a non-finite float in the run's own counters (``NaN``/``Infinity`` parsed from JSON)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return f"'{where}' is {value}, beyond 64 bits"
    if isinstance(value, float) and not math.isfinite(value) and where == "wall_seconds":
        return f"'{where}' is {value}, not a finite number"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = _out_of_range(v, f"{where}.{k}" if where else str(k))
            if problem:
                return problem
    if isinstance(value, list):
        for i, v in enumerate(value):
            problem = _out_of_range(v, f"{where}[{i}]")
            if problem:
                return problem
    return None


#: What a checkpoint whose files verify can still fail with when its state is read back.
STATE_ERRORS = (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError)


def load_latest(root: Path, warn=lambda msg: None, parse=None) -> Checkpoint:
    """The newest checkpoint that verifies; damaged newer ones are reported through ``warn``.

    ``parse(checkpoint)``, when given, must also succeed (e.g. the strategy reading its state
    back): a checkpoint whose sums match but whose contents are of the wrong shape or types is
    damaged too, and the previous one is used, as for a bad sha256. Its result is returned.
    """
    candidates = list_checkpoints(root)
    for path in reversed(candidates):
        problem = verify(path)
        if problem is None:
            try:
                ckpt = load(path)
                return ckpt if parse is None else parse(ckpt)
            except RunDirError as exc:
                if "checkpoint format" in str(exc):  # another version's: refused, not skipped
                    raise
                problem = str(exc).partition(": ")[2]
            except STATE_ERRORS as exc:
                problem = f"its state does not fit the run ({type(exc).__name__}: {exc})"
        warn(f"skipping damaged checkpoint {path}: {problem}")
    raise RunDirError(f"{root}: no usable checkpoint; the run cannot be resumed, start it again")
