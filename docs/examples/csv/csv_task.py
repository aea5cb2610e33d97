"""A fitness plug-in for your own CSV: a small MLP classifier, scored example by example.

Columns: numeric features, and an integer class label in the column named by ``label``.
A seeded shuffle splits the rows into training examples (what the search sees) and a held-out
test set (reported, never searched on).
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge import Fitness


class CsvClassifier(Fitness):
    score_name = "accuracy"  # the summary reports train_accuracy

    def __init__(self, csv: str, label: str = "label", hidden: int = 32, test_fraction=0.2):
        self.csv, self.label, self.hidden = csv, label, hidden
        self.test_fraction = test_fraction

    def setup(self, device):
        # Once per worker: read the data, split it, put it on the device.
        table = np.genfromtxt(self.csv, delimiter=",", names=True)
        columns = [c for c in table.dtype.names if c != self.label]
        x = np.stack([table[c] for c in columns], axis=1).astype(np.float32)
        y = table[self.label].astype(np.int64)
        order = np.random.default_rng(0).permutation(len(y))  # the same split everywhere
        cut = int(len(y) * (1 - self.test_fraction))
        train, test = order[:cut], order[cut:]
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        x = (x - mean) / std  # standardised with training statistics only
        self.x = torch.tensor(x[train], device=device)
        self.y = torch.tensor(y[train], device=device)
        self.x_test = torch.tensor(x[test], device=device)
        self.y_test = torch.tensor(y[test], device=device)
        self.n_in, self.n_out = x.shape[1], int(y.max()) + 1
        h = self.hidden
        # flat vector: [W1 (in, h) | b1 (h) | W2 (h, out) | b2 (out)]
        self.num_params = self.n_in * h + h + h * self.n_out + self.n_out
        self.num_examples = len(self.y)

    def _logits(self, params, x):
        # params (B, num_params), x (n, in) -> (B, n, out): every candidate in one pass
        b, h, i, o = params.shape[0], self.hidden, self.n_in, self.n_out
        w1, rest = params[:, : i * h].view(b, i, h), params[:, i * h :]
        b1, rest = rest[:, :h], rest[:, h:]
        w2, b2 = rest[:, : h * o].view(b, h, o), rest[:, h * o :]
        hidden = torch.baddbmm(b1[:, None], x.expand(b, -1, -1), w1).relu()
        return torch.baddbmm(b2[:, None], hidden, w2)

    def score(self, params, example_ids=None):
        x, y = self.x, self.y
        if example_ids is not None:
            x, y = x[example_ids], y[example_ids]
        return (self._logits(params, x).argmax(dim=2) == y).float()  # (B, examples), 0 or 1

    def metrics(self, params):
        # held-out figures of one member (the reported one), for history and summary
        correct = self._logits(params[None], self.x_test)[0].argmax(dim=1) == self.y_test
        return {"test_accuracy": correct.float().mean().item()}
