"""The plots of ``evomerge report``: one PNG per view, each ``None`` when no run has its data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evomerge.interface.report import RunData

MAX_HEATMAP_EXAMPLES = 2000  # wider score matrices are binned (columns averaged)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _groups(runs: list[RunData]) -> dict[str, list[RunData]]:
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


def mean_se(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Mean and standard error of several curves on the evaluations all of them cover.

    Each curve is interpolated (step-free, linearly) onto the union of their evaluation
    points between the largest first point and the smallest last point.
    """
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    lo = max(x[0] for x, _ in curves)
    hi = min(x[-1] for x, _ in curves)
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    stack = np.stack([np.interp(grid, x, y) for x, y in curves])
    mean = stack.mean(axis=0)
    n = stack.shape[0]
    se = stack.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
    return grid, mean, se


def _draw_series(ax, runs: list[RunData], keys: tuple[str, ...], style: str, name: str) -> bool:
    """One line per run (one group), or mean +/- s.e. bands per group of several runs."""
    drawn = False
    groups = _groups(runs)
    for i, (label, members) in enumerate(groups.items()):
        colour = f"C{i % 10}"
        curves = [r.series(*keys) for r in members]
        if len(members) == 1:
            x, y = curves[0]
            if len(x):
                ax.plot(x, y, style, color=colour, label=f"{name} {label}".strip(), lw=1.6)
                drawn = True
            continue
        for x, y in curves:  # each run thin, the group's mean bold with its s.e. band
            if len(x):
                ax.plot(x, y, style, color=colour, alpha=0.25, lw=0.8)
        grid, mean, se = mean_se(curves)
        if len(grid):
            ax.plot(
                grid, mean, style, color=colour, lw=2, label=f"{name} {label}, n={len(members)}"
            )
            ax.fill_between(grid, mean - se, mean + se, color=colour, alpha=0.2, lw=0)
            drawn = True
    return drawn


def plot_fitness(runs: list[RunData], out: Path, plt) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    best = _draw_series(ax, runs, ("best_train_score",), "-", "best")
    mean = _draw_series(ax, runs, ("train_score", "mean"), "--", "mean")
    if not (best or mean):
        plt.close(fig)
        return None
    ax.set_xlabel("evaluations")
    ax.set_ylabel("train score (mean over examples)")
    several = any(len(m) > 1 for m in _groups(runs).values())
    ax.set_title(
        "Best and mean archive train score" + (" (mean ± s.e. over runs)" if several else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out / "fitness.png", plt)


def _metric_names(runs: list[RunData]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for rec in run.history:
            for key, value in (rec.get("metrics") or {}).items():
                if isinstance(value, (int, float)) and key not in names:
                    names.append(key)
    return names


def plot_metrics(runs: list[RunData], out: Path, plt) -> Path | None:
    names = _metric_names(runs)
    if not names:
        return None
    cols = min(len(names), 2)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _draw_series(ax, runs, ("metrics", name), "-", "")
        ax.set_title(name)
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Metrics of the reported member (best train score) over time")
    return _save(fig, out / "metrics.png", plt)


def archive_scores(run: RunData) -> tuple[np.ndarray, list[str]] | None:
    """The (members, examples) score matrix of the newest checkpoint and row labels."""
    if run.checkpoint is None:
        return None
    t = run.checkpoint.tensors
    if "scores" in t and t["scores"].dim() == 2:
        scores = t["scores"].double().numpy()
        ids = t["ids"].tolist() if "ids" in t else list(range(len(scores)))
        keep = [i for i, member in enumerate(ids) if member >= 0]  # empty slots are -1
        return scores[keep], [str(ids[i]) for i in keep]
    if "last_scores" in t and t["last_scores"].dim() == 2:  # generational: the last one
        scores = t["last_scores"].double().numpy()
        return scores, [f"cand {i}" for i in range(len(scores))]
    return None


def plot_archive(run: RunData, out: Path, name: str, plt) -> Path | None:
    found = archive_scores(run)
    if found is None or found[0].size == 0:
        return None
    scores, labels = found
    rows = np.argsort(-scores.mean(axis=1), kind="stable")  # best member on top
    cols = np.argsort(-scores.mean(axis=0), kind="stable")  # easiest example first
    matrix = scores[rows][:, cols]
    if matrix.shape[1] > MAX_HEATMAP_EXAMPLES:
        bins = np.array_split(np.arange(matrix.shape[1]), MAX_HEATMAP_EXAMPLES)
        matrix = np.stack([matrix[:, b].mean(axis=1) for b in bins], axis=1)
    height = min(2 + 0.22 * len(rows), 12)
    fig, ax = plt.subplots(figsize=(9, height))
    image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([labels[i] for i in rows], fontsize=7)
    ax.set_ylabel("member id (best mean first)")
    ax.set_xlabel(f"training examples, easiest first ({scores.shape[1]})")
    evals = run.checkpoint.meta.get("evaluations", "?")
    ax.set_title(f"Archive per-example scores: {run.label} at {evals} evaluations")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="score")
    return _save(fig, out / name, plt)


def _numeric_children(runs: list[RunData], key: str) -> list[str]:
    names: list[str] = []
    for run in runs:
        for rec in run.history:
            value = rec.get(key)
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and sub not in names:
                        names.append(sub)
    return names


def _has(runs: list[RunData], key: str) -> bool:
    return any(len(r.series(key)[0]) for r in runs)


def plot_diversity(runs: list[RunData], out: Path, plt) -> Path | None:
    """Diversity diagnostics recorded in the history (``diversity: {...}``), where present."""
    panels = [("diversity", sub) for sub in _numeric_children(runs, "diversity")]
    panels += [(k,) for k in ("disagreement", "occupancy", "owners") if _has(runs, k)]
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, keys in zip(axes.flat, panels, strict=False):
        _draw_series(ax, runs, keys, "-", "")
        ax.set_title(keys[-1])
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Archive diversity")
    return _save(fig, out / "diversity.png", plt)


def map_elites_grid(run: RunData) -> np.ndarray | None:
    """The MAP-Elites grid of the newest checkpoint (``grid_fitness``, ``grid_shape``: each
    cell's elite mean score, NaN where empty), as rows x columns, if the run is MAP-Elites."""
    if run.checkpoint is None or "grid_fitness" not in run.checkpoint.tensors:
        return None
    grid = run.checkpoint.tensors["grid_fitness"].double().numpy()
    shape = run.checkpoint.meta.get("grid_shape")
    if shape and grid.size == int(np.prod(shape)):
        grid = grid.reshape(shape)
    if grid.ndim == 1:  # one descriptor: one row
        grid = grid[None, :]
    if grid.ndim > 2:  # more descriptors than two: best over the rest
        grid = np.nanmax(grid.reshape(grid.shape[0], grid.shape[1], -1), axis=2)
    return grid


def plot_map_elites(runs: list[RunData], out: Path, plt) -> Path | None:
    """Coverage (and QD score) over time and the last grid, when a run is MAP-Elites."""
    with_cov = [r for r in runs if len(r.series("coverage")[0])]
    grids = [(r, g) for r in runs if (g := map_elites_grid(r)) is not None]
    if not with_cov and not grids:
        return None
    panels = (1 if with_cov else 0) + (1 if with_cov and _has(with_cov, "qd_score") else 0)
    panels += 1 if grids else 0
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
    axes = list(axes.flat)
    if with_cov:
        ax = axes.pop(0)
        _draw_series(ax, with_cov, ("coverage",), "-", "")
        ax.set_title("grid coverage")
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if _has(with_cov, "qd_score"):
            ax = axes.pop(0)
            _draw_series(ax, with_cov, ("qd_score",), "-", "")
            ax.set_title("QD score")
            ax.set_xlabel("evaluations")
            ax.grid(alpha=0.3)
    if grids:
        ax = axes.pop(0)
        run, grid = grids[0]
        image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="magma", aspect="auto")
        ax.set_title(f"elites per cell: {run.label}")
        ax.set_xlabel("descriptor 2")
        ax.set_ylabel("descriptor 1")
        fig.colorbar(image, ax=ax, fraction=0.04, label="fitness")
    fig.suptitle("MAP-Elites")
    return _save(fig, out / "map_elites.png", plt)


def pareto_objectives(run: RunData) -> np.ndarray | None:
    """The Pareto archive's members x objectives (``objectives``) of the newest checkpoint."""
    value = None if run.checkpoint is None else run.checkpoint.tensors.get("objectives")
    if value is not None and value.dim() == 2 and value.shape[1] >= 2 and len(value):
        return value.double().numpy()
    return None


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows no other row dominates (all objectives maximised)."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        ge = np.all(points >= points[i], axis=1)
        gt = np.any(points > points[i], axis=1)
        if np.any(ge & gt):
            keep[i] = False
    return keep


def plot_pareto(runs: list[RunData], out: Path, plt) -> Path | None:
    """Front size over time and the front on the first two objectives, when present."""
    with_front = [r for r in runs if len(r.series("front_size")[0])]
    objs = [(r, o) for r in runs if (o := pareto_objectives(r)) is not None]
    if not with_front and not objs:
        return None
    panels = (1 if with_front else 0) + (1 if objs else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
    axes = list(axes.flat)
    if with_front:
        ax = axes.pop(0)
        _draw_series(ax, with_front, ("front_size",), "-", "")
        ax.set_title("Pareto front size")
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if objs:
        ax = axes.pop(0)
        run, points = objs[0]
        front = pareto_mask(points)
        ax.scatter(points[~front, 0], points[~front, 1], s=14, c="0.6", label="dominated")
        order = np.argsort(points[front, 0])
        ax.plot(points[front, 0][order], points[front, 1][order], "o-", c="C3", label="front")
        names = run.checkpoint.meta.get("objective_names") or []
        ax.set_xlabel(names[0] if len(names) > 1 else "objective 1")
        ax.set_ylabel(names[1] if len(names) > 1 else "objective 2")
        ax.set_title(f"Pareto front: {run.label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Pareto archive")
    return _save(fig, out / "pareto.png", plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- summary and page -------------------------------------------------------------------------
