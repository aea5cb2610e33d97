"""Diversity of an archive, from its members' per-example scores (for history and reports).

* ``disagreement``: mean over member pairs of the mean absolute score difference per example
  (0: all members answer alike; for 0/1 scores, the share of examples two members split on);
* ``occupancy``: share of examples some member scores on (> 0): the niches the archive holds;
* ``owners``: members that hold the strictly highest score on at least one example, i.e. that
  resource competition protects because nobody else covers that example as well.
"""

from __future__ import annotations

import torch


def diversity(scores: torch.Tensor) -> dict:
    """Diagnostics of the ``(P, E)`` score matrix of the filled archive rows."""
    p, e = scores.shape
    if p == 0 or e == 0:
        return {"disagreement": 0.0, "occupancy": 0.0, "owners": 0}
    s = scores.double()
    if p > 1:
        pair = torch.cdist(s, s, p=1) / e
        disagreement = pair.sum().item() / (p * (p - 1))
    else:
        disagreement = 0.0
    occupancy = (s.max(dim=0).values > 0).double().mean().item()
    top = s.max(dim=0, keepdim=True).values
    holders = s == top
    sole = holders.sum(dim=0) == 1
    owners = int(holders[:, sole & (top[0] > 0)].any(dim=1).sum())
    return {"disagreement": disagreement, "occupancy": occupancy, "owners": owners}
