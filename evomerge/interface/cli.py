"""The ``evomerge`` command: run, resume and export searches; merge checkpoints once.

Exit codes: 0 success; 1 the run failed while working (a plug-in raised, a worker died);
2 bad input (config, arguments, files, run directory); 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from evomerge import __version__
from evomerge.core.errors import EvomergeError, RunDirError
from evomerge.core.out_paths import check_output_path
from evomerge.interface.init_project import add_init_command
from evomerge.interface.look_commands import add_look_commands
from evomerge.interface.progress import Progress
from evomerge.run import loop
from evomerge.run.config import join_cluster, load_config, validate
from evomerge.run.rundir import RunDir
from evomerge.run.tracking import Trackers

EXIT_CODES = """exit codes:
  0    done
  1    the run failed while working (a plug-in raised, a worker died)
  2    bad input (config, arguments, files, run directory)
  130  interrupted (Ctrl-C or SIGTERM; a search writes a checkpoint first)
"""

EXAMPLES_RUN = """examples:
  evomerge run configs/quickstart.yaml
  evomerge run quickstart                       # a bundled config by name, from any folder
  evomerge run configs/m2n2_digits.yaml --out populations/m2n2-s1 --set seed=1
  evomerge run configs/m2n2_digits.yaml --set evaluator.kind=ray --set evaluator.workers=2
  evomerge run configs/quickstart.yaml --set tracking.tensorboard=true --verbose

The resolved config (overrides applied) is written to RUN_DIR/config.yaml; --verbose also
prints it, with the overrides, before the search starts.
"""

EXAMPLES_MAIN = """examples:
  evomerge run configs/quickstart.yaml          # a search; prints its run directory
  evomerge status populations/quickstart-20260101-120000
  evomerge ls                                   # every run under populations/ and its state
  evomerge report populations/quickstart-20260101-120000   # plots + index.html
  evomerge resume populations/quickstart-20260101-120000
  evomerge export populations/quickstart-20260101-120000 --out merged/best
  evomerge init my-search                       # a starter project: config, plug-in, test

'evomerge COMMAND --help' shows each command's options and examples.
Colours: on a terminal only, and never when NO_COLOR is set.
"""


def _show_config(cfg, overrides: list[str]) -> None:
    """--verbose: the resolved config as it will be written to RUN_DIR/config.yaml."""
    import yaml

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()
    lines = ["[evomerge] resolved config:"]
    lines += [f"  {line}" for line in text.splitlines()]
    for item in overrides:
        lines.append(f"  # --set {item}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _default_out(config_path: str, name: str | None) -> Path:
    stem = name or Path(config_path).stem
    return Path("populations") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _finish(search, progress: Progress) -> int:
    from evomerge.run.heartbeat import RunLock

    try:
        with RunLock(search):  # running.json: what 'evomerge status' and 'ls' read
            summary = search.loop()
    finally:
        search.evaluator.close()
        if search.trackers is not None:
            search.trackers.close()
    odd = summary.get("nonfinite_metrics", {})
    metrics = ", ".join(
        f"{k} {odd.get(k, 'null')}" if v is None else f"{k} {v:.4f}"
        for k, v in summary["metrics"].items()
    )
    progress.message(
        f"done: {summary['evaluations']} evaluations ({summary['example_evaluations']} "
        f"example evaluations) in {summary['wall_seconds']:.1f} s "
        f"({summary['evaluations_per_second']:.0f}/s); member {summary['member']}: {metrics}"
    )
    try:
        print(f"results: {search.run.path / 'summary.json'}", flush=True)
    except BrokenPipeError:  # e.g. '| head' has exited; the results are written all the same
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_run(args) -> int:
    cfg = load_config(args.config, args.set or [], address=args.address)
    out = Path(args.out) if args.out else _default_out(args.config, cfg.name)
    check_output_path(out, what="run directory")
    from evomerge.runtime.ray_cluster import check_job_out

    check_job_out(out)  # under 'ray job submit' a relative --out lands in Ray's cache
    run = RunDir(out)
    with run.writer(create=True):  # one writer per run directory, before anything is written
        Trackers.open(cfg, out)  # a tracker whose package is missing is bad input: refuse now
        progress = Progress(quiet=args.quiet)
        if args.verbose:
            _show_config(cfg, args.set or [])
        progress.message(f"run {out}: {cfg.strategy.name}, seed {cfg.seed}")
        search = loop.start(cfg, run, progress)
        return _finish(search, progress)


def cmd_resume(args) -> int:
    run = RunDir(args.run_dir)
    run.read_config()  # refuses a folder that is not a run before locking anything in it
    with run.writer(create=False):
        cfg = validate(join_cluster(run.read_config(), args.address), str(run.path / "config.yaml"))
        from evomerge.run.heartbeat import running_elsewhere

        if running_elsewhere(run.path):
            raise RunDirError(
                f"{run.path}: is running now on another host (see 'evomerge status {run.path}'); "
                "stop it first"
            )
        Trackers.open(cfg, run.path)
        progress = Progress(quiet=args.quiet)
        if args.verbose:
            _show_config(cfg, [])
        progress.message(f"fitness plug-in (its code runs now): {cfg.fitness.plugin}")
        search = loop.reopen(run, cfg, progress)
        if args.address:  # joined: a later plain 'resume' goes to the same cluster
            try:
                run.write_config(cfg.to_dict())
            except OSError as exc:
                progress.message(f"the new address is not recorded in config.yaml ({exc.strerror})")
        progress.message(f"resuming {run.path} at {search.state.evaluations} evaluations")
        return _finish(search, progress)


def cmd_merge(args) -> int:
    """One-shot merge from an evomerge or mergekit YAML into a safetensors folder."""
    from evomerge.merge.engine import run_merge
    from evomerge.merge.merge_config import load_merge_config
    from evomerge.run.config import read_yaml

    path = Path(args.config)
    check_output_path(args.out, what="merged model")
    cfg = load_merge_config(path, read_yaml(path))
    progress = Progress(quiet=args.quiet)
    progress.message(f"merge {path} ({cfg.method}) -> {args.out}")
    step = {"next": 0.0}

    def tick(done: int, total: int) -> None:  # a line every 10 % of the tensors
        if done / total >= step["next"]:
            progress.message(f"{done}/{total} tensors")
            step["next"] += 0.1

    summary = run_merge(
        cfg,
        Path(args.out),
        bases=[Path.cwd(), path.resolve().parent],
        progress=tick,
        message=progress.message,
    )
    progress.message(
        f"done: {summary['tensors']} tensors, {summary['bytes_read'] / 1e9:.2f} GB read in "
        f"{summary['wall_seconds']:.1f} s"
    )
    print(f"merged model: {summary['out_dir']}", flush=True)
    return 0


def cmd_export(args) -> int:
    """Write one member of a run as a model folder (safetensors, index, config, recipe)."""
    from evomerge.run.export import export_member

    check_output_path(args.out, what="exported model")
    progress = Progress(quiet=args.quiet)
    progress.message(f"export {args.run_dir} member {args.member} -> {args.out}")
    form = "merged" if args.merged else None
    done = export_member(args.run_dir, args.member, args.out, dtype=args.dtype, form=form)
    print(f"exported member {done['member']}: {done['out_dir']}", flush=True)
    return 0


def _verbosity(parser: argparse.ArgumentParser, quiet_help: str = "no progress output") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="more detail (the resolved config, files written) and a traceback on errors",
    )


def _epilog(examples: str) -> str:
    return examples.rstrip("\n") + "\n\n" + EXIT_CODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomerge",
        description="Evolutionary model fusion: search for the best merge.",
        epilog=_epilog(EXAMPLES_MAIN),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"evomerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="start a search from a config file",
        epilog=_epilog(EXAMPLES_RUN),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", help="YAML config, or a bundled config's name (quickstart, ...)")
    run.add_argument("--out", help="run directory (default: populations/<name>-<time>)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. seed=3"
    )
    run.add_argument(
        "--address",
        metavar="HOST:PORT|auto",
        help="evaluate on an existing Ray cluster (sets evaluator.kind=ray, evaluator.address)",
    )
    _verbosity(run)
    run.set_defaults(func=cmd_run)

    merge = sub.add_parser(
        "merge",
        help="merge checkpoints once, from an evomerge or mergekit YAML",
        epilog=_epilog(
            "examples:\n  evomerge merge configs/merge_example.yaml --out merged/\n"
            "  evomerge merge my-mergekit-recipe.yml --out merged/\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("config", help="merge YAML (evomerge's own, or mergekit's)")
    merge.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    _verbosity(merge)
    merge.set_defaults(func=cmd_merge)

    resume = sub.add_parser(
        "resume",
        help="continue a stopped search from its last checkpoint",
        epilog=_epilog(
            "examples:\n  evomerge resume populations/quickstart-20260101-120000\n"
            "  evomerge resume /shared/populations/llm-merge --address auto\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    resume.add_argument("run_dir", help="a run directory made by 'evomerge run'")
    resume.add_argument(
        "--address",
        metavar="HOST:PORT|auto",
        help="continue on this Ray cluster (e.g. a new one after the old one was lost)",
    )
    _verbosity(resume)
    resume.set_defaults(func=cmd_resume)

    export = sub.add_parser(
        "export",
        help="write a run's member as a model folder (safetensors, config, recipe.yaml)",
        epilog=_epilog(
            "examples:\n"
            "  evomerge export populations/llm-merge --member best --out merged/best\n"
            "  evomerge export populations/llm-merge --member 1234 --out merged/m1234 "
            "--dtype bfloat16\n"
            "  evomerge export populations/adapter-tiny --merged --out merged/adapter-tiny\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run_dir", help="a run directory made by 'evomerge run'")
    export.add_argument("--member", default="best", help="'best' (default) or a member id")
    export.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    export.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="tensor dtype (default: the seeds' dtype where the plug-in knows it, else float32)",
    )
    export.add_argument(
        "--merged",
        action="store_true",
        help="space adapter: write the base with the member's adapter merged in (a model "
        "folder) instead of the adapter folder",
    )
    _verbosity(export)
    export.set_defaults(func=cmd_export)
    add_look_commands(sub, _verbosity, _epilog)
    add_init_command(sub, _verbosity, _epilog)
    return parser


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes of a name (surrogates) escaped,
    so an error line is one line and can always be written."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _stop_on_sigterm(signum, frame):
    """A scheduler's stop (SIGTERM) is handled like Ctrl-C: checkpoint, then exit 130."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return args.func(args)
    except EvomergeError as exc:
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        print(f"evomerge: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("evomerge: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path or a disk no check foresaw: still one line, no traceback
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        where = exc.filename if exc.filename is not None else args.command
        print(
            f"evomerge: error: {printable(str(where))}: {exc.strerror or exc}; check the path, "
            "its permissions and free disk space",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
