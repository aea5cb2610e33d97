"""From a wheel alone: build it, install it into a fresh virtual environment outside the
checkout, and there run the bundled quickstart and an `evomerge init` project's own tests.

To keep it fast the new environment borrows the dependencies already installed here (torch,
Ray, ...) through a .pth line; evomerge itself must come from the wheel (asserted).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import ROOT

SOURCES = ["pyproject.toml", "setup.py", "README.md", "evomerge", "fitness", "configs"]


def run(args, cwd, env, timeout=300):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def local_setuptools() -> bool:
    """Whether this environment can build the wheel itself (no download of a build backend)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if version >= (70, 1):  # bdist_wheel built in
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return version >= (68, 0)


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of the sources (so the build leaves nothing in the checkout)."""
    src = tmp / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy(ROOT / name, src / name)
    isolation = ["--no-build-isolation"] if local_setuptools() else []  # else pip fetches one
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist")]
    run([*cmd, *isolation, str(src)], cwd=tmp, env=os.environ)
    (wheel,) = (tmp / "dist").glob("evomerge-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
               cwd=tmp, env=os.environ).strip()  # fmt: skip
    here = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(site, "_evomerge_test_deps.pth").write_text("\n".join(sorted(here)) + "\n")
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    run([*cmd, "--no-index", str(wheel)], cwd=tmp, env=os.environ)
    return venv


@pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")
def test_the_wheel_alone_runs_the_quickstart_and_an_init_project(tmp_path):
    start = time.perf_counter()
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path, wheel)
    built = time.perf_counter()
    work = tmp_path / "work"
    work.mkdir()
    assert ROOT not in work.resolve().parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv)}
    python, evomerge = str(venv / "bin" / "python"), str(venv / "bin" / "evomerge")

    where = run([python, "-c", "import evomerge, evomerge.fitness.digits as d; "
                 "print(evomerge.__file__); print(d.__file__)"], work, env).split()  # fmt: skip
    for path in map(Path, where):
        assert venv in path.parents and ROOT not in path.parents, path

    run([evomerge, "run", "quickstart", "--set", "budget.evaluations=500", "--out", "qs", "-q"],
        work, env)  # fmt: skip
    summary = json.loads((work / "qs" / "summary.json").read_text())
    assert summary["evaluations"] == 500
    assert summary["metrics"]["train_accuracy"] > 0.15  # 10 classes: chance is 0.1
    assert str(venv) in (work / "qs" / "config.yaml").read_text()  # the wheel's digits.py
    quickstart = time.perf_counter()

    run([evomerge, "init", "my-search"], work, env)
    out = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], work / "my-search", env)
    assert "2 passed" in out.splitlines()[-1]
    done = time.perf_counter()
    print(f"wheel test: build + install {built - start:.1f} s, quickstart "
          f"{quickstart - built:.1f} s, init + its test {done - quickstart:.1f} s")  # fmt: skip
