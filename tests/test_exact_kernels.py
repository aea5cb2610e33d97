"""The fast replacements inside the operators give torch's own answers bit for bit."""

import torch

from evomerge.ops.della import _stable_order
from evomerge.ops.sce import _variance
from evomerge.ops.task_vectors import _consensus_block


def _bits(t):
    return t.view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def test_variance_is_torch_var_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for k in (1, 2, 3, 5):
            t = torch.randn(k, 4000, generator=g, dtype=dtype)
            t *= torch.exp(4 * torch.randn(k, 4000, generator=g, dtype=dtype))
            t[:, :50] = 0.0
            before = t.clone()
            assert torch.equal(_bits(_variance(t)), _bits(t.var(dim=0, unbiased=False)))
            assert torch.equal(t, before)  # the input is left alone


def test_stable_order_is_stable_argsort():
    g = torch.Generator().manual_seed(1)
    for length in (1, 5, 1024):
        a = torch.randn(64, length, generator=g).bfloat16().float()
        b = torch.randn(64, length, generator=g).bfloat16().float()
        mag = (a - b).abs()
        mag[:, : length // 3] = 0.0  # many ties
        assert torch.equal(_stable_order(mag), torch.argsort(mag, dim=1, stable=True))
    mag = torch.rand(4, 33, generator=g, dtype=torch.float64)
    assert torch.equal(_stable_order(mag), torch.argsort(mag, dim=1, stable=True))


def _reference_consensus(deltas, weights, normalize):
    """The sign election written the plain way: a fold of agreeing values from +0."""
    total = deltas[0].clone()
    for d in deltas[1:]:
        total = total + d
    sign = torch.copysign(torch.ones(()), total)
    mixed = torch.zeros_like(total)
    divisor = torch.zeros_like(total)
    for d, w in zip(deltas, weights, strict=True):
        agree = d * sign > 0
        mixed = mixed + torch.where(agree, d, torch.zeros(()))
        divisor = divisor + agree.float() * w
    divisor = torch.where(divisor == 0, torch.ones(()), divisor)
    return (mixed / divisor) if normalize else mixed


def test_consensus_block_matches_the_plain_fold():
    g = torch.Generator().manual_seed(2)
    for trial in range(40):
        k = 1 + trial % 4
        deltas = []
        for _ in range(k):
            d = torch.randn(3000, generator=g) * 10.0 ** float(
                torch.randint(-30, 3, (), generator=g)
            )
            r = torch.rand(3000, generator=g)
            d[r < 0.2] = 0.0
            d[(r >= 0.2) & (r < 0.3)] = -0.0
            deltas.append(d)
        if k > 1:
            deltas[1][:500] = -deltas[0][:500]  # exact cancellations: a +0 sum elects +
        weights = [float(w) for w in torch.rand(k, generator=g) * 2 - 0.5]
        for normalize in (False, True):
            mixed, divisor = _consensus_block([d.clone() for d in deltas], weights, normalize)
            got = mixed / divisor if normalize else mixed
            want = _reference_consensus(deltas, weights, normalize)
            assert torch.equal(_bits(got), _bits(want)), (trial, normalize)
