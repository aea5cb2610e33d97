"""A recipe search's first genes learnt by a gradient merge (``recipe.start_from``).

AdaMerging or FW-Merging runs once over the recipe's own layer groups on the seeds (the
recipe's base and merged seeds, in ``param_layout()`` order) and the examples of
``recipe.statistics``; each merged seed's coefficient in a group becomes its ``weight`` gene
there, so CMA-ES's initial mean (or M2N2's first archive member) is the learnt merge and the
search refines it by the fitness itself. The driver asks one worker for it, once, when a run
starts (``seed_genes``); the other workers and a resume never learn it (on an LLM it takes
minutes of the device), since the first candidate and the checkpoints carry it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.ops.learned_coefficients import Pool
from evomerge.ops.operators import get_merge_method
from evomerge.ops.statistics import example_ids
from evomerge.spaces.recipe import RecipeSpace


def learned_initial(space: RecipeSpace, plugin, flat_of: Callable[[int], torch.Tensor]):
    """The recipe's initial genes with every ``weight`` gene set from the learnt coefficients,
    and the learner's report. ``flat_of(seed index)`` is that seed's flat float32 vector."""
    section = space.section
    start = section.start_from
    method = get_merge_method(start.method)
    params = method.params.fill(dict(start.params), f"recipe.start_from ({start.method})")
    stats = section.statistics
    groups = stats.examples if stats.examples is not None else [None] * len(space.models)
    if len(groups) != len(space.models):
        raise ValueError(
            f"statistics.examples: {len(groups)} entries for {len(space.models)} merged seeds"
        )
    ids = [
        example_ids(plugin, g, stats.limit, f"recipe.statistics.examples[{i}]")
        for i, g in enumerate(groups)
    ]
    layer_wise = bool(params.get("layer_wise", True))
    group_of = space.group_of if layer_wise else ["all"] * len(space.group_of)
    pool = Pool(flat_of(section.base), [flat_of(m) for m in space.models], space.layout, group_of)
    coeffs, report = method.learner(plugin, pool, ids, params, section.seed, stats.batch_size)
    table = coeffs.double().tolist()
    genes = space.initial()
    for i, (group, param, model) in enumerate(space.genes):
        if param != "weight" or model is None:
            continue
        row = table[pool.groups.index(group if layer_wise else "all")]
        rng = section.genes["weight"]
        genes[i] = rng.gene(min(rng.high, max(rng.low, row[model + 1])))
    return genes, report
