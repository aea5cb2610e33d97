"""Why racing saves little on M2N2: where children would stop under four boxes for their
unscored examples, on the pre-trained M2N2 digits config.

The search runs with full scoring; after ``--warm`` evaluations, each of the next
``--children`` children is fully scored, then raced offline, batch of one, against the state it
was asked from, at the stage layout of configs/racing_digits_approximate.yaml (a fresh shuffle
per child), with its unscored examples' box set to:

* ``exact``: the score range (exact racing);
* ``approximate``: the confidence interval of approximate racing at ``--delta``;
* ``rest mean``: the true mean of its unscored scores, on every one of them (an interval of
  zero width: the best any bound on the mean can do);
* ``true scores``: its true scores (what a racer that knew which examples it solves could do);
* ``weighted interval``: not a box: the same confidence interval on the child's own competition
  fitness, ``sum_j s_j / z_j`` (each example's share, in [0, 1], sampled like its score), with
  the members' fitness taken at the child's true scores (kinder to the racer than any real
  one): what a strategy that bounded its weighted sum itself would get.
* ``paired normal``: not a box either: the child against each member on the *same* examples.
  The child stays out iff, for every member ``m``, ``D_m = sum_j (s_j - S_mj) / z_j < 0``
  (``z_j`` with the child in it, known on the scored examples); ``D_m`` is estimated from the
  scored examples' terms (their mean times ``N``), with a normal-approximation bound at
  ``delta / K`` per check and the finite-population factor. Pairing removes what child and
  member share (the examples both solve), the variance a bound on the child alone carries.
* ``paired estimate``: the same with no margin at all (stop as soon as every estimated
  ``D_m`` is below zero): the least any rule built on these estimates can score.

It prints the mean and median fraction of a child's examples scored before the strategy's
``race`` says it cannot matter (1: never), and how many children the archive kept.

    python bench/racing_fill_digits.py --warm 2000 --children 500
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir
from evomerge.search import competition
from evomerge.search.base import Children
from evomerge.search.confidence import mean_radius, rest_interval
from evomerge.search.racing import stage_sizes

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/racing_digits_approximate.yaml"
FILLS = ("exact", "approximate", "rest mean", "true scores")
ROWS = (*FILLS, "weighted interval", "paired normal", "paired estimate")


def box(fill: str, scores: torch.Tensor, seen: torch.Tensor, rest: torch.Tensor, failure):
    """``(low, high)``, each ``(1, E)``, for one child under ``fill``."""
    low, high = scores.clone(), scores.clone()
    if fill == "exact":
        low[rest], high[rest] = 0.0, 1.0
    elif fill == "approximate":
        lo, hi = rest_interval(scores[seen][None], len(scores), 0.0, 1.0, failure)
        low[rest], high[rest] = float(lo[0]), float(hi[0])
    elif fill == "rest mean":
        low[rest] = high[rest] = scores[rest].mean()
    return low[None], high[None]


def weighted_stop(state, scores: torch.Tensor, order, ends, failure, alpha: float) -> float:
    """The fraction of examples after which an interval on the child's competition fitness
    puts it below every member (1: never)."""
    s = scores.double()
    members = state.scores.double()
    zinv = competition.inverse_z(members.sum(dim=0) + s, alpha)
    share = s * zinv  # the child's share of each example, in [0, 1]
    worst = float((members @ zinv).min())
    num = len(s)
    for n in ends:
        seen = share[order[:n]]
        radius = float(mean_radius(seen[None], num, 1.0, failure)[0]) * num / (num - n)
        rest = min(1.0, float(seen.mean()) + radius)
        if float(seen.sum()) + (num - n) * rest < worst:
            return n / num
    return 1.0


def paired_stop(state, scores: torch.Tensor, order, ends, z: float, alpha: float) -> float:
    """The fraction of examples after which, for every member, the estimated ``D_m`` plus
    ``z`` standard errors is below zero (1: never)."""
    members = state.scores.double()[state.filled]
    s = scores.double()
    zinv = competition.inverse_z(members.sum(dim=0) + s, alpha)
    terms = (s[None] - members) * zinv[None]  # (P, N): child minus member, example by example
    num = len(s)
    for n in ends:
        seen = terms[:, order[:n]]
        se = seen.std(dim=1) / math.sqrt(n) * math.sqrt((num - n) / (num - 1))
        if bool((seen.mean(dim=1) + z * se < 0).all()):
            return n / num
    return 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=2000, help="evaluations before measuring")
    parser.add_argument("--children", type=int, default=500)
    parser.add_argument("--delta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw = apply_overrides(read_yaml(CONFIG), [f"seed={args.seed}"])
    section = raw.pop("evaluation")
    raw["budget"] = {"evaluations": args.warm + args.children}
    raw["checkpoint_every"] = raw["history_every"] = args.warm + args.children
    cfg = validate(raw, "fill", bases=[ROOT])
    num = 1437
    sizes = stage_sizes(num, section["first_stage"], section["growth"], section["max_stage"])
    ends = torch.tensor(sizes).cumsum(0).tolist()[:-1]
    failure = args.delta / len(ends)
    stops = {f: [] for f in ROWS}
    kept = 0
    gen = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        search = loop.start(cfg, RunDir(Path(tmp) / "run"))
        strategy = search.strategy
        for step in range(args.warm + args.children):
            children = strategy.ask(search.state, 1)
            scores = search.score(children.params).float()
            if step >= args.warm:
                one = Children(children.params, children.ids, children.parents)
                order = torch.randperm(num, generator=gen)
                for fill in FILLS:
                    at = 1.0
                    for n in ends:
                        low, high = box(fill, scores[0], order[:n], order[n:], failure)
                        if not strategy.race(search.state, one, low, high, [False])[0]:
                            at = n / num
                            break
                    stops[fill].append(at)
                alpha = cfg.strategy.alpha
                stops["weighted interval"].append(
                    weighted_stop(search.state, scores[0], order, ends, failure, alpha)
                )
                z = statistics.NormalDist().inv_cdf(1.0 - failure)
                stops["paired normal"].append(
                    paired_stop(search.state, scores[0], order, ends, z, alpha)
                )
                stops["paired estimate"].append(
                    paired_stop(search.state, scores[0], order, ends, 0.0, alpha)
                )
            before = search.state
            search.state = strategy.tell(search.state, children, scores)
            kept += step >= args.warm and before.ids != search.state.ids
        search.evaluator.close()
    print(f"seed {args.seed}: {args.children} children after {args.warm} evaluations, "
          f"{kept} kept by the archive; delta {args.delta}\n")  # fmt: skip
    print("| unscored examples' box | fraction of examples scored, mean | median |")
    print("|---|---|---|")
    for fill in ROWS:
        mean, median = statistics.fmean(stops[fill]), statistics.median(stops[fill])
        print(f"| {fill} | {mean:.3f} | {median:.3f} |")


if __name__ == "__main__":
    main()
