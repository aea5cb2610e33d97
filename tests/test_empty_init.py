"""Models built with empty parameters in their dtype score as the float32-initialised ones."""

import pytest
import torch

from evomerge.kit import build_empty

transformers = pytest.importorskip("transformers")


def tiny_config(tied: bool):
    return transformers.LlamaConfig(
        vocab_size=24,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=5000.0,
        tie_word_embeddings=tied,
    )


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_build_equals_the_old_construction(tied, dtype):
    cfg = tiny_config(tied)
    torch.manual_seed(0)
    old = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype=dtype).eval()
    new = build_empty(lambda: transformers.AutoModelForCausalLM.from_config(cfg), "cpu", dtype)
    new.eval()
    names = [(n, p.shape, p.dtype) for n, p in old.named_parameters()]
    assert [(n, p.shape, p.dtype) for n, p in new.named_parameters()] == names
    assert all(p.device.type == "cpu" for p in new.parameters())
    if tied:  # still one tensor under two names
        assert new.lm_head.weight is new.model.embed_tokens.weight
    else:
        assert new.lm_head.weight.data_ptr() != new.model.embed_tokens.weight.data_ptr()
    # non-persistent buffers (rotary inv_freq) are computed as in the old construction
    old_buffers = dict(old.named_buffers())
    assert old_buffers.keys() == dict(new.named_buffers()).keys() and old_buffers
    for name, buf in new.named_buffers():
        assert buf.device.type != "meta" and torch.equal(buf, old_buffers[name]), name
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector(old.parameters())
        torch.nn.utils.vector_to_parameters(flat, list(new.parameters()))
        ids = torch.tensor([[1, 5, 7, 9, 3, 2, 11, 4]])
        assert torch.equal(new(input_ids=ids).logits, old(input_ids=ids).logits)


def test_causal_lm_scores_unchanged_by_the_empty_build(lm_dir):
    """The plug-in's scores of a seed equal a from_config (float32 init) model's own."""
    from test_resident_lineage import fitness

    fit = fitness(lm_dir)
    old = transformers.AutoModelForCausalLM.from_pretrained(lm_dir / "add").eval()
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector(old.parameters())
        mine = fit.score(flat[None])[0]
        fit.model = old  # the same scoring code on the conventionally built model
        fit.params = list(old.parameters())
        theirs = fit.score(flat[None])[0]
    assert torch.equal(mine, theirs) and mine[8:].mean() == 1.0
