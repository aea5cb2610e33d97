"""Resource competition, attraction and replacement against hand-computed score matrices."""

import pytest
import torch

from evomerge.search.competition import attraction, fitness, inverse_z, sample_index, worst_index

S = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    "alpha, expected",
    [
        (1.0, [1 / 2 + 1 / 1, 1 / 2, 1 / 1]),  # z = [2, 1, 1]
        (0.0, [2.0, 1.0, 1.0]),  # no sharing: raw totals (GA)
        (2.0, [1 / 4 + 1, 1 / 4, 1.0]),  # z = [4, 1, 1]
    ],
)
def test_fitness_matches_hand_computation(alpha, expected):
    assert fitness(S, alpha).tolist() == pytest.approx(expected)


def test_zero_column_sums_count_as_one():
    s = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 0.5]])
    assert inverse_z(s.sum(0), 1.0).tolist() == [1.0, 1.0, 1.0]
    assert fitness(s, 1.0).tolist() == pytest.approx([1.0 + 0.5, 0.5])
    # empty rows (all zeros) have fitness 0
    assert fitness(torch.zeros(2, 3), 1.0).tolist() == [0.0, 0.0]


def test_attraction_counts_what_b_adds_where_a_is_weak():
    zinv = inverse_z(S.sum(0), 1.0)  # z = [2, 1, 1]
    # A = row 1 ([1, 0, 0]): row 0 adds example 1 (z 1), row 2 adds example 2 (z 1)
    assert attraction(S, zinv, 1).tolist() == pytest.approx([1.0, 0.0, 1.0])
    # A = row 0: only row 2 adds something (example 2)
    assert attraction(S, zinv, 0).tolist() == pytest.approx([0.0, 0.0, 1.0])
    # scarcity weights: with a 4th member also solving example 2, its value halves
    s4 = torch.cat([S, torch.tensor([[0.0, 0.0, 1.0]])])
    zinv4 = inverse_z(s4.sum(0), 1.0)  # z = [2, 1, 2]
    assert attraction(s4, zinv4, 0).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5])


def test_sample_index_is_inverse_cdf_and_skips_zero_weights():
    w = [0.0, 1.0, 3.0]
    assert sample_index(w, 0.0) == 1
    assert sample_index(w, 0.2499) == 1
    assert sample_index(w, 0.25) == 2
    assert sample_index(w, 0.9999999) == 2
    assert {sample_index([0.0, 0.0, 2.0, 0.0], u / 10) for u in range(10)} == {2}


def test_replacement_recomputes_z_with_the_child():
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    # child [0,1,0]: z = [1,2,1]; f = [1, 1.5], child 0.5 -> the child is the worst
    assert worst_index(s, torch.tensor([0.0, 1.0, 0.0]), 1.0) == 2
    # child [1,1,0]: z = [2,2,1]; f = [0.5, 1.5], child 1.0 -> row 0 is dropped
    assert worst_index(s, torch.tensor([1.0, 1.0, 0.0]), 1.0) == 0
    # without competition (alpha 0) the same child ties row 1 at 2 and row 0 (1) goes
    assert worst_index(s, torch.tensor([1.0, 1.0, 0.0]), 0.0) == 0


def test_replacement_ties_drop_the_first_row_and_empty_slots_go_first():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert worst_index(s, torch.tensor([1.0, 1.0]), 1.0) == 2  # first empty slot
    same = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert worst_index(same, torch.tensor([1.0, 1.0]), 1.0) == 0  # three-way tie: first row
