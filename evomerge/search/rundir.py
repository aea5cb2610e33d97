"""The run directory: resolved config, checkpoints, history and summary of one search.

``config.yaml`` (the resolved config), ``checkpoints/``, ``history.jsonl`` (one JSON record
per line) and ``summary.json`` (written when the run ends). Everything is text or safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import RunDirError
from ..files import write_atomic

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


class RunDir:
    """Paths and small-file I/O of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def create(self, config: dict) -> None:
        """Make the directory for a new run; refuses one that already holds a run.

        A folder holding only the temporary file of a config write that was killed counts
        as empty (the run never started).
        """
        leftovers = [p for p in self.path.glob(f".{CONFIG}.tmp-*") if p.is_file()]
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
            return yaml.safe_load((self.path / CONFIG).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RunDirError(f"{self.path / CONFIG}: not valid YAML ({exc})") from None

    def append_history(self, record: dict) -> None:
        try:
            with open(self.path / HISTORY, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
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
        """Records written so far; a line cut short by a crash is ignored."""
        out = []
        path = self.path / HISTORY
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def truncate_history(self, evaluations: int) -> None:
        """Drop records after ``evaluations`` (they are re-made when a run resumes)."""
        kept = [r for r in self.history() if r.get("evaluations", 0) <= evaluations]
        try:
            write_atomic(self.path / HISTORY, "".join(json.dumps(r) + "\n" for r in kept))
        except OSError as exc:
            raise self._write_error(HISTORY, exc) from None

    def write_summary(self, summary: dict) -> None:
        try:
            write_atomic(self.path / SUMMARY, json.dumps(summary, indent=2) + "\n")
        except OSError as exc:
            raise self._write_error(SUMMARY, exc) from None

    def clear_summary(self) -> None:
        (self.path / SUMMARY).unlink(missing_ok=True)
