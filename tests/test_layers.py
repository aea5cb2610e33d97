"""The package's layers hold: import-linter's contract from pyproject.toml is kept, no two of
evomerge's packages import each other (directly or round a cycle), and ``evomerge.core``
imports nothing else of evomerge."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "evomerge"


def test_the_layers_contract_of_pyproject_is_kept(tmp_path, capsys):
    from importlinter import cli as importlinter_cli  # the dev extra has it

    code = importlinter_cli.lint_imports(
        config_filename=str(ROOT / "pyproject.toml"), cache_dir=str(tmp_path / "cache")
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "evomerge layers KEPT" in out


def test_the_contract_check_fails_on_an_import_against_the_layers(tmp_path, capsys, monkeypatch):
    """The same check on a two-layer package whose lower layer imports the upper one."""
    from importlinter import cli as importlinter_cli

    pkg = tmp_path / "layered"
    for sub, text in (("low", "from layered.high import x\n"), ("high", "x = 1\n")):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text(text)
    (pkg / "__init__.py").write_text("")
    config = tmp_path / "contract.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "layered"\n\n'
        '[[tool.importlinter.contracts]]\nname = "layered layers"\ntype = "layers"\n'
        'layers = ["layered.high", "layered.low"]\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code = importlinter_cli.lint_imports(
        config_filename=str(config), cache_dir=str(tmp_path / "cache")
    )
    out = capsys.readouterr().out
    assert code == 1 and "layered layers BROKEN" in out, out
    assert "layered.low -> layered.high" in out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The evomerge modules ``path`` imports, anywhere in it (functions included), relative
    imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m == "evomerge" or m.startswith("evomerge.")}


def _package_of(module: str) -> str:
    """``evomerge.<package>`` of a module (``evomerge`` itself for the top-level files)."""
    return ".".join(module.split(".")[:2])


def _exists(package: str) -> bool:
    """A package or module of evomerge (not a name imported from one: ``evomerge.Fitness``)."""
    where = ROOT / package.replace(".", "/")
    return where.is_dir() or where.with_suffix(".py").is_file()


def package_graph() -> dict[str, set[str]]:
    """Package -> the other evomerge packages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "templates" in path.relative_to(PACKAGE).parts:  # files for a user's project
            continue
        source = _package_of(_module_name(path))
        targets = {_package_of(m) for m in _imports(path)} - {source}
        graph.setdefault(source, set()).update(t for t in targets if _exists(t))
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_evomerge_packages():
    graph = package_graph()
    assert {"evomerge.core", "evomerge.tensors", "evomerge.run"} <= set(graph)
    assert "evomerge.core" in graph["evomerge.tensors"]  # the walk does see the imports
    found = cycle_in(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_core_imports_nothing_else_of_evomerge():
    bad = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for module in sorted(_imports(path)):
            if not (module == "evomerge.core" or module.startswith("evomerge.core.")):
                bad.append(f"{path.relative_to(ROOT)}: imports {module}")
    assert not bad, "\n".join(bad)
