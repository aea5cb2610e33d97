"""Fitness plug-ins that misbehave in one way each, for the bad-input tests."""

import os
import time

import torch

from evomerge import Fitness


class Small(Fitness):
    """A tiny well-behaved fitness: 4 parameters, 6 examples, score = sigmoid(p . x_j) > 0.5."""

    num_params = 4

    def setup(self, device):
        self.x = torch.tensor(
            [[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]],
            device=device,
        )
        self.num_examples = len(self.x)

    def score(self, params, example_ids=None):
        return (params @ self.x.T > 0).float()


class Raises(Small):
    def score(self, params, example_ids=None):
        raise ValueError("the data server is down")


class SetupRaises(Small):
    def setup(self, device):
        raise FileNotFoundError("data/train.jsonl")


class WrongShape(Small):
    def score(self, params, example_ids=None):
        return torch.zeros(len(params))


class ReturnsNaN(Small):
    def score(self, params, example_ids=None):
        out = super().score(params)
        out[0, 2] = float("nan")
        return out


class Negative(Small):
    def score(self, params, example_ids=None):
        return super().score(params) - 1.0


class NotAFitness:
    pass


class CrashOnce(Small):
    """Kills its own worker process at its ``after``-th score() call, once per ``marker``.

    The marker file records that the crash happened, so the restarted worker (and the other
    workers) carry on: a stand-in for a worker lost to the OOM killer or a pre-empted node.
    """

    def __init__(self, marker: str, after: int = 3):
        super().__init__()
        self.marker, self.after, self.calls = marker, after, 0

    def score(self, params, example_ids=None):
        self.calls += 1
        if self.calls >= self.after and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)
        return super().score(params, example_ids)


class HangOnce(Small):
    """Hangs (never returns) in its ``after``-th score() call, once per ``marker``: a worker
    stuck on a dead file system or a deadlocked library. Its restarted worker carries on."""

    def __init__(self, marker: str, after: int = 3):
        super().__init__()
        self.marker, self.after, self.calls = marker, after, 0

    def score(self, params, example_ids=None):
        self.calls += 1
        if self.calls >= self.after and not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
        return super().score(params, example_ids)


class Hangs(Small):
    """Never returns from score()."""

    def score(self, params, example_ids=None):
        time.sleep(3600)


class Slow(Small):
    """Small, taking ``delay`` seconds per candidate (same scores whatever the delay)."""

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay

    def score(self, params, example_ids=None):
        time.sleep(self.delay * len(params))
        return super().score(params, example_ids)


class FolderSeeds(Small):
    """Small, whose lineage seeds are model folders (one tensor 'w' of 4 entries each)."""

    def __init__(self, folders: list[str]):
        super().__init__()
        self.folders = folders

    def seed_folders(self):
        return list(self.folders)

    def param_layout(self):
        return [("w", (4,))]


class NaNSeeds(Small):
    """Makes seeds, one of them with a NaN weight (a training run that diverged)."""

    def make_seeds(self, count, seed):
        out = torch.ones(count, self.num_params)
        out[count - 1, 2] = float("nan")
        return out


class RaisesLater(Small):
    """Works for ``after`` score() calls, then raises: a data server that goes away mid-run."""

    def __init__(self, after: int = 20):
        super().__init__()
        self.after, self.calls = after, 0

    def score(self, params, example_ids=None):
        self.calls += 1
        if self.calls > self.after:
            raise ConnectionError("lost the connection to the data server")
        return super().score(params, example_ids)


class MetricsHangOnce(Small):
    """Hangs once in metrics() (per ``marker``): a held-out evaluation stuck on I/O."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def metrics(self, params):
        if not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3600)
        return {"held_out": float(params.sum())}


class NaNMetric(Small):
    """Small whose held-out metric is NaN (e.g. a loss that diverged on the test set)."""

    def metrics(self, params):
        return {"test_loss": float("nan"), "test_ok": 1.0}


class ExitsInSetup(Small):
    def setup(self, device):
        raise SystemExit(4)


class MakesSeeds(Small):
    """Small with seed models of its own, for the spaces that mix seeds."""

    def make_seeds(self, count, seed):
        return torch.randn(count, self.num_params, generator=torch.Generator().manual_seed(seed))


class ResidentRaises(MakesSeeds):
    """Its model cannot be reached (e.g. the device ran out of memory building it)."""

    def resident_tensors(self):
        raise RuntimeError("CUDA out of memory")


class StreamRaises(MakesSeeds):
    """No resident tensors; writing a candidate into its engine fails."""

    def load_tensors(self, pairs):
        raise RuntimeError("engine rejected the weights")


class CountsWrites(MakesSeeds):
    """A model that takes candidates as a stream of named tensors (an inference engine's way)
    and notes in ``log`` each candidate written and each scoring call."""

    def __init__(self, log: str):
        super().__init__()
        self.log = log
        self.w = torch.zeros(4)

    def _note(self, what: str) -> None:
        with open(self.log, "a") as f:
            f.write(what + "\n")

    def param_layout(self):
        return [("w", (4,))]

    def load_tensors(self, pairs):
        for _, t in pairs:
            self.w = t.detach().clone().reshape(-1)
        self._note("write")

    def score_loaded(self, example_ids=None):
        self._note("score")
        x = self.x if example_ids is None else self.x[example_ids]
        return (x @ self.w > 0).float()
