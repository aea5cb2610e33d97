"""Local and Ray evaluators: same candidates, same scores; errors arrive as one line."""

import pytest
import torch
from conftest import DIGITS, PLUGINS

from evomerge.core.errors import PluginError
from evomerge.runtime.local import LocalEvaluator
from evomerge.runtime.ray_pool import RayEvaluator


def test_local_and_ray_scores_are_identical(ray_local):
    params = torch.randn(7, 19_210, generator=torch.Generator().manual_seed(0)) * 0.05
    local = LocalEvaluator(DIGITS, {})
    ray_ev = RayEvaluator(DIGITS, {}, workers=2, num_cpus=1)
    try:
        expected = local.score(params)
        assert expected.shape == (7, 1437)
        assert torch.equal(ray_ev.score(params), expected)
        assert torch.equal(ray_ev.score(params[:1]), expected[:1])
        assert ray_ev.metrics(params[0]) == local.metrics(params[0])
        assert len(ray_ev.nodes()) == 2
    finally:
        ray_ev.close()
    assert ray_local.is_initialized()  # a pool never shuts down a Ray it did not start


def test_ray_worker_errors_arrive_as_one_line(ray_local):
    ev = RayEvaluator(f"{PLUGINS / 'bad.py'}:Raises", {}, workers=1)
    try:
        with pytest.raises(PluginError, match=r"score\(\) raised ValueError: the data server"):
            ev.score(torch.zeros(2, 4))
    finally:
        ev.close()
    with pytest.raises(PluginError, match=r"setup\(\) raised FileNotFoundError"):
        RayEvaluator(f"{PLUGINS / 'bad.py'}:SetupRaises", {}, workers=1)


def test_a_candidate_scores_the_same_in_any_batch_position():
    local = LocalEvaluator(DIGITS, {})
    params = torch.randn(9, 19_210, generator=torch.Generator().manual_seed(4)) * 0.05
    together = local.score(params)
    for i in range(9):
        assert torch.equal(local.score(params[i : i + 1].clone()), together[i : i + 1])
    assert torch.equal(local.score(params[3:7]), together[3:7])
