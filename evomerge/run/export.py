"""Export one member of a run as a model folder other tools load.

The run's space writes the member (:meth:`SpaceWorker.export`): flat parameters, a lineage
or a merge recipe are realised from the seeds exactly as the workers did, tensor by tensor,
and written as sharded safetensors with an index; a layer stack as the stacked model. The
plug-in's ``export_info()`` adds the files a model folder needs (``config.json``, tokenizer)
and the seeds' dtype, so a causal LM export loads with ``transformers``' ``from_pretrained``.
``recipe.yaml`` says how the member was made; a recipe member whose seeds are model folders
also gets ``mergekit.yaml``, the same merge as a mergekit (and ``evomerge merge``) config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge import __version__
from evomerge.core.errors import EvomergeError
from evomerge.core.extensions import package
from evomerge.run import checkpoint
from evomerge.run.config import validate
from evomerge.run.loop import space_spec
from evomerge.run.rundir import RunDir
from evomerge.runtime.local import LocalEvaluator
from evomerge.search.base import use_space
from evomerge.search.registry import make_strategy
from evomerge.spaces import SPACES
from evomerge.tensors.dtypes import DTYPES


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


def export_member(
    run_dir: str | Path,
    which: str,
    out: str | Path,
    dtype: str | None = None,
    form: str | None = None,
):
    """Write member ``which`` (``best`` or an id) of the run at ``run_dir`` to ``out``, in the
    space's own form or in ``form`` (one the space declares: ``merged``)."""
    run = RunDir(run_dir)
    cfg = validate(run.read_config(), str(run.path / "config.yaml"))
    evaluator = LocalEvaluator(
        cfg.fitness.plugin,
        cfg.fitness.options,
        "cpu",
        space_spec(cfg),
        extensions=package(cfg.extensions or ()),
    )
    space = SPACES.get(evaluator.info["space"]).on_driver(space_spec(cfg), evaluator)
    strategy = make_strategy(cfg.strategy, cfg.seed)
    use_space(strategy, space)
    ckpt, state = checkpoint.load_latest(  # one whose state reads back; else the one before
        run.checkpoints, parse=lambda c: (c, strategy.state_from_tensors(c.tensors, c.meta))
    )
    member, genome, scores = pick_member(strategy, state, which)
    host = evaluator.host
    info = host.export_info()
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
    done = host.export(genome, out, out_dtype, doc, form=form)
    return {"member": member, "out_dir": str(out), **done}
