"""Output paths checked before anything is written, so a path the system cannot take is one line.

Every command that writes (``run``, ``merge``, ``export``, ``report``, ``init``,
``config-reference``) passes its output path here first: a name that is not UTF-8 (it could not
be recorded in JSON or shown), a name or a whole path past the system's limits, a parent that
is a file or a dangling symbolic link, a parent that cannot be written, or a folder where a
file is expected (and a file where a folder is expected) are refused before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from evomerge.core.errors import EvomergeError

#: Linux's limits: one name, and a whole path handed to the kernel
NAME_MAX = 255
PATH_MAX = 4096


def check_output_path(
    path: str | Path, flag: str = "--out", kind: str = "folder", what: str = "output"
) -> Path:
    """``path`` when a ``kind`` ("folder" or "file") can be written there; else one line.

    An existing ``path`` itself is the caller's to judge (empty folder, earlier output, a file
    where a folder is wanted, ...), except a dangling link, or a folder where a file is wanted.
    ``what`` names the output in messages ("run directory", "report", ...).
    """
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = os.fsencode(text)[: exc.start + 8]
        raise EvomergeError(
            f"{flag}: the path {raw!r}... is not valid UTF-8; choose a UTF-8 name"
        ) from None
    path = Path(text)
    if not text:
        raise EvomergeError(f"{flag}: an empty path; give a {kind}")
    long = next((p for p in path.parts if len(p.encode()) > NAME_MAX), None)
    if long is not None:
        raise EvomergeError(
            f"{flag}: cannot create the {what} (File name too long: '{long[:24]}...' is "
            f"{len(long.encode())} bytes, more than the {NAME_MAX} a file system allows); "
            "choose a shorter name"
        )
    full = len(os.fsencode(os.path.abspath(text)))
    if full >= PATH_MAX - NAME_MAX:  # room for the temporary names written beside it
        raise EvomergeError(
            f"{flag}: cannot create the {what} (File name too long: the path is {full} bytes, "
            f"more than the {PATH_MAX - NAME_MAX} this system leaves for it); choose a shorter "
            "path"
        )
    if path.is_symlink() and not path.exists():
        raise EvomergeError(
            f"{path}: is a symbolic link to '{os.readlink(path)}', which does not exist; "
            f"choose another {flag} or create its target"
        )
    if kind == "file" and path.is_dir():
        raise EvomergeError(f"{path}: is a folder, not a file; choose another {flag}")
    _check_parents(path, flag, what)
    return path


def _check_parents(path: Path, flag: str, what: str) -> None:
    """The nearest existing folder above the output: a folder, reachable, writable."""
    parent = path.absolute().parent
    for above in [parent, *parent.parents]:
        if above.is_symlink() and not above.exists():
            raise EvomergeError(
                f"{above}: is a symbolic link to '{os.readlink(above)}', which does not exist; "
                f"create its target or choose another {flag}"
            )
        if not above.exists():
            continue
        if not above.is_dir():
            raise EvomergeError(f"{above}: is a file, not a folder; choose another {flag}")
        if not os.access(above, os.W_OK | os.X_OK):
            raise EvomergeError(
                f"{path}: cannot create the {what} (Permission denied); {above} cannot be "
                f"written: fix its permissions or choose another {flag}"
            )
        return
