"""Experiment tracking: every history record also goes to TensorBoard and/or MLflow.

Off by default; one config line turns a tracker on::

    tracking: {tensorboard: true}   # RUN_DIR/tensorboard; pip install 'evomerge[tensorboard]'
    tracking: {mlflow: true}        # MLflow's default store; pip install 'evomerge[mlflow]'

Each numeric field of a record becomes a scalar named by its path (``best_train_score``,
``metrics/test_accuracy``, ``fitness/mean``, ``diversity/occupancy``, ...) at step
``evaluations``. What is tracked is exactly what ``history.jsonl`` holds, so the two never
disagree. A resumed run drops TensorBoard's events past its checkpoint (they are re-made, as
the history records are) and opens a new MLflow run tagged with the same run directory.
Tracking never changes the search: it is not part of a checkpoint's config identity.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from evomerge.core.errors import ConfigError


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) record as ``a/b`` -> float; ids and flags are skipped."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if name in ("evaluations", "member"):
                continue
            out[name] = float(value)
    return out


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tracking.tensorboard: the tensorboard package is not installed; "
                "pip install 'evomerge[tensorboard]' (or set tracking.tensorboard: false)"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = log_dir
        self.writer = None

    def log(self, record: dict) -> None:
        step = int(record.get("evaluations", 0))
        if self.writer is None:  # purge_step: a resumed run overwrites what it re-makes
            self.writer = self._writer_class(str(self.log_dir), purge_step=step)
        for name, value in flatten(record).items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker:
    def __init__(self, run_path: Path, uri: str | None, experiment: str, config: dict):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "tracking.mlflow: the mlflow package is not installed; "
                "pip install 'evomerge[mlflow]' (or set tracking.mlflow: false)"
            ) from None
        self.client = MlflowClient(tracking_uri=uri)
        self.run_path = run_path
        self.experiment = experiment
        self.config = config
        self.run_id = None

    def _start(self) -> None:
        found = self.client.get_experiment_by_name(self.experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(
            exp_id,
            run_name=self.run_path.name,
            tags={"evomerge.run_dir": str(self.run_path.resolve())},
        )
        self.run_id = run.info.run_id
        params = {k: str(v)[:250] for k, v in _flat_params(self.config).items()}
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log(self, record: dict) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            self._start()
        step, now = int(record.get("evaluations", 0)), int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in flatten(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None


def _flat_params(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Trackers:
    """The trackers a run's config turns on; ``log`` each history record, ``close`` at the end."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    @classmethod
    def open(cls, cfg, run_path: Path) -> Trackers:
        section = getattr(cfg, "tracking", None)
        trackers: list = []
        if section is None:
            return cls(trackers)
        if section.tensorboard:
            log_dir = (
                Path(section.tensorboard)
                if isinstance(section.tensorboard, str)
                else run_path / "tensorboard"
            )
            trackers.append(TensorBoardTracker(log_dir))
        if section.mlflow:
            experiment = section.mlflow_experiment or (cfg.name or "evomerge")
            trackers.append(
                MLflowTracker(run_path, section.mlflow_tracking_uri, experiment, cfg.to_dict())
            )
        return cls(trackers)

    def log(self, record: dict) -> None:
        """A tracker that fails (a server gone, a full disk) is dropped with one warning:
        the search and its own history go on."""
        for tracker in list(self.trackers):
            try:
                tracker.log(record)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop a search
                self.trackers.remove(tracker)
                name = type(tracker).__name__.replace("Tracker", "")
                print(
                    f"evomerge: warning: {name} tracking stopped: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )

    def close(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.close()
            except Exception:  # noqa: BLE001 - the run's own results are already written
                pass
        self.trackers = []
