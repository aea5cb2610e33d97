"""No code from data: nothing the program reads from disk can run code.

Checkpoints and seeds are safetensors (a JSON header and raw bytes), configs are YAML read
with ``safe_load``, history and manifests are JSON. The planted-payload tests are
tests/test_checkpoint.py (a pickle where the state is expected) and tests/test_bad_input.py
(a pickle where a seed model is expected); this file checks the source itself.
"""

import ast

from conftest import ROOT

SOURCES = sorted(
    p
    for d in ("evomerge", "fitness")
    for p in (ROOT / d).rglob("*.py")
    if "__pycache__" not in str(p)
)
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return ast.unparse(kw.value)
    return None


def test_sources_are_found():
    assert len(SOURCES) > 30


def test_no_unpickling_anywhere_in_the_program():
    problems = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = {n.split(".")[0] for n in names} & UNSAFE_MODULES
                if bad:
                    problems.append(f"{rel}:{node.lineno} imports {bad}")
        for call, func in _calls(tree):
            where = f"{rel}:{call.lineno} {func}"
            if func.endswith("torch.load") and _kw(call, "weights_only") != "True":
                problems.append(f"{where} without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and _kw(call, "allow_pickle") == "True":
                problems.append(f"{where} with allow_pickle=True")
            if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where}: use yaml.safe_load")
            if (
                func.endswith(("read_pickle", "from_pretrained"))
                and _kw(call, "use_safetensors") == "False"
            ):
                problems.append(f"{where} loads pickled weights")
            if _kw(call, "trust_remote_code") not in (None, "False"):
                problems.append(f"{where} may run a model folder's code (trust_remote_code)")
    assert problems == []
