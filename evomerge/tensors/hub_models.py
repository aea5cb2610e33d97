"""Hugging Face ids (``org/name``, ``org/name@revision``) as model folders, from the local cache.

Nothing is downloaded here: an id resolves to the snapshot folder huggingface_hub's cache
already holds (``models--org--name/snapshots/<commit>/``, the revision read from
``refs/<revision>`` unless it is a commit hash itself). A run pins each id to the commit it
resolved to (``org/name@<commit>``), so a resume and every Ray worker read the same weights.
A missing snapshot is one line naming the repo, the revision and the command that fetches it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from evomerge.core.errors import EvomergeError

#: ``org/name`` with an optional ``@revision`` (a branch, tag or commit hash).
HUB_ID = re.compile(r"^([A-Za-z0-9][\w.-]*)/([\w.-]+)(?:@([\w./-]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hub id (it may also be a relative path on disk)."""
    return HUB_ID.match(str(text)) is not None and ".." not in str(text)


def cache_dir() -> Path:
    """huggingface_hub's cache folder, read from the environment now (not at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def resolve_hub(text: str) -> tuple[Path, str]:
    """The cached snapshot folder of Hub id ``text`` and its commit hash."""
    m = HUB_ID.match(str(text))
    if m is None:
        raise EvomergeError(f"model '{text}': not a Hub id; write org/name or org/name@revision")
    repo, revision = f"{m.group(1)}/{m.group(2)}", m.group(3) or "main"
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise EvomergeError(
            f"model '{text}': Hub ids need huggingface_hub; pip install huggingface_hub"
        ) from None
    folder = None
    try:
        folder = Path(
            snapshot_download(
                repo, revision=revision, cache_dir=str(cache_dir()), local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        pass
    if folder is None or not folder.is_dir():
        raise EvomergeError(
            f"model '{text}': repo {repo} at revision {revision} is not in the Hugging Face "
            f"cache ({cache_dir()}) and evomerge never downloads; fetch it first: "
            f"huggingface-cli download {repo} --revision {revision}"
        )
    commit = folder.name
    if not _COMMIT.match(commit):
        raise EvomergeError(f"model '{text}': {folder} is not a snapshot folder of the Hub cache")
    return folder, commit


def pinned(text: str) -> str:
    """``org/name@<commit>``: the id with its revision replaced by the commit it resolves to."""
    m = HUB_ID.match(str(text))
    _, commit = resolve_hub(text)
    return f"{m.group(1)}/{m.group(2)}@{commit}"
