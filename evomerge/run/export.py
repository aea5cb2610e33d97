"""Export one member of a run as a model folder other tools load.

The member's flat parameters (dense space), lineage or merge recipe (materialised from the
seeds exactly as the workers did) are cut into the plug-in's named tensors and written as
sharded safetensors with an index. The plug-in's ``export_info()`` adds the files a model folder
needs (``config.json``, tokenizer) and the seeds' dtype, so a causal LM export loads with
``transformers``' ``from_pretrained``. ``recipe.yaml`` says how the member was made; a recipe
member whose seeds are model folders also gets ``mergekit.yaml``, the same merge as a mergekit
(and ``evomerge merge``) config.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from evomerge import __version__
from evomerge.core.errors import EvomergeError
from evomerge.merge.merge_config import DTYPES, parse_size
from evomerge.ops.method import BaseRole
from evomerge.run import checkpoint
from evomerge.run.config import validate
from evomerge.run.loop import lineage_spec, recipe_spec
from evomerge.run.rundir import RunDir
from evomerge.runtime.host import FitnessHost
from evomerge.search.registry import make_strategy
from evomerge.spaces.genomes import LineageSpace
from evomerge.spaces.lineage import Lineage
from evomerge.tensors.safetensors_io import ShardedWriter


def pick_member(strategy, state, which: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(id, genome, scores)`` of ``best`` or of the member with id ``which``."""
    best = strategy.best(state)
    if which == "best":
        return best
    try:
        wanted = int(which)
    except ValueError:
        raise EvomergeError(f"--member: '{which}' is neither 'best' nor a member id") from None
    ids = [i for i in getattr(state, "ids", (best[0],)) if i >= 0]
    if wanted == best[0]:
        return best
    if wanted not in ids:
        listed = ", ".join(str(i) for i in sorted(ids)[:20])
        raise EvomergeError(
            f"--member: {wanted} is not in the run's last checkpoint; members: {listed}"
        )
    row = state.ids.index(wanted)
    return wanted, state.params[row], state.scores[row]


def _mergekit_doc(space, decoded: dict, seeds: list[str], dtype: str) -> dict | None:
    """The recipe as a mergekit config: one ``filter`` entry per tensor, longest name first."""
    section = space.section
    if space.method.mergekit is None or len(seeds) != len(space.models) + (
        section.base is not None
    ):
        return None
    order = sorted(
        range(len(space.layout)), key=lambda i: (-len(space.layout[i][0]), space.layout[i][0])
    )

    def conditional(values: list[float]) -> float | list[dict]:
        by_tensor = [values[i] for i in order]
        if len(set(by_tensor)) == 1:
            return by_tensor[0]
        pairs = zip(order, by_tensor, strict=True)
        return [{"filter": space.layout[i][0], "value": v} for i, v in pairs]

    def per_tensor(get) -> list:
        return [get(decoded[space.group_of[i]]) for i in range(len(space.layout))]

    models = []
    if space.method.base is BaseRole.ENDPOINT and section.base is not None:
        models.append({"model": seeds[section.base]})
    for j, seed_index in enumerate(space.models):
        names = decoded[space.groups[0]]["models"][j].keys()
        params = {p: conditional(per_tensor(lambda g, p=p, j=j: g["models"][j][p])) for p in names}
        models.append({"model": seeds[seed_index], **({"parameters": params} if params else {})})
    doc = {"merge_method": space.method.mergekit, "models": models, "dtype": dtype}
    if section.base is not None:
        doc["base_model"] = seeds[section.base]
    names = decoded[space.groups[0]]["params"].keys()
    params = {p: conditional(per_tensor(lambda g, p=p: g["params"][p])) for p in names}
    if params:
        doc["parameters"] = params
    if space.method.random:
        doc["random_seed"] = section.seed
    return doc


def export_member(run_dir: str | Path, which: str, out: str | Path, dtype: str | None = None):
    """Write member ``which`` (``best`` or an id) of the run at ``run_dir`` to ``out``."""
    run = RunDir(run_dir)
    cfg = validate(run.read_config(), str(run.path / "config.yaml"))
    strategy = make_strategy(cfg.strategy, cfg.seed)
    if lineage_spec(cfg) is not None:  # rows are lineages; the angles are not needed here
        strategy.use_space(LineageSpace(gram=None))
    ckpt, state = checkpoint.load_latest(  # one whose state reads back; else the one before
        run.checkpoints, parse=lambda c: (c, strategy.state_from_tensors(c.tensors, c.meta))
    )
    member, genome, scores = pick_member(strategy, state, which)
    host = FitnessHost(
        cfg.fitness.plugin,
        cfg.fitness.options,
        "cpu",
        recipe=recipe_spec(cfg),
        lineage=lineage_spec(cfg),
    )
    fitness = host.fitness
    inner = host.plugin
    info = inner.export_info()
    doc = {
        "evomerge": __version__,
        "run_dir": str(run.path.resolve()),
        "checkpoint": ckpt.path.name,
        "member": member,
        "train_score_mean": round(float(scores.float().mean()), 6),
        "strategy": cfg.strategy.model_dump(mode="json"),
        "seed": cfg.seed,
        "fitness": cfg.fitness.model_dump(mode="json"),
    }
    out_dtype = dtype or info.get("dtype") or "float32"
    if out_dtype not in DTYPES:
        raise EvomergeError(f"--dtype: '{out_dtype}' is not one of {', '.join(DTYPES)}")
    folder_writer = getattr(inner, "export_folder", None)  # spaces that change the shape
    if folder_writer is not None and cfg.recipe is None and not isinstance(genome, Lineage):
        with torch.no_grad():
            done = folder_writer(genome, out, out_dtype, doc)
        return {"member": member, "out_dir": str(out), **done}
    mergekit = None
    with torch.no_grad():
        if cfg.recipe is not None:
            genes = genome.double()
            if host.recipe is not None:  # merged tensor by tensor, never a flat copy
                flat, merged = None, host.recipe.merged(genes.tolist())
            else:
                flat = fitness.merged(genes[None])[0]
            decoded = host.space.decode(genes.tolist())
            doc["space"] = "recipe"
            doc["recipe"] = {
                "method": cfg.recipe.method,
                "base": cfg.recipe.base,
                "groups": decoded,
            }
            if info.get("seeds"):
                mergekit = _mergekit_doc(host.space, decoded, info["seeds"], out_dtype)
        elif isinstance(genome, Lineage):  # materialised tensor by tensor, never whole
            store = host.lineage_seeds
            flat = None
            doc["space"] = "lineage"
            doc["lineage"] = {
                "bounds": genome.bounds.tolist(),
                "coeffs": genome.coeffs.tolist(),
            }
        else:
            flat = genome.float()
            doc["space"] = "dense"
    layout = inner.param_layout()
    if flat is not None:
        size = flat.numel()
    elif cfg.recipe is not None:
        size = sum(math.prod(s) for _, s in host.space.layout)
    else:
        size = genome.num_params
    if sum(math.prod(s) for _, s in layout) != size:
        raise EvomergeError(
            f"fitness {host.name}: param_layout() covers "
            f"{sum(math.prod(s) for _, s in layout)} parameters, the member has {size}"
        )

    def tensor_at(offset: int, n: int) -> torch.Tensor:
        if cfg.recipe is not None and flat is None:
            return next(merged)
        if flat is None:
            return genome.materialize(store.read, offset, offset + n)
        return flat[offset : offset + n]

    plan = [(name, tuple(shape), DTYPES[out_dtype]) for name, shape in layout]
    with ShardedWriter(out, plan, max_shard_bytes=parse_size("5GB")) as writer:
        offset = 0
        for name, shape in layout:
            n = math.prod(shape)
            writer.write(name, tensor_at(offset, n).reshape(shape))
            offset += n
        writer.copy_files([Path(p) for p in info.get("files", [])])
        writer.write_text("recipe.yaml", yaml.safe_dump(doc, sort_keys=False))
        if mergekit is not None:
            note = (
                "# The same merge for mergekit-yaml or 'evomerge merge' (DARE's random drops and\n"
                "# ties at the trim threshold may differ in mergekit; see evomerge's README).\n"
            )
            writer.write_text("mergekit.yaml", note + yaml.safe_dump(mergekit, sort_keys=False))
        writer.commit()
    return {"member": member, "out_dir": str(out), "tensors": len(layout), "space": doc["space"]}
