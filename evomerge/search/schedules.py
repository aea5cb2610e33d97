"""Evaluation schedules: how the examples of a batch of candidates are scored.

The run loop hands a schedule the state the children were asked from, the children and a
``score(params, example_ids)`` function (the evaluator, local or Ray); the schedule returns
the ``(B, E)`` scores the strategy is told and the *example evaluations* it spent (one
training example scored once for one candidate: the true cost of a search).

* ``full`` (the default): every candidate on every example, in one call.
* ``race`` (:mod:`~evomerge.search.racing`): examples in stages; a candidate that can no
  longer matter to the strategy stops early, the result unchanged (``mode: exact``) or, with
  ``mode: approximate`` (:mod:`~evomerge.search.approximate_racing`), unchanged with
  probability at least ``1 - delta`` per child.
* ``subset`` (:mod:`~evomerge.search.subset`): every candidate on one fixed subset of the
  examples, or with ``fresh: true`` (:mod:`~evomerge.search.fresh_subset`) on a new subset
  every ``refresh_every`` evaluations, the strategy's members re-scored on each.

Schedules are a registry (``evaluation.schedule`` in configs), lazy ``"module:attr"`` entries
naming a builder ``build(section, strategy, info, seed) -> Schedule``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evomerge.core.registry import Registry

SCHEDULES: Registry = Registry("evaluation schedule", "evaluation.schedule")
SCHEDULES.register("full", "evomerge.search.schedules:build_full")
SCHEDULES.register("race", "evomerge.search.racing:build_race")
SCHEDULES.register("subset", "evomerge.search.subset:build_subset")

#: How a race bounds a child's unscored examples (``evaluation.mode``): a class built as
#: ``(section, num_examples, score_range, seed, checks)`` with ``order``, ``unscored`` and
#: ``told`` (see :class:`~evomerge.search.racing.ExactBounds`).
RACE_MODES: Registry = Registry("racing mode", "evaluation.mode")
RACE_MODES.register("exact", "evomerge.search.racing:ExactBounds")
RACE_MODES.register("approximate", "evomerge.search.approximate_racing:ApproximateBounds")

BUILT_IN_SCHEDULES = frozenset({"full", "race", "subset"})
#: Keys of the ``evaluation`` section that only one built-in schedule reads (``mode`` and
#: ``delta`` are checked with their own messages).
SCHEDULE_KEYS = {
    "race": {"first_stage", "growth", "max_stage", "score_range", "order"},
    "subset": {"size", "stratify", "fresh", "refresh_every"},
}

#: ``score(params, example_ids)`` -> ``(B, len(example_ids))`` (all examples for None)
ScoreFn = Callable[[Any, Any], torch.Tensor]


class EvaluationSection(BaseModel):
    """``evaluation:`` section: the schedule and its settings (absent: full scoring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schedule: str = Field(
        "full",
        description="full: every candidate on every training example; race: examples in "
        "stages, a candidate stopped as soon as it cannot matter (see `mode`); "
        "subset: every candidate on one fixed subset of `size` examples (an estimate, with "
        "its standard error recorded).",
    )
    mode: str = Field(
        "exact",
        description="race: exact (the archive and final member are those of full scoring); "
        "approximate (the unscored examples bounded by a confidence interval from the scores "
        "seen: fewer examples scored, a child that would have mattered lost with "
        "probability at most `delta` where the strategy ranks by mean score).",
    )
    delta: float | None = Field(
        None,
        description="race, mode approximate: the failure probability of each child's "
        "confidence intervals over all its stages, in (0, 1); smaller is safer and scores "
        "more examples. None: 0.05.",
    )
    first_stage: int = Field(
        64, ge=1, description="race: examples in the first stage (a seeded shuffle of them)."
    )
    growth: float = Field(
        2.0, ge=1.0, description="race: each stage this many times the examples of the last."
    )
    max_stage: int | None = Field(
        None,
        ge=1,
        description="race: most examples in one stage (none: a sixteenth of them), so late "
        "decisions, where most are made, come often.",
    )
    size: int | None = Field(
        None, ge=1, description="subset: training examples in the subset (required)."
    )
    stratify: Literal["none", "task"] = Field(
        "none",
        description="subset: task draws from each stratum of the plug-in's example groups "
        "in proportion (digits: each class); none: a plain draw.",
    )
    fresh: bool = Field(
        False,
        description="subset: false, one subset drawn from the run's seed for the whole run; "
        "true, a new subset every `refresh_every` evaluations, the strategy's members "
        "(archive, best so far) re-scored on it.",
    )
    refresh_every: int | None = Field(
        None,
        ge=1,
        description="subset, fresh: true: candidate evaluations each subset serves (required "
        "there); each new subset costs the members' re-scoring, members x size example "
        "evaluations.",
    )
    order: Literal["stage", "child"] | None = Field(
        None,
        description="race: stage, every running child on one stage's examples in one call "
        "(spread over a pool's workers); child, each child through all its stages before the "
        "next (one worker at a time, but a candidate written once into a model, not once a "
        "stage); none: child in spaces whose workers write one candidate into a model "
        "(lineage, recipe), else stage.",
    )
    score_range: tuple[float, float] | None = Field(
        None,
        description="race: [low, high] every per-example score lies in; none: the fitness "
        "plug-in's score_range (default [0, 1]).",
    )

    @field_validator("schedule")
    @classmethod
    def known_schedule(cls, value: str) -> str:
        if value not in SCHEDULES:
            raise ValueError(SCHEDULES.unknown(value))
        return value

    @field_validator("mode")
    @classmethod
    def known_mode(cls, value: str) -> str:
        if value not in RACE_MODES:
            raise ValueError(RACE_MODES.unknown(value))
        return value

    @field_validator("delta")
    @classmethod
    def probability(cls, value):
        if value is not None and not 0.0 < value < 1.0:
            raise ValueError("a failure probability strictly between 0 and 1, e.g. 0.05")
        return value

    @model_validator(mode="after")
    def keys_of_the_schedule(self):
        """A key only another built-in schedule reads is refused: it would be silently
        ignored (a schedule a user registers may read any key)."""
        for schedule, keys in SCHEDULE_KEYS.items():
            # not fields_set: a run's resolved config.yaml writes every default out
            given = sorted(
                k for k in keys if getattr(self, k) != type(self).model_fields[k].default
            )
            if given and self.schedule != schedule and self.schedule in BUILT_IN_SCHEDULES:
                raise ValueError(
                    f"{', '.join(given)}: only with schedule: {schedule} (schedule "
                    f"{self.schedule} does not read it); remove it or set schedule: {schedule}"
                )
        return self

    @model_validator(mode="after")
    def delta_with_approximate(self):
        if self.mode != "exact" and self.schedule != "race":
            raise ValueError(
                f"mode: {self.mode} applies to schedule: race only; remove it or set schedule: race"
            )
        if self.delta is not None and self.mode != "approximate":
            raise ValueError(
                "delta: only with mode: approximate (exact racing takes no risk); remove "
                "delta or set mode: approximate"
            )
        return self

    @field_validator("score_range")
    @classmethod
    def ordered_range(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"[{value[0]}, {value[1]}] needs low < high")
        return value


class Schedule:
    """The contract: ``evaluate(state, children, score) -> (scores, example_evaluations)``."""

    name: str
    #: the example ids every candidate (seeds included) is scored on; None: all of them
    columns = None

    def evaluate(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def standard_error(self, row: torch.Tensor) -> float | None:
        """The standard error of a candidate's mean score when ``row`` (its scores on
        :attr:`columns`) estimates it from a sample; None: scored on every example."""
        return None

    def refresh(self, state, strategy, score: ScoreFn) -> tuple[Any, int]:
        """Before children are asked from ``state``: the state to ask from and the example
        evaluations that cost (a schedule whose examples change re-scores the strategy's
        members here). The default keeps the state."""
        return state, 0

    def state_meta(self) -> dict:
        """Where the schedule stands (JSON-able): written in each checkpoint, which
        :meth:`resume` reads back, and in each history record."""
        return {}

    def resume(self, meta: dict) -> None:
        """Continue from a checkpoint's meta (what :meth:`state_meta` wrote)."""


class FullSchedule(Schedule):
    """Every candidate on every example, in one call to the evaluator."""

    name = "full"

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def evaluate(self, state, children, score: ScoreFn) -> tuple[torch.Tensor, int]:
        scores = score(children.params, None)
        return scores, int(scores.shape[0]) * self.num_examples


def build_full(section, strategy, info: dict, seed: int) -> FullSchedule:
    return FullSchedule(int(info["num_examples"]))


def fixed_columns(section: EvaluationSection | None, info: dict, seed: int):
    """The example ids a schedule scores every candidate on, decided by the config alone
    (before the strategy exists, whose niches are then built on these columns), or None where
    the schedule scores every example. A builder declares them as its ``fixed_columns``."""
    section = section or EvaluationSection()
    plan = getattr(SCHEDULES.get(section.schedule), "fixed_columns", None)
    return None if plan is None else plan(section, info, seed)


def make_schedule(section: EvaluationSection | None, strategy, info: dict, seed: int):
    """The schedule a config's ``evaluation`` section names (None: full scoring)."""
    section = section or EvaluationSection()
    return SCHEDULES.get(section.schedule)(section, strategy, info, seed)
