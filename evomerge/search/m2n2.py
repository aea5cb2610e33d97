"""M2N2 (natural niches) and its GA baseline as an ask/tell strategy over explicit state.

One child: parent A ~ competition fitness; parent B ~ attraction to A (what B solves that A
does not, weighted by scarcity); split-point SLERP crossover; optional Gaussian mutation; the
child joins the archive if it is not the least fit of the P+1 rows. ``batch`` children asked
from one state are told in order, so ``batch: 1`` is the reference's sequential algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evomerge.core.keys import child_generator
from evomerge.search import adaptive_mutation as am
from evomerge.search import competition
from evomerge.search.diversity import diversity
from evomerge.spaces.genomes import DenseSpace


class VariationConfig(BaseModel):
    """How children are made: shared by ``m2n2``, ``ga``, ``map_elites`` and ``pareto``."""

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


class M2N2Config(VariationConfig):
    """``strategy:`` section for ``name: m2n2``."""

    name: Literal["m2n2"] = "m2n2"
    archive_size: int = Field(20, ge=2, description="Members kept in the archive.")
    alpha: float = Field(1.0, ge=0, description="Resource-sharing exponent (0: no competition).")
    attraction: bool = Field(True, description="Choose parent B by attraction to parent A.")


class UncompetedConfig(VariationConfig):
    """Archives without resource competition or attraction (parents chosen otherwise)."""

    @property
    def alpha(self) -> float:
        return 0.0

    @property
    def attraction(self) -> bool:
        return False


class GAConfig(UncompetedConfig):
    """``strategy:`` section for ``name: ga``: M2N2 without competition (alpha 0) or attraction."""

    name: Literal["ga"] = "ga"
    archive_size: int = Field(20, ge=2, description="Members kept in the archive.")


@dataclass(frozen=True)
class ArchiveState:
    """The whole search state. Rows of an empty slot: params None, scores zero, id -1."""

    params: tuple[torch.Tensor | None, ...]
    scores: torch.Tensor
    ids: tuple[int, ...]
    evaluations: int
    next_id: int
    mutation: am.MutationState | None = None


@dataclass(frozen=True)
class Children:
    """Candidates asked from one state: their parameters, ids and parent ids (and, with
    adaptive mutation, each child's unscaled mutation steps)."""

    params: torch.Tensor
    ids: tuple[int, ...]
    parents: tuple[tuple[int, int], ...]
    steps: tuple | None = None


class M2N2:
    """Ask/tell M2N2 in the dense space. The object holds only config; state is explicit."""

    def __init__(self, config: M2N2Config | GAConfig, seed: int):
        self.config = config
        self.seed = seed
        self._gen = torch.Generator()
        self.space = DenseSpace()

    def use_space(self, space) -> None:
        """Make children in ``space`` (a :mod:`evomerge.spaces.genomes` space)."""
        self.space = space

    def use_groups(self, groups: dict[str, list[int]] | None) -> None:
        """The plug-in's example groups; M2N2's niches are single examples, so unused."""

    # -- state -------------------------------------------------------------------------------
    def init(self, seed_params: torch.Tensor, seed_scores: torch.Tensor) -> ArchiveState:
        """An empty archive with the seed models inserted by the replacement rule."""
        size, (k, e) = self.config.archive_size, seed_scores.shape
        state = ArchiveState(
            params=(None,) * size,
            scores=torch.zeros(size, e, dtype=torch.float32),
            ids=(-1,) * size,
            evaluations=0,
            next_id=0,
        )
        for i in range(k):
            state = self._insert(state, i, self.space.copy(seed_params[i]), seed_scores[i].float())
        mutation = None
        if self.config.adaptive_mutation is not None:
            dim = self.space.mutation_shape(seed_params[0])[1]
            mutation = am.initial(self.config.adaptive_mutation, dim)
        return replace(state, next_id=k, mutation=mutation)

    def _insert(self, state: ArchiveState, cid: int, params, scores, scores_buf=None):
        worst = competition.worst_index(state.scores, scores, self.config.alpha)
        if worst >= len(state.ids):
            return state
        new_scores = state.scores.clone() if scores_buf is None else scores_buf
        new_scores[worst] = scores
        return replace(
            state,
            params=state.params[:worst] + (params,) + state.params[worst + 1 :],
            scores=new_scores,
            ids=state.ids[:worst] + (cid,) + state.ids[worst + 1 :],
        )

    # -- ask / tell --------------------------------------------------------------------------
    def _parents(self, state: ArchiveState, u_a: float, u_b: float) -> tuple[int, int]:
        cfg = self.config
        zinv = competition.inverse_z(state.scores.sum(dim=0), cfg.alpha)
        weights = (state.scores @ zinv).tolist()
        if not sum(weights) > 0:  # nobody scores anything: uniform over members
            weights = [float(i >= 0) for i in state.ids]
        a = competition.sample_index(weights, u_a)
        if cfg.attraction:
            g = competition.attraction(state.scores, zinv, a).tolist()
            if sum(g) > 0:
                return a, competition.sample_index(g, u_b)
            # No member adds anything to A: fall back to fitness-proportional choice of B.
        return a, competition.sample_index(weights, u_b)

    def ask(self, state: ArchiveState, n: int) -> Children:
        """``n`` children from one archive state; child i uses key (seed, evaluations + i)."""
        cfg = self.config
        rows, ids, parents, steps = [], [], [], []
        for j in range(n):
            gen = child_generator(self.seed, state.evaluations + j, self._gen)
            u_a, u_b, w = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
            a, b = self._parents(state, u_a, u_b)
            pa, pb = state.params[a], state.params[b]
            space = self.space
            split = int(torch.randint(0, space.size(pa), (1,), generator=gen))
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
            ids.append(state.next_id + j)
            parents.append((state.ids[a], state.ids[b]))
        out = tuple(steps) if state.mutation is not None else None
        return Children(self.space.pack(rows), tuple(ids), tuple(parents), out)

    def tell(self, state: ArchiveState, children: Children, scores: torch.Tensor) -> ArchiveState:
        """Insert the children in order; returns a new state (the old one is not modified)."""
        buf = state.scores.clone()
        for i, cid in enumerate(children.ids):
            member = self.space.copy(children.params[i])
            state = self._insert(state, cid, member, scores[i].float(), buf)
            if state.mutation is not None:
                kept = cid in state.ids
                steps = children.steps[i] if children.steps is not None else None
                mutation = am.update(self.config.adaptive_mutation, state.mutation, steps, kept)
                state = replace(state, mutation=mutation)
        n = len(children.ids)
        return replace(
            state, scores=buf, evaluations=state.evaluations + n, next_id=state.next_id + n
        )

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
        fit = competition.fitness(state.scores, self.config.alpha)[filled]
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
            **self._mutation_stats(state),
        }

    @staticmethod
    def _mutation_stats(state: ArchiveState) -> dict:
        m = state.mutation
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

    # -- checkpoints -------------------------------------------------------------------------
    def state_to_tensors(self, state: ArchiveState) -> tuple[dict[str, torch.Tensor], dict]:
        """Plain tensors + JSON-able scalars: this is the checkpoint."""
        tensors = {
            **self.space.to_tensors(state.params),
            "scores": state.scores,
            "ids": torch.tensor(state.ids),
        }
        meta = {"evaluations": state.evaluations, "next_id": state.next_id}
        if state.mutation is not None:
            extra, meta["mutation"] = state.mutation.to_tensors()
            tensors.update(extra)
        return tensors, {**meta, "space": self.space.name}

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], meta: dict) -> ArchiveState:
        ids = tuple(int(i) for i in tensors["ids"])
        return ArchiveState(
            params=self.space.from_tensors(tensors, ids),
            scores=tensors["scores"].clone(),
            ids=ids,
            evaluations=int(meta["evaluations"]),
            next_id=int(meta["next_id"]),
            mutation=(
                am.MutationState.from_tensors(tensors, meta["mutation"])
                if "mutation" in meta
                else None
            ),
        )
