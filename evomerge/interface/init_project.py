"""``evomerge init DIR``: a starter project, so a search on your own task is one edit away.

A template (``evomerge/templates/<name>/``) is a config, a fitness plug-in skeleton, its test
and a README. The files are written into a temporary folder beside DIR and moved into place
only when all of them are there, so a refused or failed init leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from evomerge.core.errors import EvomergeError
from evomerge.core.files import publish
from evomerge.core.out_paths import check_output_path

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NEXT_STEPS = "next: cd {dir} && pytest && evomerge run search.yaml --out runs/first"

EXAMPLES = """examples:
  evomerge init my-search                       # a classifier on your data (digits until edited)
  evomerge init lm-merge --template causal-lm   # merge causal LMs, scored on your JSONL task
  evomerge init recipe --template merge         # CMA-ES over a TIES recipe of your experts
  cd my-search && pytest && evomerge run search.yaml --out runs/first
"""


def templates() -> list[str]:
    """Template names, from the folders under evomerge/templates (no list to keep)."""
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _files(template: str) -> list[Path]:
    folder = TEMPLATES / template
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def init_project(directory: str | Path, template: str = "digits", force: bool = False) -> list:
    """Write ``template`` into ``directory``; return the files written (relative paths)."""
    target = Path(directory)
    if template not in templates():
        raise EvomergeError(f"--template: '{template}' is not one of {', '.join(templates())}")
    check_output_path(target, flag="DIR", what="project")
    if target.exists() and not target.is_dir():
        raise EvomergeError(f"{target}: is a file; give a new folder for the project")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise EvomergeError(
            f"{target}: is not empty; give a new folder, or --force to write the "
            f"{template} template's files into it (same-named files are replaced)"
        )
    project = target.resolve().name
    parent = target.resolve().parent  # 'init .' stages beside the folder, not inside it
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{project}.init-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the project's
    try:
        files = _files(template)
        for rel in files:
            text = (TEMPLATES / template / rel).read_text(encoding="utf-8")
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text.replace("{{project}}", project), encoding="utf-8")
        if not target.exists():
            publish(staging, target)  # one rename: the project appears whole
            return files
        _check_writable(target, files)  # every place first: no file replaced, then a refusal
        for rel in files:  # an empty folder, or --force: file by file, each one whole
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            publish(staging / rel, target / rel)
        return files
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_writable(target: Path, files: list[Path]) -> None:
    """Every file of the template can be put in ``target``: no folder or link where a file
    goes, no file where a folder goes, every folder writable. Checked before the first file
    is replaced, so a refused ``--force`` leaves the user's files as they were."""
    for rel in files:
        for depth in range(1, len(rel.parts)):
            folder = target.joinpath(*rel.parts[:depth])
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise EvomergeError(
                    f"{folder}: is a file (or a link) where the template has a folder; move it "
                    "away or choose another folder (nothing was written)"
                )
        out = target / rel
        if out.is_dir() and not out.is_symlink():
            raise EvomergeError(
                f"{out}: is a folder where the template has a file; move it away or choose "
                "another folder (nothing was written)"
            )
        folder = next(p for p in [out.parent, *out.parent.parents] if p.exists())
        if not os.access(folder, os.W_OK | os.X_OK):
            raise EvomergeError(
                f"{folder}: cannot be written (permission denied); fix its permissions or "
                "choose another folder (nothing was written)"
            )


def cmd_init(args) -> int:
    files = init_project(args.dir, args.template, args.force)
    if not args.quiet:
        print(f"wrote {args.dir}/ ({args.template}): {', '.join(str(f) for f in files)}")
        print(NEXT_STEPS.format(dir=args.dir), flush=True)
    return 0


def add_init_command(sub, verbosity, epilog) -> None:
    """The ``init`` sub-command (``verbosity`` and ``epilog`` are the CLI's own helpers)."""
    init = sub.add_parser(
        "init",
        help="start a project: a config, a fitness plug-in skeleton, its test and a README",
        epilog=epilog(EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("dir", metavar="DIR", help="the project folder (new, or empty)")
    init.add_argument(
        "--template",
        default="digits",
        choices=templates(),
        help="digits: a classifier on your data; causal-lm: merge causal LMs on a JSONL task; "
        "merge: CMA-ES over a TIES recipe of experts (default: digits)",
    )
    init.add_argument(
        "--force", action="store_true", help="write into a non-empty DIR (replacing same names)"
    )
    verbosity(init, "do not print the files written")
    init.set_defaults(func=cmd_init)
