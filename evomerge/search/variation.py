"""One variation search over an archive: M2N2, GA, MAP-Elites and Pareto are this search with
another :mod:`~evomerge.search.archives` archive (the config's ``archive()`` says which).

One child: parents A and B from the archive; split-point SLERP crossover (or SLERP, or a copy
of A); optional Gaussian or CMA-adaptive mutation; the archive then decides whether it stays.
``batch`` children asked from one state are told in order, so ``batch: 1`` is the reference's
sequential algorithm.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.core.keys import child_generator
from evomerge.search import adaptive_mutation as am
from evomerge.search.archives import Archive, ArchiveState, MemberOf, empty_state
from evomerge.search.base import Children, Proposal, Strategy
from evomerge.search.diversity import diversity
from evomerge.spaces.dense import DenseSpace
from evomerge.spaces.member_children import ChildRecipe, MemberRows


class VariationConfig(BaseModel):
    """How children are made: shared by ``m2n2``, ``ga``, ``map_elites`` and ``pareto``.

    Subclasses add their archive's keys and ``archive(groups) -> Archive``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    crossover: bool = Field(True, description="Make children by crossover (else copy parent A).")
    split_point: bool = Field(True, description="Crossover at a random split point (else SLERP).")
    mutation_std: float = Field(
        0.0, ge=0, description="Std of Gaussian noise added to every parameter (0: none)."
    )
    adaptive_mutation: am.AdaptiveMutationConfig | None = Field(
        None,
        description="CMA-adaptive mutation after crossover (covariance and step size learnt "
        "from children the archive keeps); null: none.",
    )
    space: Literal["dense", "lineage"] = Field(
        "dense",
        description="Genomes: dense parameter vectors, or lineages (exact recipes over "
        "pre-trained seeds, a few KB each whatever the model size; no Gaussian mutation).",
    )

    @model_validator(mode="after")
    def one_mutation(self):
        if self.mutation_std > 0 and self.adaptive_mutation is not None:
            raise ValueError("give mutation_std or adaptive_mutation, not both")
        return self

    def archive(self, groups: dict[str, list[int]] | None) -> Archive:
        """The archive this config describes (``groups``: the plug-in's example groups)."""
        raise NotImplementedError


class VariationSearch(Strategy):
    """Crossover and mutation over an archive, in a genome space (dense by default)."""

    state_type = ArchiveState

    def __init__(self, config: VariationConfig, seed: int, groups: dict | None = None):
        super().__init__(config, seed)
        self.archive = config.archive(groups)
        self.space = DenseSpace()
        self._gen = torch.Generator()

    @property
    def needs_nonnegative_scores(self) -> bool:
        return self.archive.needs_nonnegative_scores

    def use_space(self, space) -> None:
        """Make children in ``space`` (a :class:`~evomerge.core.contracts.Space`)."""
        self.space = space

    def codec_context(self) -> dict:
        return {"space": self.space}

    # -- state -------------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> ArchiveState:
        """An empty archive with the seed models offered to it in order."""
        k, e = seed_scores.shape
        state = empty_state(self.archive.size, e)
        for i in range(k):
            member = self.space.copy(seed_params[i])
            state, _ = self.archive.add(state, i, member, seed_scores[i].float())
        mutation = None
        if self.config.adaptive_mutation is not None:
            dim = self.space.mutation_shape(seed_params[0])[1]
            mutation = am.initial(self.config.adaptive_mutation, dim)
        return replace(state, next_id=k, mutation=mutation)

    # -- ask / tell --------------------------------------------------------------------------
    def _ask(self, state: ArchiveState, n: int) -> Proposal:
        """``n`` children; child i draws from key (seed, evaluations + i).

        Where the space's workers build dense children themselves (``defers_children``: a Ray
        pool), the children go out as recipes over the members
        (:class:`~evomerge.spaces.member_children.MemberRows`), built on the driver only when
        needed; the rows are the same either way.
        """
        cfg, space = self.config, self.space
        if state.mutation is None and getattr(space, "defers_children", False):
            return self._ask_recipes(state, n)
        rows, parents, steps = [], [], []
        for j in range(n):
            gen, a, b, w, split = self._draw(state, j)
            pa, pb = state.params[a], state.params[b]
            if not cfg.crossover:
                child = space.copy(pa)
            elif cfg.split_point:
                child = space.split_slerp(pa, pb, split, w)
            else:
                child = space.slerp(pa, pb, w)
            if cfg.mutation_std > 0:
                child = space.mutate(child, cfg.mutation_std, gen)
            if state.mutation is not None:
                count = space.mutation_shape(child)[0]
                y = am.sample(state.mutation, count, gen, cfg.adaptive_mutation.keep_sum)
                child = space.add_step(child, state.mutation.sigma * y)
                steps.append(y)
            rows.append(child)
            parents.append((state.ids[a], state.ids[b]))
        out = tuple(steps) if state.mutation is not None else None
        return Proposal(space.pack(rows), tuple(parents), out)

    def _draw(self, state: ArchiveState, j: int):
        """Child j's first draws from its key: ``(u_a, u_b, w)``, its parents' rows, then the
        split; returns ``(generator, a, b, w, split)`` with the generator where the mutation
        draws next (:meth:`ChildRecipe.generator` replays these two draws on a worker)."""
        gen = child_generator(self.seed, state.evaluations + j, self._gen)
        u_a, u_b, w = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
        a, b = self.archive.sample_parents(state, u_a, u_b)
        split = int(torch.randint(0, self.space.size(state.params[a]), (1,), generator=gen))
        return gen, a, b, w, split

    def _ask_recipes(self, state: ArchiveState, n: int) -> Proposal:
        """The children of :meth:`_ask` as recipes: the same draws, in the same order."""
        cfg, space = self.config, self.space
        kind = "copy" if not cfg.crossover else "split" if cfg.split_point else "slerp"
        recipes = []
        for j in range(n):
            _, a, b, w, split = self._draw(state, j)
            pa, pb = state.params[a], state.params[b]
            angle = space.parent_angle(pa, pb) if kind != "copy" else (0.0, 0.0)
            recipes.append(
                ChildRecipe(
                    state.ids[a],
                    state.ids[b],
                    kind,
                    split,
                    w,
                    angle,
                    cfg.mutation_std,
                    self.seed,
                    state.evaluations + j,
                )  # fmt: skip
            )
        members = {i: p for i, p in zip(state.ids, state.params, strict=True) if i >= 0}
        parents = tuple((r.a, r.b) for r in recipes)
        return Proposal(MemberRows(tuple(recipes), members), parents)

    def _tell(self, state: ArchiveState, children: Children, scores: torch.Tensor):
        """Offer the children to the archive in order (one shared scores buffer, made by the
        first child that changes the archive: until then the state keeps its scores tensor,
        whose derived quantities the archive remembers)."""
        base, buf = state.scores, None
        for i, cid in enumerate(children.ids):
            # made only for a child the archive keeps (a recipe's row is built then)
            member = MemberOf(self.space, children.params, i)
            state, status = self.archive.add(state, cid, member, scores[i].float(), buf)
            if buf is None and state.scores is not base:
                buf = state.scores
            if state.mutation is not None:
                steps = children.steps[i] if children.steps is not None else None
                mutation = am.update(
                    self.config.adaptive_mutation, state.mutation, steps, bool(status)
                )
                state = replace(state, mutation=mutation)
        return state

    def race(self, state: ArchiveState, children: Children, low, high, done) -> list[bool]:
        """Racing's question (:mod:`~evomerge.search.racing`): children are told in order, so
        child i is judged against the archive the children before it leave; a child the
        archive surely turns away (and stays unchanged by) stops. The first child that may
        still matter ends the walk: those after it wait for it."""
        verdict = [True] * len(children.ids)
        for i, cid in enumerate(children.ids):
            if done[i]:
                state, _ = self.archive.add(state, cid, None, high[i])
            elif self.archive.can_matter(state, low[i], high[i]):
                break
            else:
                verdict[i] = False
        return verdict

    # -- new examples ------------------------------------------------------------------------
    can_rescore = True

    def members_to_rescore(self, state: ArchiveState):
        """The archive's members, in row order, as one batch."""
        return self.space.pack([state.params[i] for i in state.filled])

    def rescored(self, state: ArchiveState, scores: torch.Tensor) -> ArchiveState:
        return self.archive.rescored(state, scores)

    # -- views -------------------------------------------------------------------------------
    def best(self, state: ArchiveState) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The member with the best raw mean score (first on ties): (id, params, scores)."""
        means = state.scores.mean(dim=1)
        means[torch.tensor([i < 0 for i in state.ids])] = -float("inf")
        i = int(torch.argmax(means))
        return state.ids[i], state.params[i], state.scores[i]

    def stats(self, state: ArchiveState) -> dict:
        """Archive statistics for history records."""
        filled = torch.tensor([i >= 0 for i in state.ids])
        fit = self.archive.fitness(state.scores)[filled]
        means = state.scores.mean(dim=1)[filled]
        return {
            "archive_size": int(filled.sum()),
            "fitness": {
                "min": fit.min().item(),
                "mean": fit.mean().item(),
                "max": fit.max().item(),
            },
            "train_score": {"mean": means.mean().item(), "max": means.max().item()},
            "diversity": diversity(state.scores[filled]),
            **mutation_stats(state.mutation),
            **self.archive.stats(state, filled),
        }

    def checkpoint_extras(self, state: ArchiveState) -> tuple[dict, dict]:
        tensors, meta = self.archive.report(state)
        return tensors, {"space": self.space.name, **meta}


def mutation_stats(m: am.MutationState | None) -> dict:
    if m is None:
        return {}
    spread = m.cov if m.diagonal else torch.diagonal(m.cov)
    return {
        "mutation": {
            "sigma": m.sigma,
            "success_rate": m.success,
            "cov_diag_mean": spread.mean().item(),
            "step": m.sigma * spread.mean().sqrt().item(),  # typical step per coordinate
        }
    }
