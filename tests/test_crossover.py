"""Split-point SLERP crossover against hand-computed spherical interpolation."""

import math

import numpy as np
import pytest
import torch

from evomerge.ops.vectors import mutate, slerp, split_slerp

A = torch.tensor([1.0, 2.0, 3.0, 4.0, -1.0])
B = torch.tensor([4.0, -3.0, 2.0, 1.0, 0.5])


def hand_slerp(a, b, t):
    """Textbook SLERP in float64 with the angle of the whole vectors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    omega = math.acos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


@pytest.mark.parametrize("w", [0.0, 1.0, 0.5, 0.3])
@pytest.mark.parametrize("split", [0, 2, 5])
def test_split_slerp_matches_hand_computation(split, w):
    child = split_slerp(A, B, split, w).numpy()
    expected = np.concatenate([hand_slerp(A, B, w)[:split], hand_slerp(A, B, 1 - w)[split:]])
    np.testing.assert_allclose(child, expected, rtol=1e-6, atol=1e-6)


def test_endpoints_copy_the_parents():
    # split N, w 0: all of A; split 0, w 0: t = 1 everywhere, all of B
    np.testing.assert_allclose(split_slerp(A, B, 5, 0.0), A, atol=1e-6)
    np.testing.assert_allclose(split_slerp(A, B, 0, 0.0), B, atol=1e-6)
    # w 1 with a split in the middle: B before the split, A after it
    np.testing.assert_allclose(split_slerp(A, B, 2, 1.0), torch.cat([B[:2], A[2:]]), atol=1e-6)


def test_midpoint_of_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    s = math.sqrt(0.5)
    np.testing.assert_allclose(slerp(a, b, 0.5), [s, s], atol=1e-7)


def test_one_global_angle_not_per_segment():
    # Per-segment angles would differ from the whole-vector angle; the reference uses one.
    child = split_slerp(A, B, 2, 0.3)
    per_segment = np.concatenate([hand_slerp(A[:2], B[:2], 0.3), hand_slerp(A[2:], B[2:], 0.7)])
    assert not np.allclose(child.numpy(), per_segment, atol=1e-4)


def test_parallel_and_antiparallel_parents_fall_back_to_linear():
    a = torch.tensor([1.0, 2.0, 3.0])
    np.testing.assert_allclose(split_slerp(a, 2 * a, 1, 0.25), [1.25, 2 * 1.75, 3 * 1.75])
    np.testing.assert_allclose(slerp(a, -a, 0.25), 0.5 * a, atol=1e-6)
    np.testing.assert_allclose(slerp(torch.zeros(3), a, 0.5), 0.5 * a)


def test_mutation_is_seeded_gaussian():
    gen = torch.Generator()
    x = mutate(torch.zeros(100_000), 0.01, gen.manual_seed(3))
    y = mutate(torch.zeros(100_000), 0.01, gen.manual_seed(3))
    assert torch.equal(x, y)
    assert float(x.std()) == pytest.approx(0.01, rel=0.02)
    assert abs(float(x.mean())) < 1e-3
