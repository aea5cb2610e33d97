"""Progress on the terminal: a live bar on a TTY, plain lines otherwise, nothing with --quiet."""

from __future__ import annotations

import os
import sys
import time


def colour_enabled(stream) -> bool:
    """Colours only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_rate(rate: float) -> str:
    """Evaluations per second with the digits that matter (an LLM run does < 1/s)."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Evaluations done, evaluations/s, best train score and ETA, and the example evaluations
    (one training example scored once) spent so far.

    ``best`` is passed as a callable so it is computed only when a line is drawn. ``unit``:
    what ``done`` and ``total`` count (``example evaluations`` when that is the only budget).
    """

    def __init__(self, stream=None, quiet: bool = False, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self._bar = None

    def start(self, total: int, done: int, label: str, unit: str = "evaluations") -> None:
        self.total, self.done0, self.t0, self.last = total, done, time.perf_counter(), 0.0
        self.unit = unit
        if self.quiet:
            return
        self.message(f"{label}; {done}/{total} {unit} done")
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"[bold]{unit}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[rate]}/s  best {task.fields[best]:.4f}"),
                TextColumn("{task.fields[examples]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream, no_color=not colour_enabled(self.stream)),
                transient=True,
            )
            self._task = self._bar.add_task(
                "run", total=total, completed=done, rate="0", best=0.0, examples=""
            )
            self._bar.start()

    def update(self, done: int, best, examples: int | None = None) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        if now - self.last < self.interval and done < self.total:
            return
        self.last = now
        rate = (done - self.done0) / max(now - self.t0, 1e-9)
        best_value = best() if callable(best) else best
        spent = "" if examples is None or self.unit != "evaluations" else f"{examples} examples"
        if self._bar is not None:
            try:
                self._bar.update(
                    self._task,
                    completed=done,
                    rate=_fmt_rate(rate),
                    best=best_value,
                    examples=spent,
                )
            except BrokenPipeError:
                self._reader_gone()
        else:
            eta = (self.total - done) / rate if rate > 0 else 0.0
            pct = 100.0 * done / self.total
            self.message(
                f"{done}/{self.total} {self.unit} ({pct:.0f}%)  {_fmt_rate(rate)}/s  "
                f"best train {best_value:.4f}  ETA {_fmt_eta(eta)}"
                + (f"  {spent} scored" if spent else "")
            )

    def message(self, text: str) -> None:
        if self.quiet:
            return
        try:
            if self._bar is not None:
                self._bar.console.print(text)
            else:
                print(f"[evomerge] {text}", file=self.stream, flush=True)
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        """Whoever read our output (``| head``) has gone; the search itself goes on."""
        self.quiet, self._bar = True, None
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())  # no second error when Python exits
        except (OSError, AttributeError, ValueError):
            pass

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
