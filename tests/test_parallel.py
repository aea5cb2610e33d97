"""for_each_tensor: every index once, the intra-op thread count restored, errors raised."""

import threading

import pytest
import torch

from evomerge.tensors.parallel import for_each_tensor, one_op_thread


def test_every_index_once_on_one_op_thread_each():
    seen, threads = [], []
    lock = threading.Lock()

    def work(i):
        with lock:
            seen.append(i)
            threads.append(torch.get_num_threads())

    before = torch.get_num_threads()
    for_each_tensor(work, [5, 100, 1, 7], workers=2)
    assert sorted(seen) == [0, 1, 2, 3]
    assert threads == [1, 1, 1, 1]
    assert torch.get_num_threads() == before


def test_first_error_is_raised_and_threads_restored():
    before = torch.get_num_threads()

    def work(i):
        if i == 1:
            raise ValueError("tensor 1 is bad")

    with pytest.raises(ValueError, match="tensor 1 is bad"):
        for_each_tensor(work, [3, 2, 1], workers=2)
    assert torch.get_num_threads() == before


def test_one_op_thread_restores():
    before = torch.get_num_threads()
    with one_op_thread() as old:
        assert old == before and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_not_cpu_runs_in_order():
    seen = []
    for_each_tensor(seen.append, [1, 9, 4], cpu=False)
    assert seen == [0, 1, 2]
