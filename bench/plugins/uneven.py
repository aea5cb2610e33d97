"""A fitness whose evaluation time varies from candidate to candidate, for scheduling benches.

Each candidate sleeps ``low + (high - low) * u`` seconds, ``u`` in [0, 1) fixed by the candidate's
parameters (so a rerun sleeps the same), then scores 8 examples by the signs of its parameters.
Sleeping takes no CPU, so the bench measures scheduling, not this machine's two cores.
"""

import time
import zlib

from evomerge import Fitness


class Uneven(Fitness):
    num_params = 8

    def __init__(self, low: float = 0.02, high: float = 0.2):
        self.low, self.high = low, high

    def setup(self, device):
        self.num_examples = 8

    def score(self, params, example_ids=None):
        for p in params:
            u = zlib.crc32(p.cpu().numpy().tobytes()) / 2**32
            time.sleep(self.low + (self.high - self.low) * u)
        out = (params > 0).float()
        return out if example_ids is None else out[:, example_ids]
