"""PEFT's other combination types (ties, dare_*, magnitude_prune and their svd forms) as the
adapter space's compositions, each checked against PEFT's own ``add_weighted_adapter`` on a tiny
Llama with two adapters PEFT saved here (one with an embedding adapter, one with rsLoRA).

DARE draws random masks. PEFT draws them from torch's global generator inside
``add_weighted_adapter`` (after creating the new adapter's layers, which draws too); our
compositions draw the same Bernoulli masks in the same order from a ``torch.Generator``. The
test reads the global state at the moment PEFT starts composing (a first, non-random
``add_weighted_adapter`` from the same seed leaves the generator there, since creating the
layers draws alike) and hands that state to ours: the masks, hence the factors, are then PEFT's.
The random part is also checked on its own: kept fraction near ``density``, survivors scaled by
``1/density``, the mean over many masks near the unpruned composition, and the same seed giving
the same masks."""

import pytest
import torch

from evomerge.ops.lora_compose import COMPOSITIONS, compose, composed_rank
from evomerge.ops.lora_mixing import mix
from evomerge.tensors.adapted_model import LoraAdapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

SVD_RANK = 3


@pytest.fixture(scope="module")
def adapters(lora_pair):
    ads = [LoraAdapter(lora_pair / x) for x in ("a", "b")]
    yield ads
    for ad in ads:
        ad.close()


def peft_targets(pm, name):
    """Per module (in PEFT's order), its name and the ``(A, B)`` of adapter ``name``."""
    for key, module in pm.base_model.model.named_modules():
        if name in getattr(module, "lora_A", {}):
            yield (
                key,
                module.lora_A[name].weight.detach(),
                module.lora_B[name].weight.detach(),
                False,
            )
        elif name in getattr(module, "lora_embedding_A", {}):
            ta, tb = module.lora_embedding_A[name], module.lora_embedding_B[name]
            yield key, ta.detach(), tb.detach(), True


def factors_of(adapters, key):
    out = []
    for ad in adapters:
        f = ad.factors.get(f"{key}.weight")
        out.append(None if f is None else (ad.weights.get(f.a), ad.weights.get(f.b), f.scale))
    return out


CASES = [
    ("ties", {"density": 0.6}),
    ("ties", {"density": 0.5, "majority_sign_method": "frequency"}),
    ("magnitude_prune", {"density": 0.5}),
    ("dare_linear", {"density": 0.5}),
    ("dare_ties", {"density": 0.7}),
    ("ties_svd", {"density": 0.6}),
    ("magnitude_prune_svd", {"density": 0.4}),
    ("dare_linear_svd", {"density": 0.5}),
    ("dare_ties_svd", {"density": 0.6, "majority_sign_method": "frequency"}),
]


@pytest.mark.parametrize("kind,options", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_composition_is_peft_add_weighted_adapter(lora_pair, adapters, kind, options):
    """Each combination type equals PEFT's for weights of both signs; DARE's masks are PEFT's
    given the generator's state."""
    weights = [0.8, -0.5]
    model = transformers.LlamaForCausalLM.from_pretrained(lora_pair / "base")
    pm = peft.PeftModel.from_pretrained(model, lora_pair / "a", adapter_name="a")
    pm.load_adapter(lora_pair / "b", adapter_name="b")
    svd = kind.endswith("_svd")
    torch.manual_seed(1234)  # where the random composition will start drawing:
    pm.add_weighted_adapter(["a", "b"], weights, "probe", "svd" if svd else "linear", SVD_RANK)
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    pm.add_weighted_adapter(["a", "b"], weights, "mix", kind, svd_rank=SVD_RANK, **options)
    generator = torch.Generator()
    generator.set_state(state)
    rank = composed_rank(kind, [4, 4], SVD_RANK)
    signs = options.get("majority_sign_method", "total")

    def composed(key, embedding):
        return compose(
            kind,
            factors_of(adapters, key),
            weights,
            rank,
            density=options["density"],
            sign_method=signs,
            generator=generator,
            embedding=embedding,
        )

    checked = 0
    for key, ta, tb, embedding in peft_targets(pm, "mix"):
        a, b = composed(key, embedding)
        if svd:  # singular vectors are defined up to sign: compare the update
            torch.testing.assert_close(b @ a, tb @ ta, rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(a, ta, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(b, tb, rtol=1e-6, atol=1e-7)
        assert torch.count_nonzero(b @ a) > 0
        checked += 1
    assert checked == 2 * 2 + 1  # q and v of 2 layers, and the embedding
    if kind.startswith("dare"):  # and the generator was needed: another state, other factors
        generator.manual_seed(99)
        key, ta, tb, embedding = next(peft_targets(pm, "mix"))
        a, b = composed(key, embedding)
        assert not torch.allclose(b @ a, tb @ ta, atol=1e-4)


def test_every_peft_combination_type_is_registered():
    assert set(COMPOSITIONS.names()) == {
        "linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
        "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd",
    }  # fmt: skip


def test_dare_masks_statistics():
    """DARE keeps each element with probability ``density`` and scales the survivors by
    ``1/density``: the kept fraction is near it, the mean over many masks tends to the
    unpruned weighted sum, and one seed always draws one mask."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=g) + 3.0  # no zeros: a zero of the output is a drop
    y = torch.randn(64, 64, generator=g)
    p = 0.3
    one = mix("dare_linear", [x], [1.0], density=p, generator=torch.Generator().manual_seed(5))
    kept = one != 0
    assert abs(kept.float().mean().item() - p) < 0.03  # 4096 Bernoulli(0.3) draws: sd 0.007
    torch.testing.assert_close(one[kept], x[kept] / p)
    again = mix("dare_linear", [x], [1.0], density=p, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, again)
    other = mix("dare_linear", [x], [1.0], density=p, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(one != 0, other != 0)
    # unbiased: the mean of n draws is within a few standard errors of 0.7 x - 0.4 y
    want = 0.7 * x - 0.4 * y
    n, g = 200, torch.Generator().manual_seed(1)
    mean = (
        sum(mix("dare_linear", [x, y], [0.7, -0.4], density=p, generator=g) for _ in range(n)) / n
    )
    sd = ((0.49 * x**2 + 0.16 * y**2) * (1 - p) / p / n).sqrt()
    z = ((mean - want) / sd).flatten()
    assert z.abs().mean().item() < 1.0  # |N(0,1)| has mean 0.80
    assert z.abs().max().item() < 6.0


def test_ties_on_hand_computed_digits():
    """TIES as PEFT: magnitude pruning, sign elected on the unweighted tensors, mean of the
    weighted agreeing values divided by how many agree."""
    t1 = torch.tensor([3.0, -1.0, 0.5, -2.0])
    t2 = torch.tensor([-1.0, -4.0, 2.0, 1.0])
    # density 0.5 keeps 2 of 4: t1 -> [3, 0, 0, -2], t2 -> [0, -4, 2, 0]
    # total: sums [3, -4, 2, -2] -> signs [+, -, +, -]; all survivors agree
    out = mix("ties", [t1, t2], [2.0, 0.5], density=0.5)
    torch.testing.assert_close(out, torch.tensor([6.0, -2.0, 1.0, -4.0]))
    # magnitude_prune: the weighted sum of the pruned tensors
    out = mix("magnitude_prune", [t1, t2], [2.0, 0.5], density=0.5)
    torch.testing.assert_close(out, torch.tensor([6.0, -2.0, 1.0, -4.0]))
    # without pruning: total signs [+, -, +, -]; element 0: only t1 agrees -> 2*3/1;
    # element 1: both -> (2*-1 + 0.5*-4)/2; element 2: both -> (1 + 1)/2; element 3: t1 -> -4
    out = mix("ties", [t1, t2], [2.0, 0.5], density=1.0)
    torch.testing.assert_close(out, torch.tensor([6.0, -2.0, 1.0, -4.0]))
    # frequency: one vote each; ties (0 votes) elect +
    out = mix("ties", [t1, t2], [2.0, 0.5], density=1.0, sign_method="frequency")
    torch.testing.assert_close(out, torch.tensor([6.0, -2.0, 1.0, 0.5]))
