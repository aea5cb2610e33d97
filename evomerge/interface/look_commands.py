"""The commands that read runs and never search: report, status, ls, config-reference.

``add_look_commands`` adds their parsers to the CLI's subparsers; the CLI passes its shared
``-q/-v`` and epilog helpers in, as for ``evomerge init``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evomerge.core.errors import EvomergeError
from evomerge.core.files import write_atomic
from evomerge.core.out_paths import check_output_path
from evomerge.interface.progress import Progress


def cmd_report(args) -> int:
    """Plots and one self-contained HTML page for one or more run directories."""
    from evomerge.interface.report import make_report

    progress = Progress(quiet=args.quiet)
    progress.message(f"report on {len(args.run_dirs)} run(s)")
    done = make_report(args.run_dirs, args.out)
    if args.verbose:
        for image in done["images"]:
            progress.message(f"wrote {image}")
        for note in done["notes"]:
            progress.message(f"not shown: {note}")
    print(f"report: {done['html']}", flush=True)
    return 0


def cmd_status(args) -> int:
    """Where one run stands: state, progress, best so far, speed, workers, last checkpoint."""
    import json

    from evomerge.interface.status import format_status, painter, run_status

    info = run_status(args.run_dir)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(format_status(info, painter(sys.stdout)))
    return 0


def cmd_ls(args) -> int:
    """The runs under a folder (default populations/) with their state."""
    import json

    from evomerge.interface.status import format_ls, list_runs, painter

    rows = list_runs(args.folder)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_ls(rows, painter(sys.stdout)))
    return 0


def cmd_config_reference(args) -> int:
    """Write (or check) the configuration reference generated from the pydantic models."""
    from evomerge.interface.config_reference import config_reference

    text = config_reference()
    if args.check:
        current = Path(args.out).read_text(encoding="utf-8") if Path(args.out).is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run 'evomerge config-reference'", file=sys.stderr)
            return 1
        return 0
    out = check_output_path(args.out, kind="file", what="reference")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
    except OSError as exc:
        raise EvomergeError(
            f"{out}: cannot write the reference ({exc.strerror or exc}); nothing was changed: "
            "free disk space or fix permissions",
            exit_code=1,
        ) from None
    if not args.quiet:
        print(f"wrote {args.out}", flush=True)
    return 0


def add_look_commands(sub, _verbosity, _epilog) -> None:
    """report, status, ls and config-reference: commands that read, never search."""
    report = sub.add_parser(
        "report",
        help="plots and one self-contained HTML page for one or more runs",
        description="Fitness over evaluations (several runs: mean +/- s.e. per config), held-out "
        "metrics of the reported member, the archive's per-example scores, and the MAP-Elites "
        "grid, Pareto front and diversity diagnostics when the runs have them.",
        epilog=_epilog(
            "examples:\n"
            "  evomerge report populations/quickstart-20260101-120000\n"
            "  evomerge report populations/m2n2-s* populations/ga-s* --out reports/m2n2-vs-ga\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    report.add_argument(
        "--out", metavar="DIR", help="output folder (default: RUN_DIR/report of the first run)"
    )
    _verbosity(report)
    report.set_defaults(func=cmd_report)

    status = sub.add_parser(
        "status",
        help="where a running or stopped run stands",
        description="State (running, finished, stopped), progress, best so far, evaluations/s, "
        "workers and the last checkpoint of one run directory.",
        epilog=_epilog(
            "examples:\n"
            "  evomerge status populations/quickstart-20260101-120000\n"
            "  watch -n 5 evomerge status populations/llm-merge\n"
            "  evomerge status populations/llm-merge --json | jq .best_train_score\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("run_dir", help="a run directory made by 'evomerge run'")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    _verbosity(status, "accepted for symmetry (status prints only the status)")
    status.set_defaults(func=cmd_status)

    ls = sub.add_parser(
        "ls",
        help="list the runs under a folder with their state",
        epilog=_epilog("examples:\n  evomerge ls\n  evomerge ls /shared/populations --json\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument(
        "folder", nargs="?", default="populations", help="folder of runs (default: populations/)"
    )
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    _verbosity(ls, "accepted for symmetry (ls prints only the list)")
    ls.set_defaults(func=cmd_ls)

    ref = sub.add_parser(
        "config-reference",
        help="write docs/config-reference.md from the config models",
        epilog=_epilog(
            "examples:\n  evomerge config-reference\n"
            "  evomerge config-reference --check   # exit 1 when the file is out of date\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ref.add_argument("--out", default="docs/config-reference.md", help="file to write")
    ref.add_argument("--check", action="store_true", help="only check that --out is current")
    _verbosity(ref, "do not print the file written")
    ref.set_defaults(func=cmd_config_reference)
