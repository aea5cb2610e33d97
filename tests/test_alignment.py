"""Permutation alignment (weight matching): recovering a known permutation, a hand-computed
assignment, and ``align:`` in a merge config (digits experts from separate inits)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import DIGITS
from safetensors.torch import load_file, save_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.ops.alignment import PermutationSpec, align, weight_matching
from evomerge.ops.operators import get_merge_method
from evomerge.ops.statistics import compute, split

T = torch.tensor
# the digits MLP, stored x @ W: hidden units are W1's columns, b1's entries and W2's rows
DIGITS_SPEC = {"hidden": {"layers.0.weight": 1, "layers.0.bias": 0, "layers.1.weight": 0}}


def _mlp(gen):
    """A random 3-layer MLP stored torch's way, (out, in), and its permutation spec."""
    a = {
        "l0.weight": torch.randn(32, 16, generator=gen),
        "l0.bias": torch.randn(32, generator=gen),
        "l1.weight": torch.randn(24, 32, generator=gen),
        "l1.bias": torch.randn(24, generator=gen),
        "l2.weight": torch.randn(10, 24, generator=gen),
        "l2.bias": torch.randn(10, generator=gen),
    }
    spec = {
        "h0": {"l0.weight": 0, "l0.bias": 0, "l1.weight": 1},
        "h1": {"l1.weight": 0, "l1.bias": 0, "l2.weight": 1},
    }
    return a, PermutationSpec(spec)


def _forward(m, x):
    h = torch.relu(x @ m["l0.weight"].T + m["l0.bias"])
    h = torch.relu(h @ m["l1.weight"].T + m["l1.bias"])
    return h @ m["l2.weight"].T + m["l2.bias"]


def test_permuted_hidden_units_are_recovered_exactly():
    gen = torch.Generator().manual_seed(0)
    a, spec = _mlp(gen)
    p0, p1 = torch.randperm(32, generator=gen), torch.randperm(24, generator=gen)
    b = {
        "l0.weight": a["l0.weight"][p0],
        "l0.bias": a["l0.bias"][p0],
        "l1.weight": a["l1.weight"][p1][:, p0],
        "l1.bias": a["l1.bias"][p1],
        "l2.weight": a["l2.weight"][:, p1],
        "l2.bias": a["l2.bias"],
    }
    x = torch.randn(5, 16, generator=gen)
    assert torch.allclose(_forward(a, x), _forward(b, x), atol=1e-5)  # the same function
    perms = weight_matching(a, b, spec)
    # b's unit perms[i] is a's unit i: b[perms] undoes p
    assert torch.equal(p0[perms["h0"]], torch.arange(32))
    assert torch.equal(p1[perms["h1"]], torch.arange(24))
    aligned = align(a, b, spec)
    assert all(torch.equal(aligned[n], a[n]) for n in a)
    # aligning a different model keeps its function, changes its parameters
    c, _ = _mlp(torch.Generator().manual_seed(1))
    moved = align(a, c, spec)
    assert torch.allclose(_forward(moved, x), _forward(c, x), atol=1e-5)
    assert not torch.equal(moved["l0.weight"], c["l0.weight"])


def test_one_assignment_by_hand():
    """Hidden rows (1, 0), (0, 1) against (0.1, 0.9), (0.8, 0.3): the inner products are
    [[0.1, 0.8], [0.9, 0.3]], so unit 0 takes the other's unit 1 (0.8 + 0.9 = 1.7 > 0.4)."""
    spec = PermutationSpec({"h": {"w": 0}})
    perms = weight_matching(
        {"w": T([[1.0, 0.0], [0.0, 1.0]])}, {"w": T([[0.1, 0.9], [0.8, 0.3]])}, spec
    )
    assert perms["h"].tolist() == [1, 0]


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="already permuted"):
        PermutationSpec({"a": {"w": 0}, "b": {"w": 0}})
    spec = PermutationSpec({"h": {"w": 0, "v": 1}})
    with pytest.raises(ValueError, match="axis 1 has 3 entries"):
        spec.sizes({"w": (2, 4), "v": (5, 3)})
    with pytest.raises(ValueError, match="no tensor 'v'"):
        spec.sizes({"w": (2, 4)})


# --- align: in evomerge merge ------------------------------------------------------------------


@pytest.fixture(scope="module")
def separate_init(tmp_path_factory):
    """The weak pre-trained digits pair (10 steps from separate inits) as safetensors files."""
    root = tmp_path_factory.mktemp("align")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(2, 0)
    layout = digits.param_layout()
    for name, flat in zip(("low", "high"), seeds, strict=True):
        save_file(
            {n: t.contiguous() for n, t in split(flat, layout).items()},
            root / f"{name}.safetensors",
        )
    return root, digits, [split(s, layout) for s in seeds]


def _config(root, method, align, **extra):
    cfg = {
        "method": method,
        "models": [
            {"path": str(root / "low.safetensors"), "params": {"weight": 1.0}},
            {"path": str(root / "high.safetensors"), "params": {"weight": 1.0}},
        ],
        "align": align,
        **extra,
    }
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_merge_config_aligns_before_the_method(separate_init):
    root, digits, (low, high) = separate_init
    out = root / "linear"
    path = _config(root, "linear", {"permutations": DIGITS_SPEC})
    assert main(["merge", str(path), "--out", str(out), "-q"]) == 0
    merged = load_file(out / "model.safetensors")
    moved = align(low, high, PermutationSpec(DIGITS_SPEC))
    assert not torch.equal(moved["layers.0.weight"], high["layers.0.weight"])
    for name in low:
        assert torch.allclose(merged[name], (low[name] + moved[name]) / 2, atol=1e-7), name


def test_merge_config_aligns_the_statistics_too(separate_init):
    """RegMean over aligned models = RegMean with statistics taken on the aligned models."""
    root, digits, (low, high) = separate_init
    stats = {"plugin": DIGITS, "examples": ["0-4", "5-9"], "limit": 30, "cache": str(root / "c")}
    path = _config(root, "regmean", {"permutations": DIGITS_SPEC}, statistics=stats)
    out = root / "regmean"
    assert main(["merge", str(path), "--out", str(out), "-q"]) == 0
    merged = load_file(out / "model.safetensors")
    layout = digits.param_layout()
    moved = align(low, high, PermutationSpec(DIGITS_SPEC))
    groups = digits.example_groups()
    pair = [low, moved]
    grams = [
        compute(
            digits, "gram", torch.cat([m[n].reshape(-1) for n, _ in layout]), T(groups[g][:30]), 1
        )
        for m, g in zip(pair, ["0-4", "5-9"], strict=True)
    ]
    regmean = get_merge_method("regmean")
    for name, _ in layout:
        stat = [g.get(name) for g in grams]
        expected = regmean(None, [m[name] for m in pair], None, None, None, statistics=stat)
        assert torch.allclose(merged[name], expected, atol=1e-4), name


def test_bad_align_is_one_line(separate_init, capsys):
    root, _, _ = separate_init
    cases = [
        ({"permutations": {"h": {"nope.weight": 0}}}, "has no tensor 'nope.weight'"),
        ({"reference": 2, "permutations": DIGITS_SPEC}, "align.reference: 2 but there are 2"),
        (
            {"permutations": {"h": {"layers.0.weight": 0, "layers.0.bias": 0}}},
            "another tensor of 'h' has 256",
        ),
        ({"permutations": {"a": {"w": 0}, "b": {"w": 0}}}, "already permuted"),
    ]
    for align_spec, message in cases:
        capsys.readouterr()
        path = _config(root, "linear", align_spec)
        code = main(["merge", str(path), "--out", str(root / "bad"), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert message in err and len(err.splitlines()) == 1, err
        assert not (root / "bad").exists()
