"""The fitness of this project: merge expert models with a recipe, scored on your examples.

The search does not train: it looks for the per-layer TIES weights and densities that merge
the seed models best. Two edits make it yours: ``load_data`` (your features and labels) and
``make_seeds`` (your experts; until you edit it, it trains one per half of the classes from a
shared init, which it returns first as the base the recipe's task vectors start from).
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

    score_name = "accuracy"

    def __init__(self, hidden: int = 32, test_fraction: float = 0.2, split_seed: int = 0):
        self.hidden, self.test_fraction, self.split_seed = hidden, test_fraction, split_seed

    def setup(self, device):
        x, y = load_data()
        x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
        order = np.random.default_rng(self.split_seed).permutation(len(y))
        cut = int(len(y) * (1 - self.test_fraction))
        train, test = order[:cut], order[cut:]
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        x = (x - mean) / std
        self.x = torch.tensor(x[train], device=device)
        self.y = torch.tensor(y[train], device=device)
        self.x_test = torch.tensor(x[test], device=device)
        self.y_test = torch.tensor(y[test], device=device)
        self.n_in, self.n_out = x.shape[1], int(y.max()) + 1
        self.num_params = sum(int(np.prod(shape)) for _, shape in self.param_layout())
        self.num_examples = len(self.y)

    def param_layout(self):
        """The flat vector's tensors, in order: recipes give each layer genes of its own."""
        h = self.hidden
        return [
            ("layers.0.weight", (self.n_in, h)),
            ("layers.0.bias", (h,)),
            ("layers.1.weight", (h, self.n_out)),
            ("layers.1.bias", (self.n_out,)),
        ]

    def logits(self, params, x):
        """``params`` (B, num_params), ``x`` (n, in) -> (B, n, out), one candidate at a time."""
        out = []
        for p in params:
            tensors, start = [], 0
            for _, shape in self.param_layout():
                size = int(np.prod(shape))
                tensors.append(p[start : start + size].view(shape))
                start += size
            w1, b1, w2, b2 = tensors
            out.append(torch.addmm(b2, torch.addmm(b1, x, w1).relu(), w2))
        return torch.stack(out)

    def score(self, params, example_ids=None):
        x, y = self.x, self.y
        if example_ids is not None:
            x, y = x[example_ids], y[example_ids]
        return (self.logits(params, x).argmax(dim=2) == y).float()

    def metrics(self, params):
        correct = self.logits(params[None], self.x_test)[0].argmax(dim=1) == self.y_test
        return {"test_accuracy": correct.float().mean().item()}

    def make_seeds(self, count, seed, steps=300, lr=0.003, init_seed=42):
        """The base, then one expert per group of classes: ``(count, num_params)``.

        Edit this to load your own fine-tuned experts (flattened in ``param_layout`` order)
        and the model they were fine-tuned from. ``init_seed``, not the run seed, fixes them,
        so every run of a comparison merges the same models.
        """
        classes = torch.arange(self.n_out)
        groups = [g for g in classes.chunk(count - 1)]
        gen = torch.Generator().manual_seed(init_seed)
        base = (torch.randn(self.num_params, generator=gen) * 0.1).to(self.x.device)
        experts = []
        for group in groups:
            mask = torch.isin(self.y, group.to(self.y.device))
            p = base.clone().requires_grad_(True)
            opt = torch.optim.Adam([p], lr=lr)
            for _ in range(steps):  # full-batch Adam on the group's examples
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    self.logits(p[None], self.x[mask])[0], self.y[mask]
                )
                loss.backward()
                opt.step()
            experts.append(p.detach())
        return torch.stack([base, *experts])
