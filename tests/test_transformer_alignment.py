"""Weight matching for transformer blocks: attention heads as units (q/k/v/o moved together,
GQA groups kept), MLP hidden units and the residual stream of a tiny Llama made here, permuted
at random and recovered exactly; ``align: {architecture: llama}`` in a merge config."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from evomerge.interface.cli import main
from evomerge.ops.alignment import Alignment, PermutationSpec, weight_matching
from evomerge.ops.transformer_alignment import llama_spec


def test_block_units_move_whole_blocks():
    """2 units over an axis of 4 (blocks of 2) and over an axis of 2 (blocks of 1)."""
    spec = PermutationSpec({"heads": {"q": 0, "o": 1}}, {"heads": 2})
    q = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    o = torch.tensor([[10.0, 20.0]])
    p = {"heads": torch.tensor([1, 0])}
    assert spec.permute("q", q, p).flatten().tolist() == [3.0, 4.0, 1.0, 2.0]
    assert spec.permute("o", o, p).tolist() == [[20.0, 10.0]]
    assert spec.sizes({"q": (4, 1), "o": (1, 2)}) == {"heads": 2}
    with pytest.raises(ValueError, match="not a multiple of its 2 units"):
        spec.sizes({"q": (5, 1), "o": (1, 2)})
    # the cost of a block permutation sums over its entries: heads swapped are found
    ref = {"q": torch.tensor([[1.0], [1.0], [-1.0], [-1.0]]), "o": torch.tensor([[1.0, -1.0]])}
    other = {n: spec.permute(n, t, p) for n, t in ref.items()}
    assert weight_matching(ref, other, spec)["heads"].tolist() == [1, 0]


def _llama(heads, kv, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so they carry the residual permutation too
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return cfg, model


def _moves(n, gen):
    """A random permutation of ``n`` that is not the identity."""
    while True:
        p = torch.randperm(n, generator=gen)
        if not torch.equal(p, torch.arange(n)):
            return p


def _logits(cfg, state, x):
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize(("heads", "kv", "residual"), [(4, 4, True), (8, 2, True), (4, 2, False)])
def test_llama_permutation_is_recovered_exactly(heads, kv, residual):
    cfg, model = _llama(heads, kv)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    spec = llama_spec(cfg.to_dict(), ref, residual=residual)
    sizes = spec.sizes({n: tuple(t.shape) for n, t in ref.items()})
    assert sizes["layers.0.heads"] == kv and sizes["layers.1.mlp"] == 40
    assert ("residual" in sizes) == residual
    gen = torch.Generator().manual_seed(1)
    true = {p: _moves(n, gen) for p, n in sizes.items()}
    moved = {n: spec.permute(n, t, true) for n, t in ref.items()}
    x = torch.randint(0, 61, (2, 9), generator=gen)
    base = _logits(cfg, ref, x)
    assert torch.allclose(_logits(cfg, moved, x), base, atol=1e-5)  # the same function
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(moved[q], ref[q])
    found = weight_matching(ref, moved, spec)
    # found[p][i]: the moved model's unit matched to the reference's unit i = inverse of true
    for p, perm in true.items():
        assert torch.equal(perm[found[p]], torch.arange(len(perm))), p
    back = {n: spec.permute(n, t, found) for n, t in moved.items()}
    assert all(torch.equal(back[n], ref[n]) for n in ref)
    assert torch.allclose(_logits(cfg, back, x), base, atol=1e-5)


def test_a_residual_permutation_without_matching_heads_changes_the_function():
    """The limit the spec encodes: rows of q_proj permuted within heads (not as whole heads)
    change the output (rotary pairs and per-head attention are broken)."""
    cfg, model = _llama(4, 4)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    spec = PermutationSpec(
        {
            "rows": {
                "model.layers.0.self_attn.q_proj.weight": 0,
                "model.layers.0.self_attn.k_proj.weight": 0,
                "model.layers.0.self_attn.v_proj.weight": 0,
                "model.layers.0.self_attn.o_proj.weight": 1,
            }
        }
    )
    p = {"rows": torch.randperm(32, generator=torch.Generator().manual_seed(3))}
    moved = {n: spec.permute(n, t, p) for n, t in ref.items()}
    x = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(_logits(cfg, moved, x), _logits(cfg, ref, x), atol=1e-3)


def test_align_architecture_config_is_checked():
    with pytest.raises(ValueError, match="either permutations or architecture"):
        Alignment()
    with pytest.raises(ValueError, match="residual: true needs architecture"):
        Alignment(permutations={"h": {"a": 0}}, residual=True)


def test_merge_yaml_aligns_a_permuted_llama(tmp_path):
    """Averaging a Llama with a permuted copy of itself after ``align: {architecture: llama,
    residual: true}`` gives the model back (unaligned, it does not)."""
    cfg, model = _llama(4, 2)
    model.save_pretrained(tmp_path / "a")
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    spec = llama_spec(cfg.to_dict(), ref, residual=True)
    sizes = spec.sizes({n: tuple(t.shape) for n, t in ref.items()})
    gen = torch.Generator().manual_seed(2)
    true = {p: _moves(n, gen) for p, n in sizes.items()}
    moved = LlamaForCausalLM(cfg)
    moved.load_state_dict({n: spec.permute(n, t, true) for n, t in ref.items()})
    moved.save_pretrained(tmp_path / "b")
    for name, align in (("aligned", {"architecture": "llama", "residual": True}), ("raw", None)):
        doc = {
            "method": "linear",
            "models": [
                {"path": str(tmp_path / "a"), "params": {"weight": 0.5}},
                {"path": str(tmp_path / "b"), "params": {"weight": 0.5}},
            ],
            **({"align": align} if align else {}),
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
        assert main(["merge", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)]) == 0
    merged = load_file(tmp_path / "aligned" / "model.safetensors")
    assert all(torch.allclose(merged[n], ref[n], atol=1e-6) for n in ref)
    raw = load_file(tmp_path / "raw" / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(raw[q], ref[q], atol=1e-3)


def test_bad_architecture_align_is_one_line(tmp_path, capsys):
    cfg, model = _llama(4, 2)
    model.save_pretrained(tmp_path / "a")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, tmp_path / "b.safetensors")  # a bare file: no config.json beside it
    cases = [
        (str(tmp_path / "b.safetensors"), {"architecture": "llama"}, "has no config.json"),
        (str(tmp_path / "a"), {"architecture": "llama", "units": {"x": 2}}, "units"),
        (str(tmp_path / "a"), {"permutations": {"h": {"x": 0}}, "residual": True}, "residual"),
    ]
    for first, align, message in cases:
        doc = {
            "method": "linear",
            "models": [
                {"path": first, "params": {"weight": 1.0}},
                {"path": str(tmp_path / "a"), "params": {"weight": 1.0}},
            ],
            "align": align,
        }
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
        capsys.readouterr()
        code = main(["merge", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out").exists()
