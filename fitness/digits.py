"""Digits: the M2N2 paper's "MNIST" experiment, reproduced exactly.

Data: scikit-learn's ``load_digits`` (1797 images of 8x8 pixels, raw values 0..16, not
normalised); the first 80% (1437) are training examples, the last 360 the test set, no shuffle.
Model: an MLP 64 -> 256 (ReLU) -> 10 with 19,210 parameters, flattened as
``[W1 (in=64, out=256) row-major | b1 | W2 (256, 10) | b2]`` (the transpose of torch's
``nn.Linear.weight``), so split points land where the reference puts them.
Score: 1.0 where the candidate classifies a training example correctly, else 0.0.
For the data-aware merges (fisher, regmean) it gives the log-probability of each training
example's label and the inputs of its two linear layers (pixels, hidden ReLU units); for
AdaMerging the log-softmax over the ten classes of each image (:meth:`log_probabilities`).
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from evomerge import Fitness

IN, HIDDEN, OUT = 64, 256, 10
SHAPES = {"W1": (IN, HIDDEN), "b1": (HIDDEN,), "W2": (HIDDEN, OUT), "b2": (OUT,)}
NUM_PARAMS = IN * HIDDEN + HIDDEN + HIDDEN * OUT + OUT  # 19,210
_W1 = slice(0, IN * HIDDEN)
_B1 = slice(_W1.stop, _W1.stop + HIDDEN)
_W2 = slice(_B1.stop, _B1.stop + HIDDEN * OUT)
_B2 = slice(_W2.stop, NUM_PARAMS)


def load_split(train_fraction: float = 0.8):
    """Return ``(x_train, y_train), (x_test, y_test)`` as float32 / int64 tensors."""
    images, labels = load_digits(return_X_y=True)
    cut = int(len(images) * train_fraction)
    x = torch.tensor(images, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def logits(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batched forward pass: ``params`` (B, 19210), ``x`` (n, 64) -> (B, n, 10)."""
    b = params.shape[0]
    w1 = params[:, _W1].view(b, IN, HIDDEN)
    w2 = params[:, _W2].view(b, HIDDEN, OUT)
    h = torch.baddbmm(params[:, None, _B1], x.expand(b, -1, -1), w1).relu_()
    return torch.baddbmm(params[:, None, _B2], h, w2)


class Digits(Fitness):
    """Per-example correctness of the 64-256-10 MLP on the digits training split."""

    score_name = "accuracy"
    num_params = NUM_PARAMS

    def __init__(self, train_fraction: float = 0.8):
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.train_fraction = train_fraction

    def setup(self, device: torch.device) -> None:
        (self.x_train, self.y_train), (self.x_test, self.y_test) = (
            (x.to(device), y.to(device)) for x, y in load_split(self.train_fraction)
        )
        self.device = torch.device(device)
        self.num_examples = len(self.y_train)
        # On CPU the skinny second layer (N=10) is several times faster with N padded to 16;
        # the padding columns get bias -inf so they never win the argmax.
        self._w2_pad = torch.zeros(HIDDEN, 16, device=device)
        self._b2_pad = torch.full((16,), -float("inf"), device=device)

    def _correct_one(self, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One candidate at a time: the result never depends on what else is in the batch."""
        h = torch.addmm(p[_B1], x, p[_W1].view(IN, HIDDEN))
        h.relu_()
        self._w2_pad[:, :OUT] = p[_W2].view(HIDDEN, OUT)
        self._b2_pad[:OUT] = p[_B2]
        # max().indices is argmax (first maximal index on ties) at half the cost on CPU.
        return torch.addmm(self._b2_pad, h, self._w2_pad).max(dim=1).indices == y

    def score(self, params: torch.Tensor, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        x, y = self.x_train, self.y_train
        if example_ids is not None:
            x, y = x[example_ids], y[example_ids]
        out = torch.empty(params.shape[0], len(y), device=params.device)
        for i, p in enumerate(params):
            out[i] = self._correct_one(p, x, y)
        return out

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        correct = self._correct_one(params.reshape(-1), self.x_test, self.y_test)
        return {"test_accuracy": correct.float().mean().item()}

    def example_groups(self) -> dict[str, list[int]]:
        """Training example ids by class (``"0"``..``"9"``), by parity (``even``, ``odd``)
        and by half (``"0-4"``, ``"5-9"``): MAP-Elites descriptors and Pareto objectives."""
        y = self.y_train.cpu()
        groups = {str(c): torch.nonzero(y == c).squeeze(1).tolist() for c in range(10)}
        sets = {"even": (0, 2, 4, 6, 8), "odd": (1, 3, 5, 7, 9)}
        sets |= {"0-4": (0, 1, 2, 3, 4), "5-9": (5, 6, 7, 8, 9)}
        for name, classes in sets.items():
            groups[name] = torch.nonzero(torch.isin(y, torch.tensor(classes))).squeeze(1).tolist()
        return groups

    def make_seeds(
        self,
        count: int,
        seed: int,
        experts: list[list[int]] = ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]),
        steps: int = 10,
        lr: float = 3e-3,
        init_std: float = 0.01,
        init_seed: int = 42,
        shared_init: bool = False,
        include_base: bool = False,
    ) -> torch.Tensor:
        """Experts trained by full-batch Adam on class groups from N(0, init_std^2) inits.

        The defaults make the reference's weak pair (10 steps, a different init per expert).
        ``shared_init`` starts every expert from one init (the setting task vectors assume);
        ``include_base`` returns a base first, for task-vector merges: the shared init, or,
        for experts with inits of their own, zeros (the centre of their N(0, init_std^2) inits).
        ``init_seed`` (not the run seed) fixes them, so every run of a comparison starts from
        the same models, as the reference does.
        """
        if count != len(experts) + include_base:
            raise ValueError(
                f"seeds.count is {count} but {len(experts)} expert groups"
                f"{' plus the base' if include_base else ''} are given"
            )
        seeds = []
        for i, classes in enumerate(experts):
            mask = torch.isin(self.y_train, torch.tensor(classes, device=self.device))
            gen = torch.Generator().manual_seed(init_seed + (0 if shared_init else i))
            p = (torch.randn(NUM_PARAMS, generator=gen) * init_std).to(self.device)
            if include_base and i == 0:
                seeds.append(p if shared_init else torch.zeros_like(p))
            seeds.append(train(p, self.x_train[mask], self.y_train[mask], steps=steps, lr=lr))
        return torch.stack(seeds)

    def log_likelihoods(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """``log p(label | image)`` of each listed training example, differentiable in params."""
        x, y = self.x_train[example_ids], self.y_train[example_ids]
        logp = torch.log_softmax(logits(params.reshape(1, -1), x)[0], dim=-1)
        return logp.gather(1, y[:, None]).squeeze(1)

    def log_probabilities(self, params: torch.Tensor, example_ids: torch.Tensor) -> torch.Tensor:
        """``(n, 10)`` log-softmax over the classes of each listed image (labels unused),
        differentiable in params: the predictions whose entropy AdaMerging minimises."""
        x = self.x_train[example_ids]
        return torch.log_softmax(logits(params.reshape(1, -1), x)[0], dim=-1)

    def linear_inputs(self, params: torch.Tensor, example_ids: torch.Tensor):
        """The inputs of both layers (stored ``(in, out)``): the pixels and the hidden units."""
        p = params.reshape(-1)
        x = self.x_train[example_ids]
        h = torch.addmm(p[_B1], x, p[_W1].view(IN, HIDDEN)).relu_()
        return {"layers.0.weight": x, "layers.1.weight": h}

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Named tensors of the flat vector, in order, so recipes can group them by layer."""
        return [
            ("layers.0.weight", (IN, HIDDEN)),
            ("layers.0.bias", (HIDDEN,)),
            ("layers.1.weight", (HIDDEN, OUT)),
            ("layers.1.bias", (OUT,)),
        ]


def train(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float):
    """Full-batch Adam on mean cross-entropy, directly on the flat vector."""
    p = params.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits(p[None], x)[0], y)
        loss.backward()
        opt.step()
    return p.detach()
