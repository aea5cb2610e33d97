"""Lineage genomes: exact against the dense computation, compact whatever the model size."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.ops import vectors as dense
from evomerge.spaces.lineage import Lineage, SeedGram, combine, dense_reader, slerp, split_slerp

K, N, CHUNK = 3, 10_007, 1_000


@pytest.fixture(scope="module")
def seeds():
    gen = torch.Generator().manual_seed(0)
    base = 0.05 * torch.randn(N, generator=gen)
    # fine-tunes of one base, as merged models are: highly correlated seeds
    return torch.stack([base + 0.01 * torch.randn(N, generator=gen) for _ in range(K)])


@pytest.fixture(scope="module")
def gram(seeds):
    return SeedGram(dense_reader(seeds), N, K, chunk=CHUNK)


def random_lineage(rng: np.random.Generator, regions: int) -> Lineage:
    cuts = np.sort(rng.choice(np.arange(1, N), size=regions - 1, replace=False))
    coeffs = rng.dirichlet(np.ones(K), size=regions)
    return Lineage(np.concatenate([[0], cuts, [N]]), coeffs)


def test_a_seed_materialises_to_itself(seeds):
    for k in range(K):
        assert torch.equal(Lineage.of_seed(k, K, N).materialize(dense_reader(seeds)), seeds[k])


def test_materialize_a_range_equals_the_slice(seeds):
    a = random_lineage(np.random.default_rng(1), 7)
    whole = a.materialize(dense_reader(seeds))
    assert torch.equal(a.materialize(dense_reader(seeds), 1234, 5678), whole[1234:5678])


def test_gram_inner_products_and_angle_match_dense(seeds, gram):
    rng = np.random.default_rng(2)
    a, b = random_lineage(rng, 5), random_lineage(rng, 9)
    da, db = (x.materialize(dense_reader(seeds)) for x in (a, b))
    exact = float(np.dot(da.double().numpy(), db.double().numpy()))
    assert gram.inner(a, b) == pytest.approx(exact, rel=1e-6)
    omega, sin_omega = gram.angle(a, b)
    ref_omega, ref_sin = dense.parent_angle(da, db)
    assert omega == pytest.approx(ref_omega, abs=1e-6)
    assert omega > 0.01  # the test is about a real angle, not the linear fallback


@pytest.mark.parametrize("split", [0, 1, 999, 1000, 5003, N - 1, N])
def test_split_slerp_child_equals_the_dense_child(seeds, gram, split):
    rng = np.random.default_rng(split)
    a, b = random_lineage(rng, 4), random_lineage(rng, 6)
    child = split_slerp(a, b, split, 0.3, gram)
    da, db = (x.materialize(dense_reader(seeds)) for x in (a, b))
    expected = dense.split_slerp(da, db, split, 0.3)
    got = child.materialize(dense_reader(seeds))
    assert (got - expected).abs().max().item() <= 1e-6


def test_many_generations_stay_exact(seeds, gram):
    """An archive evolved in both spaces in lockstep: every member agrees to 1e-6."""
    rng = np.random.default_rng(7)
    lineages = [Lineage.of_seed(k, K, N) for k in range(K)]
    dense_members = [seeds[k].clone() for k in range(K)]
    for _ in range(40):
        i, j = rng.choice(len(lineages), size=2, replace=False)
        split, w = int(rng.integers(0, N + 1)), float(rng.uniform())
        lineages.append(split_slerp(lineages[i], lineages[j], split, w, gram))
        dense_members.append(dense.split_slerp(dense_members[i], dense_members[j], split, w))
    worst = max(
        (lin.materialize(dense_reader(seeds)) - d).abs().max().item()
        for lin, d in zip(lineages, dense_members, strict=True)
    )
    assert worst <= 1e-6
    assert max(x.num_regions for x in lineages) < 40  # only the split points made regions


def test_parallel_parents_interpolate_linearly(seeds, gram):
    a = Lineage.of_seed(0, K, N)
    assert gram.angle(a, a)[1] <= dense.SLERP_EPS
    child = slerp(a, a, 0.37, gram)
    assert np.allclose(child.coeffs, [[1.0, 0.0, 0.0]])
    assert torch.allclose(child.materialize(dense_reader(seeds)), seeds[0], atol=1e-7)


def test_combine_and_canonical_merge_equal_regions():
    a = Lineage(np.array([0, 4, 10]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert a.canonical() == Lineage(np.array([0, 10]), np.array([[1.0, 0.0]]))
    b = Lineage.of_seed(1, 2, 10)
    child = combine(a, b, 6, (1.0, 0.0), (0.0, 1.0))
    assert child == Lineage(np.array([0, 6, 10]), np.array([[1.0, 0.0], [0.0, 1.0]]))


def test_size_does_not_grow_with_the_model(tmp_path):
    rng = np.random.default_rng(0)
    sizes = []
    for n in (10_000, 10**11):  # a 100-billion-parameter model costs what a tiny one does
        cuts = np.sort(rng.choice(np.arange(1, 10_000), size=20, replace=False)) * (n // 10_000)
        lin = Lineage(np.concatenate([[0], cuts, [n]]), rng.dirichlet(np.ones(4), size=21))
        path = tmp_path / f"{n}.safetensors"
        save_file(lin.to_tensors("member."), str(path))
        assert Lineage.from_tensors(load_file(str(path)), "member.") == lin
        sizes.append(path.stat().st_size)
    assert sizes[0] == sizes[1] < 2_000


@pytest.mark.parametrize(
    "bounds,coeffs,match",
    [
        ([1, 10], [[1.0]], "start at 0"),
        ([0, 5, 5, 10], [[1.0], [1.0], [1.0]], "strictly increasing"),
        ([0, 10], [[1.0], [2.0]], "coeffs must be"),
        ([0, 10], [[float("nan")]], "finite"),
    ],
)
def test_invalid_lineages_are_refused(bounds, coeffs, match):
    with pytest.raises(ValueError, match=match):
        Lineage(np.array(bounds), np.array(coeffs))
