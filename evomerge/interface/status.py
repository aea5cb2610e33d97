"""``evomerge status`` and ``evomerge ls``: where a run stands, from its run directory alone.

A process that runs a search (``evomerge run`` / ``evomerge resume``) holds ``running.json``
in the run directory: its pid and host, when it started, and a heartbeat refreshed every few
seconds with the evaluations done, the recent evaluations/s and the workers. It removes the
file when it ends, however it ends (a kill -9 leaves it behind with a dead pid). So a run is

* ``running``: the ``flock`` on ``run.lock`` is held (see :meth:`RunDir.writer`; a lock of a
  dead process is released by the kernel, whatever its pid now is), or ``running.json`` names
  another host (e.g. a cluster head writing to shared storage) with a fresh heartbeat;
* ``finished``: not running, and ``summary.json`` exists (the run reached its budget);
* ``stopped``: neither (interrupted, killed, crashed): ``evomerge resume`` continues it.
"""

from __future__ import annotations

import time
from pathlib import Path

from evomerge.core.errors import RunDirError
from evomerge.core.files import is_locked
from evomerge.interface.progress import colour_enabled
from evomerge.run import checkpoint as ckpt_mod
from evomerge.run.heartbeat import LOCK, lock_is_live, read_lock
from evomerge.run.rundir import CONFIG, RUN_LOCK, SUMMARY, RunDir

ANSI = {"green": "32", "blue": "34", "yellow": "33", "red": "31", "bold": "1"}


def painter(stream):
    """``paint(text, style)``: ANSI colour on a terminal without NO_COLOR, else the text."""
    if not colour_enabled(stream):
        return lambda text, style="": text
    return lambda text, style="": f"\033[{ANSI[style]}m{text}\033[0m" if style in ANSI else text


def run_state(path: str | Path) -> str:
    """``running``, ``finished`` or ``stopped`` (see the module docstring)."""
    path = Path(path)
    if lock_is_live(read_lock(path), is_locked(path / RUN_LOCK)):
        return "running"
    if (path / SUMMARY).is_file():
        return "finished"
    return "stopped"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _rate(value) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}/s" if value >= 10 else f"{value:.2g}/s"


def run_status(path: str | Path) -> dict:
    """Everything ``evomerge status`` shows, as a dict (also what ``--json`` prints).

    A run file of the wrong shape (valid JSON or YAML holding something else) is one line."""
    try:
        return _run_status(path)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise RunDirError(
            f"{path}: damaged run files ({type(exc).__name__}: {str(exc)[:120]}); 'evomerge "
            "resume' may still work from its checkpoints"
        ) from None


def _run_status(path: str | Path) -> dict:
    run = RunDir(path)
    config = run.read_config() or {}
    if not isinstance(config, dict):
        raise RunDirError(f"{run.path / CONFIG}: damaged (not a mapping of keys to values)")
    damaged: list[str] = []
    history = run.history()
    if run.damaged_history_lines:
        damaged.append(f"history.jsonl: {run.damaged_history_lines} damaged line(s) skipped")
    last = history[-1] if history else {}
    lock = read_lock(run.path)
    if (run.path / LOCK).is_file() and lock is None:
        damaged.append(f"{LOCK}: damaged (ignored)")
    state = run_state(run.path)
    try:
        summary = run.read_summary()
    except RunDirError as exc:
        summary = None
        damaged.append(str(exc).replace(f"{run.path}/", "", 1))
    budget = _budget(config, "evaluations", damaged)
    example_budget = _budget(config, "example_evaluations", damaged)
    ckpts = ckpt_mod.list_checkpoints(run.checkpoints)
    last_ckpt = None
    if ckpts:
        newest = ckpts[-1]
        last_ckpt = {
            "path": str(newest),
            "evaluations": int(newest.name),
            "written": newest.stat().st_mtime,
        }
    live = lock if state == "running" else None
    done = max(
        int(last.get("evaluations", 0)),
        int(live.get("evaluations", 0)) if live else 0,
        last_ckpt["evaluations"] if last_ckpt else 0,
    )
    if summary:
        done = int(summary.get("evaluations", done))
    examples = _examples_done(summary, live, last)
    rate = None
    if live and live.get("evaluations_per_second"):
        rate = float(live["evaluations_per_second"])
    elif summary and summary.get("evaluations_per_second"):
        rate = float(summary["evaluations_per_second"])
    elif len(history) >= 2:
        a, b = history[-2], history[-1]
        dt = b.get("wall_seconds", 0) - a.get("wall_seconds", 0)
        if dt > 0:
            rate = (b.get("evaluations", 0) - a.get("evaluations", 0)) / dt
    out = {
        "run": str(run.path),
        "name": config.get("name"),
        "state": state,
        "strategy": (config.get("strategy") or {}).get("name"),
        "evaluations": done,
        "budget": budget,
        "example_evaluations": examples,
        "example_budget": example_budget,
        "progress": _progress(done, budget, examples, example_budget),
        "best_train_score": last.get("best_train_score"),
        # the standard error where a subset schedule estimates it (absent: every example)
        "best_train_score_se": (summary or {}).get(
            "best_train_score_se", last.get("best_train_score_se")
        ),
        "member": (summary or {}).get("member", last.get("member")),
        "metrics": (summary or {}).get("metrics", last.get("metrics") or {}),
        "evaluations_per_second": rate,
        "last_checkpoint": last_ckpt,
        "evaluator": (config.get("evaluator") or {}).get("kind", "local"),
        "workers": (live or {}).get("workers", (config.get("evaluator") or {}).get("workers", 1)),
    }
    if damaged:
        out["damaged"] = damaged
        if state != "running":
            out["state"] = "damaged"
    if live:
        out["pid"], out["host"] = live.get("pid"), live.get("host")
        out["heartbeat"] = live.get("updated")
        if rate and budget > done:
            out["eta_seconds"] = (budget - done) / rate
    elif lock:  # left behind by a process that died without cleaning up
        out["stale_lock"] = {"pid": lock.get("pid"), "host": lock.get("host")}
    return out


def _budget(config: dict, key: str, damaged: list[str]) -> int:
    """``budget.<key>`` of a run's config (0: not given)."""
    try:
        return int((config.get("budget") or {}).get(key) or 0)
    except (TypeError, ValueError, AttributeError):
        damaged.append(f"config.yaml: budget.{key} is not a number")
        return 0


def _examples_done(summary, live, last) -> int | None:
    """Example evaluations so far, from the newest record that has them (None: a run made
    before they were counted)."""
    for source in (summary, live, last):
        value = (source or {}).get("example_evaluations")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _progress(done, budget, examples, example_budget) -> float | None:
    """The larger fraction of the budgets spent (the run stops at the first one reached)."""
    parts = []
    if budget:
        parts.append(done / budget)
    if example_budget and examples is not None:
        parts.append(examples / example_budget)
    return max(parts) if parts else None


def format_status(info: dict, paint=None) -> str:
    paint = paint or (lambda text, style="": text)
    colours = {"running": "green", "finished": "blue", "stopped": "yellow", "damaged": "red"}
    pct = f" ({100 * info['progress']:.0f}%)" if info.get("progress") is not None else ""
    lines = [
        f"run          {info['run']}",
        f"state        {paint(info['state'], colours.get(info['state'], ''))}"
        + (f" (pid {info['pid']} on {info['host']})" if info.get("pid") else ""),
        f"strategy     {info.get('strategy') or '–'}",
        f"progress     {info['evaluations']}"
        + (f"/{info['budget']}" if info.get("budget") else "")
        + f" evaluations{pct}",
    ]
    if info.get("example_evaluations") is not None or info.get("example_budget"):
        spent = info.get("example_evaluations")
        lines.append(
            f"examples     {'–' if spent is None else spent}"
            + (f"/{info['example_budget']}" if info.get("example_budget") else "")
            + " example evaluations (one example scored once)"
        )
    best = info.get("best_train_score")
    best = best if isinstance(best, (int, float)) else None
    metrics = ", ".join(
        f"{k} {v:.4f}" for k, v in (info.get("metrics") or {}).items() if isinstance(v, float)
    )
    se = info.get("best_train_score_se")
    estimate = f" ± {se:.4f} (subset estimate)" if isinstance(se, (int, float)) else ""
    lines.append(
        f"best so far  {'–' if best is None else f'{best:.4f}{estimate}'} train"
        + (f" (member {info['member']}: {metrics})" if info.get("member") is not None else "")
    )
    lines.append(f"speed        {_rate(info.get('evaluations_per_second'))}")
    if info.get("eta_seconds") is not None:
        lines.append(f"ETA          {info['eta_seconds'] / 60:.1f} min")
    workers = f"{info.get('workers')} ({info.get('evaluator')})"
    lines.append(f"workers      {workers}")
    ck = info.get("last_checkpoint")
    lines.append(
        "checkpoint   "
        + (
            f"{ck['evaluations']} evaluations, {_age(time.time() - ck['written'])} ({ck['path']})"
            if ck
            else "none"
        )
    )
    for problem in info.get("damaged", []):
        lines.append(f"damaged      {problem}")
    if info.get("stale_lock"):
        lines.append(
            f"note         a process (pid {info['stale_lock']['pid']}) left {LOCK} behind and "
            f"is gone; continue with 'evomerge resume {info['run']}'"
        )
    elif info["state"] == "stopped":
        lines.append(f"note         continue with 'evomerge resume {info['run']}'")
    return "\n".join(lines)


def is_run(path: Path) -> bool:
    """A run directory: its config and at least a history or a checkpoints folder."""
    return (path / CONFIG).is_file() and (
        (path / "history.jsonl").is_file() or (path / "checkpoints").is_dir()
    )


def list_runs(root: str | Path) -> list[dict]:
    """Run directories directly under ``root`` (or ``root`` itself), newest first."""
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such folder")
    dirs = [root] if is_run(root) else [p for p in root.iterdir() if p.is_dir()]
    rows = []
    for path in dirs:
        if not is_run(path):
            continue
        try:
            info = run_status(path)
        except Exception as exc:  # noqa: BLE001 - one damaged run must not hide the others
            info = _damaged_row(path, exc)
        info["modified"] = max(
            (p.stat().st_mtime for p in (path / "history.jsonl", path / CONFIG) if p.exists()),
            default=0.0,
        )
        rows.append(info)
    rows.sort(key=lambda r: r["modified"], reverse=True)
    return rows


def _damaged_row(path: Path, exc: Exception) -> dict:
    why = str(exc) if isinstance(exc, RunDirError) else f"{type(exc).__name__}: {exc}"
    return {
        "run": str(path),
        "state": "damaged",
        "strategy": None,
        "evaluations": 0,
        "budget": 0,
        "best_train_score": None,
        "damaged": [why[:200]],
    }


def format_ls(rows: list[dict], paint=None) -> str:
    paint = paint or (lambda text, style="": text)
    if not rows:
        return "no runs"
    colours = {"running": "green", "finished": "blue", "stopped": "yellow", "damaged": "red"}
    width = max(len(r["run"]) for r in rows)
    lines = [f"{'RUN':<{width}}  {'STATE':<8}  {'STRATEGY':<10}  {'EVALUATIONS':>15}  BEST"]
    for r in rows:
        best = r.get("best_train_score")
        best = best if isinstance(best, (int, float)) else None
        evals = f"{r['evaluations']}/{r['budget']}"
        state = paint(f"{r['state']:<8}", colours.get(r["state"], ""))
        lines.append(
            f"{r['run']:<{width}}  {state}  {r.get('strategy') or '–':<10}  {evals:>15}  "
            + ("–" if best is None else f"{best:.4f}")
        )
    return "\n".join(lines)
