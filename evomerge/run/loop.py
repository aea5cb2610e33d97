"""The run loop: ask, evaluate, tell; record history; checkpoint; write the summary.

Start-up work that can fail on bad input (loading the plug-in, making and scoring the seeds)
happens before the run directory is created, so a failed start leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch

from evomerge.core.contracts import WorkerPool
from evomerge.core.errors import ConfigError, EvomergeError, PluginError, RunDirError
from evomerge.run import checkpoint
from evomerge.run.config import RunConfig
from evomerge.run.rundir import RunDir
from evomerge.run.tracking import Trackers
from evomerge.runtime import make_evaluator
from evomerge.search.base import needs_nonnegative_scores, use_space
from evomerge.search.registry import STRATEGIES, make_strategy
from evomerge.search.schedules import fixed_columns, make_schedule
from evomerge.search.subset import restrict_groups
from evomerge.spaces import SPACES


class NullProgress:
    def start(self, total: int, done: int, label: str, unit: str = "evaluations") -> None: ...
    def update(self, done: int, best, examples: int | None = None) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def config_digest(cfg: RunConfig) -> str:
    """What a checkpoint must agree with: everything that decides the result.

    Not the budget, and not where candidates are scored: local and Ray evaluators, any number
    of workers on any cluster, give the same scores. Only the device kind (CPU or CUDA) is
    kept, as GPU arithmetic may round differently.
    """
    data = cfg.to_dict()
    data.pop("budget", None)
    data.pop("tracking", None)  # where records are also sent does not change the result
    data.pop("allow_test_split", None)  # nor a consent that only let the run start
    ev = data.pop("evaluator", None) or {}
    if ev.get("kind") == "ray":
        cuda = float(ev.get("num_gpus") or 0) > 0
    else:
        cuda = str(ev.get("device", "cpu")).startswith("cuda")
    data["device"] = "cuda" if cuda else "cpu"
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass
class Search:
    """One search in progress: its config, strategy, evaluator, state and run directory."""

    cfg: RunConfig
    run: RunDir
    strategy: object
    evaluator: object
    state: object
    wall_offset: float
    progress: object
    space: object = None  # the run's Space (evomerge.core.contracts.Space)
    trackers: object = None  # evomerge.run.tracking.Trackers, opened at the first record
    schedule: object = None  # evomerge.search.schedules.Schedule: how children are scored
    example_evaluations: int = 0  # training examples scored for children so far

    # -- scoring -----------------------------------------------------------------------------
    def score(self, params, example_ids=None) -> torch.Tensor:
        """Scores of candidates on every example, or on ``example_ids`` (a schedule's stage)."""
        if example_ids is None:
            scores = self.evaluator.score(params)
        else:
            scores = self.evaluator.score(params, example_ids=example_ids)
        if needs_nonnegative_scores(self.strategy) and bool((scores < 0).any()):
            row, col = np.argwhere(scores.numpy() < 0)[0]
            if example_ids is not None:
                col = int(example_ids[col])
            raise PluginError(
                f"fitness: score {scores[row, col].item()} for candidate {row}, example {col} is "
                "negative; resource competition (alpha > 0) needs scores >= 0"
            )
        return scores

    # -- records -----------------------------------------------------------------------------
    def wall(self) -> float:
        return self.wall_offset + (time.perf_counter() - self._t0)

    def best_metrics(self) -> tuple[int, dict]:
        member, params, scores = self.strategy.best(self.state)
        name = f"train_{self.evaluator.info['score_name']}"
        metrics = {name: scores.mean().item(), **self.evaluator.metrics(params)}
        return member, metrics

    def best_standard_error(self) -> dict:
        """``best_train_score_se``: the standard error of the best member's train score where
        the schedule estimates it from a subset (absent: scored on every example)."""
        se = self.schedule.standard_error(self.strategy.best(self.state)[2])
        return {} if se is None else {"best_train_score_se": se}

    @staticmethod
    def with_nonfinite(out: dict) -> dict:
        """JSON has no NaN: a metric that is NaN or Inf is written as null, and named with its
        value ("nan", "inf", "-inf") in ``nonfinite_metrics``, so the files stay valid JSON and
        the value is not lost."""
        bad = {k: str(v) for k, v in out["metrics"].items() if not math.isfinite(v)}
        if bad:
            out["metrics"] = {k: (None if k in bad else v) for k, v in out["metrics"].items()}
            out["nonfinite_metrics"] = bad
        return out

    def record(self) -> dict:
        member, metrics = self.best_metrics()
        stats = self.strategy.stats(self.state)
        rec = {
            "evaluations": self.state.evaluations,
            "example_evaluations": self.example_evaluations,
            "wall_seconds": round(self.wall(), 3),
            "best_train_score": stats["train_score"]["max"],
            **self.best_standard_error(),
            **self.schedule.state_meta(),
            "member": member,
            "metrics": metrics,
            **stats,
        }
        rec = self.with_nonfinite(rec)
        self.run.append_history(rec)
        if self.trackers is None:
            self.trackers = Trackers.open(self.cfg, self.run.path)
        self.trackers.log(rec)
        return rec

    def save(self) -> None:
        tensors, meta = self.strategy.state_to_tensors(self.state)
        meta = {
            **meta,
            "wall_seconds": self.wall(),
            "example_evaluations": self.example_evaluations,
            **self.schedule.state_meta(),
            "seed": self.cfg.seed,
            "strategy": self.cfg.strategy.name,
            "config_sha256": config_digest(self.cfg),
        }
        checkpoint.save(self.run.checkpoints, tensors, meta, self.cfg.keep_last)

    # -- the loop ----------------------------------------------------------------------------
    def more(self) -> bool:
        """Whether neither budget is spent (candidate or example evaluations)."""
        budget = self.cfg.budget
        if budget.evaluations is not None and self.state.evaluations >= budget.evaluations:
            return False
        limit = budget.example_evaluations
        return limit is None or self.example_evaluations < limit

    def progress_point(self) -> tuple[int, int, str]:
        """(done, total, unit) of the budget the progress line follows: candidate
        evaluations, or example evaluations when that is the only budget."""
        budget = self.cfg.budget
        if budget.evaluations is not None:
            return self.state.evaluations, budget.evaluations, "evaluations"
        return self.example_evaluations, budget.example_evaluations, "example evaluations"

    def loop(self) -> dict:
        cfg = self.cfg
        done, total, unit = self.progress_point()
        self.progress.start(total, done, self.evaluator.describe(), unit=unit)
        try:
            while self.more():
                n = cfg.batch
                if cfg.budget.evaluations is not None:
                    n = min(n, cfg.budget.evaluations - self.state.evaluations)
                self.state, spent = self.schedule.refresh(self.state, self.strategy, self.score)
                self.example_evaluations += spent
                children = self.strategy.ask(self.state, n)
                n = len(children.ids)  # generational strategies ask whole generations
                scores, spent = self.schedule.evaluate(self.state, children, self.score)
                self.state = self.strategy.tell(self.state, children, scores)
                self.example_evaluations += spent
                done = self.state.evaluations
                if done // cfg.history_every > (done - n) // cfg.history_every or not self.more():
                    self.record()
                if done // cfg.checkpoint_every > (done - n) // cfg.checkpoint_every:
                    self.save()
                self.progress.update(
                    self.progress_point()[0],
                    lambda: self.strategy.best(self.state)[2].mean().item(),
                    examples=self.example_evaluations,
                )
        except EvomergeError as exc:
            if "evomerge resume" in str(exc):
                raise
            raise type(exc)(
                f"{exc} (stopped at {self.state.evaluations} evaluations, the last checkpoint "
                f"kept: fix the cause, then 'evomerge resume {self.run.path}')",
                exit_code=exc.exit_code,
            ) from None
        except KeyboardInterrupt:
            self.save()
            self.progress.close()
            raise EvomergeError(
                f"interrupted at {self.state.evaluations} evaluations; checkpoint saved, "
                f"continue with 'evomerge resume {self.run.path}'",
                exit_code=130,
            ) from None
        self.save()
        self.progress.close()
        return self.summary()

    def summary(self) -> dict:
        member, metrics = self.best_metrics()
        wall = self.wall()
        summary = {
            "evaluations": self.state.evaluations,
            "example_evaluations": self.example_evaluations,
            "member": member,
            "metrics": metrics,
            **self.best_standard_error(),
            "wall_seconds": round(wall, 3),
            "evaluations_per_second": round(self.state.evaluations / max(wall, 1e-9), 1),
            "seed": self.cfg.seed,
            "strategy": self.cfg.strategy.name,
            "evaluator": self.evaluator.kind,
            "run_dir": str(self.run.path),
        }
        if isinstance(self.evaluator, WorkerPool):
            summary["workers"] = self.evaluator.workers_report()
            used = self.evaluator.utilisation()
            if used is not None:  # since this process started (a resume restarts the count)
                summary["worker_utilisation"] = round(used, 4)
        summary.update(self.space.summary(self.strategy.best(self.state)[1]))
        summary = self.with_nonfinite(summary)
        self.run.write_summary(summary)
        return summary

    def start_clock(self) -> None:
        self._t0 = time.perf_counter()


def space_spec(cfg: RunConfig) -> dict:
    """What the driver and every worker need to build the run's space.

    ``name``: the space the config names (``recipe`` with a ``recipe:`` section, else the
    top-level ``space:``, else the strategy's ``space`` when it is not the default); None
    leaves it to the plug-in's own (:attr:`evomerge.Fitness.space`), else ``dense``. The rest
    says how seeds are made.
    """
    name = None
    if cfg.recipe is not None:
        name = "recipe"
    elif cfg.space is not None:
        name = cfg.space
    elif getattr(cfg.strategy, "space", "dense") != "dense":
        name = cfg.strategy.space
    seeds = cfg.seeds
    spec = {
        "name": name,
        "kind": seeds.kind,
        "count": seeds.count,
        "seed": cfg.seed,
        "options": dict(getattr(seeds, "options", {}) or {}),
        "std": getattr(seeds, "std", None),
    }
    if cfg.recipe is not None:
        spec["recipe"] = cfg.recipe.model_dump(mode="json")
    # a space whose seeds every worker mixes alike has them made once, on Ray one copy a node
    spec["shared_seeds"] = bool(name and getattr(SPACES.get(name), "shares_seeds", False))
    return spec


def run_evaluator(cfg: RunConfig, run: RunDir):
    """The evaluator the config describes, its workers named after the run."""
    spec = space_spec(cfg)
    return make_evaluator(
        cfg.evaluator, cfg.fitness, spec, name=run.path.name, extensions=cfg.extensions or ()
    )


def open_space(cfg: RunConfig, evaluator, strategy):
    """The run's space on the driver (as the workers resolved it), given to the strategy."""
    cls = SPACES.get(evaluator.info["space"])
    kinds = getattr(cls, "seed_kinds", None)  # None: any kind the space's seeding reads
    if kinds is not None and cfg.seeds.kind not in kinds:
        raise ConfigError(
            f"seeds.kind: {cfg.seeds.kind}, but space {cls.name} starts from the fitness "
            f"plug-in's models; set seeds.kind: {' or '.join(kinds)}"
        )
    space = cls.on_driver(space_spec(cfg), evaluator)
    use_space(strategy, space)
    return space


def run_schedule(cfg: RunConfig, strategy, evaluator):
    """How the run scores its children (:mod:`evomerge.search.schedules`)."""
    return make_schedule(cfg.evaluation, strategy, evaluator.info, cfg.seed)


def prepared_strategy(cfg: RunConfig, evaluator):
    """The configured strategy, given the plug-in's example groups (niches may be built on
    them; ``{}`` when the plug-in names none) as columns of the scores it is told: a subset
    schedule's columns only."""
    groups = evaluator.info.get("groups") or {}
    if groups and STRATEGIES.get(cfg.strategy.name).takes_groups:
        columns = fixed_columns(cfg.evaluation, evaluator.info, cfg.seed)
        if columns is not None:
            groups = restrict_groups(groups, columns)
    return make_strategy(cfg.strategy, cfg.seed, groups=groups)


def start(cfg: RunConfig, run: RunDir, progress=None, fresh: bool = True) -> Search:
    """Prepare a new search; nothing is written until the seeds have been scored.

    ``fresh=False`` starts again in an existing run directory that was stopped before its
    first checkpoint was complete (its config is already there, its history is dropped).
    """
    progress = progress or NullProgress()
    t0 = time.perf_counter()
    evaluator = run_evaluator(cfg, run)
    try:
        strategy = prepared_strategy(cfg, evaluator)
        space = open_space(cfg, evaluator, strategy)
        params = space.seed_genomes(evaluator, progress)
        search = Search(cfg, run, strategy, evaluator, None, 0.0, progress, space)
        search.schedule = run_schedule(cfg, strategy, evaluator)
        search._t0 = t0
        search.state = strategy.init(params, search.score(params, search.schedule.columns))
        if fresh:
            run.create(cfg.to_dict())
        else:
            run.truncate_history(-1)
            run.clear_summary()
        try:
            search.record()  # before the checkpoint: a resume from it finds its record written
            search.save()
        except BaseException as exc:
            if not fresh:
                raise
            shutil.rmtree(run.path, ignore_errors=True)  # no first checkpoint: leave nothing
            why = getattr(exc, "why", None)
            if why is None:
                raise
            raise RunDirError(
                f"{run.path}: cannot write the run's first checkpoint ({why}); nothing was "
                "kept: free disk space or fix permissions, then start the run again",
                exit_code=1,
            ) from None
        return search
    except BaseException:
        evaluator.close()
        raise


def _once(warn):
    seen = set()

    def once(msg):
        if msg not in seen:
            seen.add(msg)
            warn(msg)

    return once


def _parser(strategy, cfg: RunConfig, run: RunDir, evaluator, schedule):
    def parse(ckpt):
        if ckpt.meta.get("config_sha256") != config_digest(cfg):
            raise EvomergeError(
                f"{run.path}: config.yaml differs from the config checkpoint {ckpt.path.name} "
                "was made with; restore it, or start a new run with the new config"
            )
        state = strategy.state_from_tensors(ckpt.tensors, ckpt.meta)
        columns = schedule.columns
        num = evaluator.info.get("num_examples") if columns is None else len(columns)
        problem = state_problem(state, num)
        if problem is not None:  # a ValueError: damaged, the previous checkpoint is used
            raise ValueError(problem)
        return ckpt, state

    return parse


def state_problem(state, num_examples: int | None) -> str | None:
    """What in a decoded state does not fit the run (rows and columns of its archive, ids and
    counters), or None. Valid tensors of the wrong shape would otherwise fail later, mid-run."""
    scores = getattr(state, "scores", None)
    ids = getattr(state, "ids", None)
    if isinstance(scores, torch.Tensor):
        if scores.dim() != 2:
            return f"scores has shape {list(scores.shape)}, not (members, examples)"
        if num_examples is not None and scores.shape[1] != num_examples:
            return f"scores has {scores.shape[1]} columns; the plug-in scores {num_examples}"
        if ids is not None and len(ids) != scores.shape[0]:
            return f"scores has {scores.shape[0]} rows for {len(ids)} archive ids"
    params = getattr(state, "params", None)
    if ids is not None and isinstance(params, tuple) and len(params) != len(ids):
        return f"{len(params)} archive members for {len(ids)} ids"
    if isinstance(params, tuple) and any(
        isinstance(p, torch.Tensor) and not bool(torch.isfinite(p).all()) for p in params
    ):
        return "an archive member's genes hold NaN or Inf"
    if ids is not None:
        members = [i for i in ids if i >= 0]
        if any(i < -1 for i in ids) or len(set(members)) != len(members):
            return "archive ids are not distinct member ids (or -1 for an empty slot)"
        next_id = getattr(state, "next_id", None)
        if next_id is not None and members and max(members) >= next_id:
            return f"archive id {max(members)} is not below next_id {next_id}"
    return None


def reopen(run: RunDir, cfg: RunConfig, progress=None) -> Search:
    """Continue a search from its newest intact checkpoint.

    A run stopped before its first checkpoint was complete (none, not even a damaged one)
    starts again from its seeds: the same draws, so the same result.
    """
    progress = progress or NullProgress()
    if not checkpoint.list_checkpoints(run.checkpoints):
        progress.message(f"{run.path}: stopped before its first checkpoint; starting it again")
        return start(cfg, run, progress, fresh=False)
    warn = _once(progress.message)
    ckpt = checkpoint.load_latest(run.checkpoints, warn=warn)
    meta = ckpt.meta
    if meta.get("config_sha256") != config_digest(cfg):
        raise EvomergeError(
            f"{run.path}: config.yaml differs from the config checkpoint {ckpt.path.name} was "
            "made with; restore it, or start a new run with the new config"
        )
    evaluator = run_evaluator(cfg, run)
    try:
        strategy = prepared_strategy(cfg, evaluator)
        space = open_space(cfg, evaluator, strategy)
        schedule = run_schedule(cfg, strategy, evaluator)
    except BaseException:
        evaluator.close()
        raise
    try:  # the newest checkpoint whose state also reads back (valid JSON of the wrong shape:
        ckpt, state = checkpoint.load_latest(  # damaged, the previous one is used)
            run.checkpoints, warn=warn, parse=_parser(strategy, cfg, run, evaluator, schedule)
        )
    except BaseException:
        evaluator.close()
        raise
    meta = ckpt.meta
    try:
        schedule.resume(meta)
    except ValueError as exc:
        evaluator.close()
        raise EvomergeError(
            f"{ckpt.path}: {exc}; the checkpoint is damaged: restore it or start a new run"
        ) from None
    run.truncate_history(state.evaluations)
    run.clear_summary()
    wall = float(meta["wall_seconds"])
    search = Search(cfg, run, strategy, evaluator, state, wall, progress, space, schedule=schedule)
    search.example_evaluations = resumed_example_evaluations(meta, state, evaluator.info)
    search.start_clock()
    return search


def resumed_example_evaluations(meta: dict, state, info: dict) -> int:
    """Example evaluations a checkpoint records; one written before they were counted was
    made by full scoring: every child on every example."""
    value = meta.get("example_evaluations")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return int(state.evaluations) * int(info.get("num_examples") or 0)
