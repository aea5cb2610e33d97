"""``evomerge report``: PNG plots and one self-contained HTML page for one or more runs.

Everything is read from the run directories (``history.jsonl``, ``summary.json``,
``config.yaml`` and the newest intact checkpoint); nothing is re-computed with the plug-in.
Plots that need data a run does not have (a MAP-Elites grid, a Pareto front, diversity
diagnostics) are left out, and the page says so. The HTML embeds the images as base64, so
the one file opens offline, mailed or copied anywhere; the PNGs are also written beside it.

Several run directories are overlaid: runs with the same config ``name`` and strategy form a
group (typically the same search with different seeds), drawn as the mean with a band of
plus/minus one standard error over the group's runs, on the evaluations all of them reached.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evomerge.core.errors import RunDirError
from evomerge.core.files import publish, temp_sibling
from evomerge.core.out_paths import check_output_path
from evomerge.interface.report_plots import (  # noqa: F401  (mean_se, pareto_mask: part of the report's API)
    _pyplot,
    mean_se,
    pareto_mask,
    plot_archive,
    plot_diversity,
    plot_fitness,
    plot_map_elites,
    plot_metrics,
    plot_pareto,
)
from evomerge.run import checkpoint as ckpt_mod
from evomerge.run.rundir import RunDir


@dataclass
class RunData:
    """What a report needs from one run directory."""

    path: Path
    config: dict
    history: list[dict]
    summary: dict | None
    checkpoint: ckpt_mod.Checkpoint | None
    notes: list[str] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return str((self.config.get("strategy") or {}).get("name", "?"))

    @property
    def label(self) -> str:
        return f"{self.config.get('name') or self.path.name} ({self.strategy})"

    def series(self, *keys: str) -> tuple[np.ndarray, np.ndarray]:
        """(evaluations, values) of a numeric history field (nested keys), where present."""
        xs, ys = [], []
        for rec in self.history:
            value = rec
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            at = rec.get("evaluations", 0)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and (isinstance(at, (int, float)) and not isinstance(at, bool))
            ):
                xs.append(at)
                ys.append(float(value))
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def load_run(path: str | Path) -> RunData:
    run = RunDir(path)
    config = run.read_config()  # refuses a folder that is not a run
    if not isinstance(config, dict):
        raise RunDirError(f"{run.path / 'config.yaml'}: damaged (not a mapping of keys to values)")
    history = run.history()
    notes: list[str] = []
    if run.damaged_history_lines:
        notes.append(f"{run.path}: history.jsonl: {run.damaged_history_lines} damaged line(s)")
    try:
        summary = run.read_summary()
    except RunDirError as exc:
        summary = None
        notes.append(str(exc))
    try:
        checkpoint = ckpt_mod.load_latest(run.checkpoints, warn=notes.append)
    except RunDirError as exc:
        checkpoint = None
        notes.append(str(exc))
    if not history:
        notes.append(f"{run.path}: history.jsonl has no records yet")
    return RunData(run.path, config or {}, history, summary, checkpoint, notes)


# -- plots ------------------------------------------------------------------------------------


def train_score_se(summary: dict, last: dict) -> dict:
    """``best_train_score_se`` where a subset schedule estimated the best train score."""
    se = summary.get("best_train_score_se", last.get("best_train_score_se"))
    return {} if se is None else {"best_train_score_se": se}


def summary_rows(runs: list[RunData]) -> list[dict]:
    from evomerge.interface.status import run_state

    rows = []
    for run in runs:
        last = run.history[-1] if run.history else {}
        summary = run.summary or {}
        metrics = summary.get("metrics") or last.get("metrics") or {}
        metrics = metrics if isinstance(metrics, dict) else {}
        rows.append(
            {
                "run": str(run.path),
                "state": run_state(run.path),
                "strategy": run.strategy,
                "seed": run.config.get("seed"),
                "evaluations": summary.get("evaluations", last.get("evaluations")),
                # one example scored once; None ("–") for a run made before they were counted
                "example_evaluations": summary.get(
                    "example_evaluations", last.get("example_evaluations")
                ),
                "member": summary.get("member", last.get("member")),
                **train_score_se(summary, last),
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "wall_seconds": summary.get("wall_seconds", last.get("wall_seconds")),
                "evaluations_per_second": summary.get("evaluations_per_second"),
            }
        )
    return rows


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


CAPTIONS = {
    "fitness.png": "Best and mean train score of the archive against evaluations.",
    "metrics.png": "Held-out metrics of the reported member (the best train score) over time.",
    "diversity.png": "Diversity diagnostics of the archive recorded in the history.",
    "map_elites.png": "MAP-Elites: grid coverage over time and the elites' fitness per cell.",
    "pareto.png": "Pareto archive: front size over time and the front on two objectives.",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child { text-align: left; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .notes { color: #8a5a00; font-size: 0.9em; }
"""


def write_html(path: Path, runs: list[RunData], images: list[tuple[Path, str]], notes) -> None:
    figures = []
    for image, caption in images:
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(image.name)}">'
            f"<figcaption>{html.escape(caption)} ({html.escape(image.name)})</figcaption>"
            "</figure>"
        )
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>evomerge report</title><style>{STYLE}</style></head><body>"
        f"<h1>evomerge report</h1><p>{len(runs)} run(s).</p>"
        f"<h2>Summary</h2>{_table(summary_rows(runs))}"
        f"<h2>Plots</h2>{''.join(figures)}"
        + (f'<h2>Not shown</h2><ul class="notes">{note_items}</ul>' if notes else "")
        + "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")  # in the report's temporary folder


def make_report(run_dirs: list[str | Path], out: str | Path | None = None) -> dict:
    """Write the plots and ``index.html`` for ``run_dirs``; returns what was written."""
    runs, skipped = [], []
    for p in run_dirs:  # a damaged run is named in the notes; the others are reported
        try:
            runs.append(load_run(p))
        except RunDirError as exc:
            skipped.append(exc)
    if not runs:
        raise skipped[0]
    final = Path(out) if out is not None else (runs[0].path / "report")
    tmp = _report_folder(final)
    try:
        done = _write_report(runs, tmp, [f"damaged, left out: {e}" for e in skipped])
        _swap_into_place(tmp, final)
    except OSError as exc:
        raise RunDirError(
            f"{final}: cannot write the report ({exc.strerror or exc}); nothing was changed: "
            "free disk space or fix permissions",
            exit_code=1,
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "html": final / done["html"].name,
        "images": [final / p.name for p in done["images"]],
        "notes": done["notes"],
    }


#: written into every report folder: the proof that a folder is an earlier report, and of
#: which files, so rebuilding it never removes a file the report did not write
MARKER = ".evomerge-report"


def _report_folder(final: Path) -> Path:
    """The temporary folder the report is written in (renamed into place when complete).

    ``final`` must be missing, empty or an earlier report: a folder holding the marker file
    (:data:`MARKER`) and only the files that marker lists. A report never replaces a folder
    holding anything else, whatever its files look like."""
    check_output_path(final, what="report")
    if final.exists():
        foreign = _not_written_by_a_report(final)
        if foreign is not None:
            raise RunDirError(f"{final}: {foreign}; choose another --out (nothing was changed)")
    tmp = temp_sibling(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise RunDirError(f"{final}: cannot create the report folder ({exc.strerror})") from None
    return tmp


def _not_written_by_a_report(folder: Path) -> str | None:
    """Why ``folder`` may not be replaced by a new report, or None (empty, or our own)."""
    if folder.is_symlink():
        return "is a symbolic link, not a report folder"
    if not folder.is_dir():
        return "exists and is not a folder"
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not entries:
        return None
    if MARKER not in entries:
        return (
            f"holds files that no evomerge report wrote (e.g. '{entries[0]}'; a report folder "
            f"has a {MARKER} file)"
        )
    try:
        listed = json.loads((folder / MARKER).read_text(encoding="utf-8"))["files"]
        listed = {str(name) for name in listed}
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MARKER} is damaged, so which files the report wrote is unknown"
    extra = [name for name in entries if name != MARKER and name not in listed]
    if extra:
        return f"holds '{extra[0]}', which the earlier report did not write"
    if any(not (folder / name).is_file() or (folder / name).is_symlink() for name in entries):
        return "holds a folder or a link the earlier report did not write"
    return None


def _swap_into_place(tmp: Path, final: Path) -> None:
    """The finished report replaces ``final`` (an earlier report) in one rename."""
    publish(tmp, final, aside=temp_sibling(final, "old"))


def _write_report(runs: list[RunData], out: Path, notes: list[str]) -> dict:
    plt = _pyplot()
    notes = notes + [n for r in runs for n in r.notes]
    images: list[tuple[Path, str]] = []

    def add(path: Path | None, caption: str, missing: str | None = None) -> None:
        if path is not None:
            images.append((path, caption))
        elif missing:
            notes.append(missing)

    add(plot_fitness(runs, out, plt), CAPTIONS["fitness.png"], "fitness: no history records")
    add(plot_metrics(runs, out, plt), CAPTIONS["metrics.png"], "metrics: none recorded")
    for i, run in enumerate(runs):
        name = "archive.png" if len(runs) == 1 else f"archive-{i + 1}.png"
        add(
            plot_archive(run, out, name, plt),
            f"Per-example scores of the archive's members in the newest checkpoint "
            f"of {run.path} (rows: members, best first; columns: examples, easiest first).",
            f"archive heatmap: {run.path} has no checkpoint with per-example scores",
        )
    add(
        plot_diversity(runs, out, plt),
        CAPTIONS["diversity.png"],
        "diversity: no diagnostics in the history of these runs",
    )
    add(
        plot_map_elites(runs, out, plt),
        CAPTIONS["map_elites.png"],
        "MAP-Elites grid: not a MAP-Elites run (no coverage in the history)",
    )
    add(
        plot_pareto(runs, out, plt),
        CAPTIONS["pareto.png"],
        "Pareto front: not a Pareto run (no front_size in the history)",
    )
    page = out / "index.html"
    write_html(page, runs, images, notes)
    files = sorted(p.name for p in out.iterdir())
    marker = {"written_by": "evomerge report", "files": files}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return {"html": page, "images": [p for p, _ in images], "notes": notes}
