"""CLI habits: --help with examples and exit codes on every command, --quiet/--verbose,
--set overrides visible in the resolved config, colours only on a terminal without NO_COLOR."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import yaml
from conftest import base_config

from evomerge.interface.cli import build_parser, main
from evomerge.interface.progress import colour_enabled
from evomerge.interface.status import painter


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_the_commands_the_docs_promise_exist():
    assert {"run", "resume", "merge", "export", "report", "status", "ls"} <= set(subcommands())


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_command_has_help_with_examples_and_exit_codes(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"evomerge {command}" in text
    assert "exit codes:" in text and "130" in text
    assert "--quiet" in text and "--verbose" in text


def test_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and "NO_COLOR" in text
    for command in ("run", "status", "ls", "report"):
        assert f"evomerge {command}" in text


def test_quiet_and_verbose_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as done:
        main(["status", "x", "-q", "-v"])
    assert done.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_verbose_shows_the_resolved_config_with_overrides(tmp_path, write_config, capsys):
    cfg = write_config(base_config(budget={"evaluations": 20}))
    out = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(out), "--set", "seed=7", "--set", "batch=2", "-v"]
    assert main(args) == 0
    err = capsys.readouterr().err
    shown = err.split("[evomerge] resolved config:\n", 1)[1]
    assert "  seed: 7\n" in shown and "  batch: 2\n" in shown
    assert "# --set seed=7" in shown and "# --set batch=2" in shown
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["seed"] == 7 and written["batch"] == 2  # what --verbose showed is the file


def test_quiet_prints_only_the_result_line(tmp_path, write_config, capsys):
    cfg = write_config(base_config(budget={"evaluations": 20}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.strip().startswith("results: ")


def test_verbose_errors_carry_a_traceback(tmp_path, capsys):
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["status", str(tmp_path / "missing"), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "evomerge: error:" in err


def test_colours_only_on_a_terminal_without_no_color(monkeypatch, tmp_path):
    leader, follower = os.openpty()  # a real terminal
    tty = os.fdopen(follower, "w")
    try:
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setenv("TERM", "xterm")
        assert colour_enabled(tty)
        assert painter(tty)("running", "green") == "\033[32mrunning\033[0m"
        monkeypatch.setenv("NO_COLOR", "1")
        assert not colour_enabled(tty)
        assert painter(tty)("running", "green") == "running"
    finally:
        tty.close()
        os.close(leader)
    with open(tmp_path / "file.txt", "w") as plain:  # not a terminal
        monkeypatch.delenv("NO_COLOR", raising=False)
        assert not colour_enabled(plain)


def test_exit_code_for_a_missing_config_from_a_real_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "evomerge", "run", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("evomerge: error:") and "\033[" not in done.stderr
