"""Item-response-theory estimates against the subset mean, on responses of real M2N2 searches.

Subset fitness (``evaluation: {schedule: subset, stratify: task}``) scores every candidate on
k of the 1437 digits training examples and takes the mean. tinyBenchmarks-style estimators fit
item parameters on other candidates' 0/1 answers and read a candidate's accuracy off its k
answers. This bench asks whether they beat the subset mean on candidates they were not fitted
on, measured against each candidate's accuracy on all 1437 examples.

Responses: ``evomerge`` runs of configs/m2n2_digits_pretrained.yaml and configs/m2n2_digits.yaml
(seeds 0..S-1, small budgets) in this process; every candidate the search scores (the two seeds,
then each child in evaluation order) is kept with its 1437 per-example scores.

Calibration: (a) ``early``: the first M candidates of the run (its seeds and first children);
(b) ``other``: candidates spread over the other seeds' runs of the same config. Held out: up to
T distinct candidates spread over the second half of the run ("late"), and their best third
("close": what selection has to order).

Estimators at k items, each over D draws of the subset: the mean on k uniform items; the mean on
k items stratified by class (the subset schedule's draw, ``draw_subset``); on those same items
2PL IRT (item slopes a, intercepts b, ``p = sigmoid(a . theta - b)``, MAP with N(0, 1) abilities,
log a ~ N(0, 0.5^2), b ~ N(0, 3^2); the candidate's ability is the MAP from its k answers and the
estimate the mean predicted correctness over all items), p-IRT (observed answers on the k items,
IRT's predictions on the rest) and gp-IRT (lambda * subset mean + (1 - lambda) * p-IRT, lambda
= b^2 / (b^2 + v) from p-IRT's and the mean's squared errors on a fifth of the calibration set
held out of a second fit); and the mean and gp-IRT on k items stratified by calibration
difficulty (k bins of the items sorted by their calibration mean, one item from each). The IRT
rows come once per ``--dims`` (ability dimensions; 1 and 5 by default: the answers of experts on
digits 0-4 and 5-9 are not one-dimensional). Figures: the median over draws of the mean absolute
error over late candidates and of the Spearman correlation with full accuracy (late, close),
then the mean over seeds. Results in BENCHMARKS.md (about 4 minutes on 2 cores).

    nice -n 10 python bench/irt_digits.py
    nice -n 10 python bench/irt_digits.py --seeds 2 --draws 10 --ks 15 60 359 --dims 1 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from evomerge.core.keys import key
from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir
from evomerge.search.subset import draw_subset

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "pretrained": ROOT / "configs/m2n2_digits_pretrained.yaml",
    "scratch": ROOT / "configs/m2n2_digits.yaml",
}
DRAW_STREAM = 1 << 61  # key index of the bench's subset draws


# -- responses from real searches ------------------------------------------------------------
class Recording:
    """The run's schedule, keeping each scored child's per-example scores in order."""

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def evaluate(self, state, children, score):
        scores, spent = self.inner.evaluate(state, children, score)
        self.rows.append(scores.to(torch.uint8).clone())
        return scores, spent

    def standard_error(self, row):
        return self.inner.standard_error(row)


def responses(setting: str, seed: int, evals: int) -> torch.Tensor:
    """``(2 + evals, 1437)`` 0/1 answers: the seeds, then every child in evaluation order."""
    sets = [f"seed={seed}", f"budget.evaluations={evals}", "history_every=1000000"]
    sets.append(f"checkpoint_every={evals}")
    cfg = validate(apply_overrides(read_yaml(CONFIGS[setting]), sets), "irt", bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        search = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            member = torch.tensor(search.state.ids) >= 0
            seeds = search.state.scores[member].to(torch.uint8)
            search.schedule = Recording(search.schedule)
            search.loop()
        finally:
            search.evaluator.close()
    return torch.cat([seeds, *search.schedule.rows])


def spread(rows: torch.Tensor, lo: int, hi: int, count: int) -> torch.Tensor:
    """Up to ``count`` indices in ``[lo, hi)`` evenly spaced, one per distinct answer row."""
    _, first = np.unique(rows[lo:hi].numpy(), axis=0, return_index=True)
    distinct = np.sort(first) + lo
    pick = np.linspace(0, len(distinct) - 1, min(count, len(distinct))).round().astype(int)
    return torch.as_tensor(distinct[pick])


# -- IRT ---------------------------------------------------------------------------------------
def fit_items(y: torch.Tensor, dims: int, steps: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP item slopes ``(N, dims)`` and intercepts ``(N,)`` from ``(R, N)`` 0/1 answers."""
    gen = torch.Generator().manual_seed(0)
    r, n = y.shape
    theta = (0.1 * torch.randn(r, dims, generator=gen)).requires_grad_()
    log_a = torch.zeros(n, dims).requires_grad_()
    b = torch.zeros(n).requires_grad_()
    opt = torch.optim.Adam([theta, log_a, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        logit = theta @ log_a.exp().T - b
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="sum")
        prior = 0.5 * (theta.square().sum() + (log_a / 0.5).square().sum())
        prior = prior + 0.5 * (b / 3.0).square().sum()
        ((nll + prior) / (r * n)).backward()
        opt.step()
    return log_a.detach().exp(), b.detach()


def abilities(a, b, items: torch.Tensor, y: torch.Tensor, newton: int = 25) -> torch.Tensor:
    """MAP abilities ``(D, C, dims)`` of ``C`` candidates from their answers ``y (C, N)`` on
    each draw's ``items (D, k)`` (N(0, 1) prior; Newton's method, the posterior is concave)."""
    ai, bi = a[items], b[items]  # (D, k, d), (D, k)
    yi = y[:, items].permute(1, 0, 2)  # (D, C, k)
    draws, cands, d = items.shape[0], y.shape[0], a.shape[1]
    outer = (ai[..., :, None] * ai[..., None, :]).reshape(draws, -1, d * d)  # (D, k, d*d)
    theta = torch.zeros(draws, cands, d)
    eye = torch.eye(d)
    for _ in range(newton):
        p = torch.sigmoid(torch.bmm(theta, ai.transpose(1, 2)) - bi[:, None, :])
        grad = torch.bmm(yi - p, ai) - theta
        hess = torch.bmm(p * (1 - p), outer).view(draws, cands, d, d) + eye
        theta = theta + torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
    return theta


def irt_estimates(a, b, items, y) -> tuple[torch.Tensor, torch.Tensor]:
    """IRT's and p-IRT's accuracy estimates ``(D, C)`` from the answers on ``items``."""
    theta = abilities(a, b, items, y)
    n = y.shape[1]
    p = torch.sigmoid(theta @ a.T - b)  # (D, C, N)
    seen_p = p.gather(2, items[:, None, :].expand(-1, y.shape[0], -1)).sum(-1)
    seen_y = y[:, items].permute(1, 0, 2).sum(-1)
    total = p.sum(-1)
    return total / n, (total - seen_p + seen_y) / n


def subset_means(items, y) -> torch.Tensor:
    return y[:, items].permute(1, 0, 2).mean(-1)


# -- subset draws ------------------------------------------------------------------------------
def uniform_draws(n: int, k: int, draws: int, seed: int) -> torch.Tensor:
    gens = [torch.Generator().manual_seed(key(seed, DRAW_STREAM + i)) for i in range(draws)]
    return torch.stack([torch.randperm(n, generator=g)[:k] for g in gens])


def class_draws(n: int, k: int, draws: int, seed: int, groups: dict) -> torch.Tensor:
    """The subset schedule's own draw (stratified by class), one per draw seed."""
    return torch.stack([draw_subset(n, k, groups, seed * 100_003 + i)[0] for i in range(draws)])


def difficulty_draws(p_bar: torch.Tensor, k: int, draws: int, seed: int) -> torch.Tensor:
    """One item from each of k bins of the items sorted by calibration mean (ties at random)."""
    out = []
    for i in range(draws):
        g = torch.Generator().manual_seed(key(seed, DRAW_STREAM + 50_000 + i))
        order = torch.argsort(p_bar + 1e-6 * torch.rand(len(p_bar), generator=g))
        bins = torch.tensor_split(order, k)
        out.append(torch.stack([s[torch.randint(len(s), (1,), generator=g)][0] for s in bins]))
    return torch.stack(out)


# -- figures -----------------------------------------------------------------------------------
def spearman(est: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Spearman correlation of each row of ``est (D, C)`` with ``truth (C,)`` (mean ranks)."""
    re = rankdata(est.numpy(), axis=1)
    rt = rankdata(truth.numpy())
    re, rt = re - re.mean(1, keepdims=True), rt - rt.mean()
    den = np.sqrt((re**2).sum(1) * (rt**2).sum())
    return np.where(den > 0, (re * rt).sum(1) / np.where(den > 0, den, 1), 0.0)


def figures(est: torch.Tensor, truth: torch.Tensor, close: torch.Tensor) -> tuple:
    """Medians over draws: mean absolute error, Spearman over late and over close."""
    mae = (est - truth).abs().mean(1).median().item()
    rho = float(np.median(spearman(est, truth)))
    rho_close = float(np.median(spearman(est[:, close], truth[close])))
    return mae, rho, rho_close


def split_fit(cal: torch.Tensor, dims: int, seed: int) -> tuple:
    """Item parameters fitted on four fifths of the calibration set, and the fifth held out."""
    gen = torch.Generator().manual_seed(key(seed, DRAW_STREAM - 1))
    order = torch.randperm(len(cal), generator=gen)
    held, fit = cal[order[: len(cal) // 5]], cal[order[len(cal) // 5 :]]
    return fit_items(fit, dims), held


def gp_weight(split, items: torch.Tensor) -> float:
    """gp-IRT's lambda = b^2 / (b^2 + v): p-IRT's squared error b^2 and the subset mean's v
    on the calibration fifth held out of the split fit, for these draws of the items."""
    (a, b), held = split
    truth = held.mean(1)
    _, pirt = irt_estimates(a, b, items, held)
    b2 = (pirt - truth).square().mean().item()
    v = (subset_means(items, held) - truth).square().mean().item()
    return b2 / (b2 + v) if b2 + v > 0 else 0.5


def evaluate(cal, held, close, ks, draws, seed, groups, dims_list) -> dict:
    """Every estimator's figures at each k for one calibration set and held-out set."""
    n = held.shape[1]
    truth = held.mean(1)
    fits = {d: (fit_items(cal, d), split_fit(cal, d, seed)) for d in dims_list}
    out = {}
    for k in ks:
        uniform = uniform_draws(n, k, draws, seed)
        by_class = class_draws(n, k, draws, seed, groups)
        by_difficulty = difficulty_draws(cal.mean(0), k, draws, seed)
        mean_c = subset_means(by_class, held)
        mean_d = subset_means(by_difficulty, held)
        rows = {
            "mean, uniform items": subset_means(uniform, held),
            "mean, class-stratified (the schedule's)": mean_c,
            "mean, difficulty-stratified": mean_d,
        }
        for dims, ((a, b), split) in fits.items():
            tag = f"{dims}-dim 2PL" if dims > 1 else "2PL"
            irt, pirt = irt_estimates(a, b, by_class, held)
            lam = gp_weight(split, by_class)
            rows[f"IRT ({tag}), class-stratified"] = irt
            rows[f"p-IRT ({tag}), class-stratified"] = pirt
            rows[f"gp-IRT ({tag}), class-stratified"] = lam * mean_c + (1 - lam) * pirt
            _, pirt_d = irt_estimates(a, b, by_difficulty, held)
            lam = gp_weight(split, by_difficulty)
            rows[f"gp-IRT ({tag}), difficulty-stratified"] = lam * mean_d + (1 - lam) * pirt_d
        out[k] = {name: figures(est, truth, close) for name, est in rows.items()}
    return out


def class_groups() -> dict[str, list[int]]:
    from sklearn.datasets import load_digits

    y = torch.tensor(load_digits(return_X_y=True)[1][:1437])
    return {str(c): torch.nonzero(y == c).squeeze(1).tolist() for c in range(10)}


def table(title: str, results: dict, ks: list[int]) -> None:
    """Rows: estimators; cells: MAE / Spearman late / Spearman close, each the mean over
    seeds of the median over draws."""
    print(f"\n{title}\n")
    print("| estimator | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---" * (len(ks) + 1) + "|")
    for name in results[ks[0]]:
        cells = []
        for k in ks:
            mae, rho, close = (statistics.fmean(f[i] for f in results[k][name]) for i in range(3))
            cells.append(f"{mae:.4f} / {rho:.2f} / {close:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def bench(args) -> None:
    groups = class_groups()
    t0 = time.perf_counter()
    runs = {}
    for setting, evals in (("pretrained", args.pretrained_evals), ("scratch", args.scratch_evals)):
        for seed in range(args.seeds):
            runs[setting, seed] = responses(setting, seed, evals).float()
            acc = runs[setting, seed].mean(1)
            half = len(acc) // 2
            print(
                f"{setting} seed {seed}: {len(acc)} candidates, accuracy early "
                f"{acc[: args.early].mean():.3f}, late {acc[half:].mean():.3f} "
                f"(sd {acc[half:].std():.3f}, best {acc.max():.3f})",
                flush=True,
            )
    t1 = time.perf_counter()
    print(f"searches: {t1 - t0:.1f} s")
    for setting in CONFIGS:
        for calib in ("early", "other"):
            results = {k: {} for k in args.ks}
            for seed in range(args.seeds):
                y = runs[setting, seed]
                late = spread(y, len(y) // 2, len(y), args.held_out)
                held = y[late]
                close = torch.argsort(held.mean(1), descending=True)[: len(late) // 3]
                if calib == "early":
                    alike = ((held.mean(0) == 0) | (held.mean(0) == 1)).float().mean()
                    top = held[close].mean(1)
                    print(
                        f"{setting} seed {seed}: {len(late)} late held out, {alike:.0%} of the "
                        f"items answered alike by all of them; close accuracy {top.min():.3f}"
                        f"-{top.max():.3f} (sd {top.std():.4f})",
                        flush=True,
                    )
                if calib == "early":
                    cal = y[: args.early]
                else:
                    others = [runs[setting, s] for s in range(args.seeds) if s != seed]
                    per = args.other // max(1, len(others))
                    cal = torch.cat([o[spread(o, 0, len(o), per)] for o in others])
                figs = evaluate(cal, held, close, args.ks, args.draws, seed, groups, args.dims)
                for k, by_name in figs.items():
                    for name, f in by_name.items():
                        results[k].setdefault(name, []).append(f)
            title = (
                f"{setting}, calibrated on {calib} ({len(cal)} respondents, {len(held)} late "
                "held out): MAE / Spearman late / Spearman close"
            )
            table(title, results, args.ks)
    print(f"\nestimates: {time.perf_counter() - t1:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrained-evals", type=int, default=2000)
    parser.add_argument("--scratch-evals", type=int, default=10000)
    parser.add_argument("--early", type=int, default=100, help="calibration (a): first M")
    parser.add_argument("--other", type=int, default=600, help="calibration (b): from others")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--ks", type=int, nargs="+", default=[15, 30, 60, 120, 359])
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench(args)
