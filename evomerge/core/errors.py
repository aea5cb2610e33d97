"""User-facing errors: one line that names the file or field and the fix, and an exit code."""

from __future__ import annotations


class EvomergeError(Exception):
    """An error caused by the user's input or environment, reported as one line.

    ``exit_code`` 2 means bad input (config, arguments, files); 1 means the run failed while
    working (a fitness plug-in raised, a worker died).
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(message.split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(EvomergeError):
    """The config file or a --set override is invalid."""


class PluginError(EvomergeError):
    """A fitness plug-in could not be loaded, or misbehaved while scoring."""

    exit_code = 1


class RunDirError(EvomergeError):
    """A run directory is missing, not a run, or its checkpoints are unusable."""
