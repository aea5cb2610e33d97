"""The fitness of this project: how well a candidate model classifies your examples.

The one edit: make ``load_data`` return your own features and labels (it returns
scikit-learn's handwritten digits until you do). The model is a small MLP whose parameters
are one flat vector; ``score`` gives 1.0 per training example a candidate gets right, else 0.0.
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge import Fitness


def load_data() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(features, labels)``: (n, d) floats and (n,) integer class labels 0..k-1."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    return features, labels


class MyFitness(Fitness):
    """Per-example correctness of a d -> hidden -> k MLP; held-out accuracy as a metric."""

    score_name = "accuracy"  # the summary reports train_accuracy

    def __init__(self, hidden: int = 16, test_fraction: float = 0.2, split_seed: int = 0):
        self.hidden, self.test_fraction, self.split_seed = hidden, test_fraction, split_seed

    def setup(self, device):
        # Once per worker: load, split (the same seeded split everywhere), standardise.
        x, y = load_data()
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
        order = np.random.default_rng(self.split_seed).permutation(len(y))
        cut = int(len(y) * (1 - self.test_fraction))
        train, test = order[:cut], order[cut:]
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        x = (x - mean) / std  # training statistics only
        self.x = torch.tensor(x[train], device=device)
        self.y = torch.tensor(y[train], device=device)
        self.x_test = torch.tensor(x[test], device=device)
        self.y_test = torch.tensor(y[test], device=device)
        self.n_in, self.n_out = x.shape[1], int(y.max()) + 1
        h = self.hidden
        # the flat vector: [W1 (in, h) | b1 (h) | W2 (h, out) | b2 (out)]
        self.num_params = self.n_in * h + h + h * self.n_out + self.n_out
        self.num_examples = len(self.y)

    def logits(self, params, x):
        """``params`` (B, num_params), ``x`` (n, in) -> (B, n, out), one candidate at a time
        so a score never depends on what else is in the batch."""
        h, i, o = self.hidden, self.n_in, self.n_out
        out = []
        for p in params:
            w1, b1 = p[: i * h].view(i, h), p[i * h : i * h + h]
            w2, b2 = p[i * h + h : i * h + h + h * o].view(h, o), p[i * h + h + h * o :]
            out.append(torch.addmm(b2, torch.addmm(b1, x, w1).relu(), w2))
        return torch.stack(out)

    def score(self, params, example_ids=None):
        x, y = self.x, self.y
        if example_ids is not None:
            x, y = x[example_ids], y[example_ids]
        return (self.logits(params, x).argmax(dim=2) == y).float()  # (B, examples), 0 or 1

    def metrics(self, params):
        correct = self.logits(params[None], self.x_test)[0].argmax(dim=1) == self.y_test
        return {"test_accuracy": correct.float().mean().item()}
