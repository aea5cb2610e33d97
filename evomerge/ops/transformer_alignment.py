"""Weight-matching specs for transformer blocks (Llama-shaped decoders).

What may be permuted without changing the function, per block:

* **MLP hidden units**: rows of ``gate_proj``/``up_proj`` and columns of ``down_proj`` (the
  activation and the gate's product act unit by unit).
* **Attention heads as units**: a head's ``head_dim`` rows of ``q_proj``, ``k_proj``,
  ``v_proj`` (and their biases) and its columns of ``o_proj`` move together; attention mixes
  positions within a head, never across heads. With grouped-query attention the unit is a
  key/value head together with the ``g`` query heads that share it (``g * head_dim`` rows of
  ``q_proj``).
* **The residual stream** (optional): one permutation of the hidden size shared by the whole
  network: embedding columns, the input axis of every ``q/k/v/gate/up_proj``, the output axis
  of every ``o_proj``/``down_proj``, every RMSNorm weight and the output head's input axis. It
  is allowed because RMSNorm's statistic (the mean square over the hidden axis) does not
  depend on the order of the entries and its scale is per entry.

Not permuted (limits): dimensions *within* a head: rotary position embeddings rotate pairs of
query/key dimensions ``(i, i + head_dim/2)`` by position-dependent angles, so only a
permutation that keeps those pairs (and is the same for queries and keys) is allowed; query
heads within one GQA group are left in place; the vocabulary. Models whose norms are not
per-entry (a LayerNorm without elementwise affine is still fine; a grouped norm is not) or
that read fixed residual positions must not use ``residual``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evomerge.ops.alignment import PermutationSpec


def _int(config: Mapping, key: str, default=None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json: '{key}' must be an integer >= 1 (got {value!r})")
    return value


def llama_spec(config: Mapping, names: Iterable[str], residual: bool = False) -> PermutationSpec:
    """The permutations of a Llama-shaped model: per block ``layers.<i>.mlp`` (hidden units)
    and ``layers.<i>.heads`` (key/value heads as units), plus ``residual`` when asked.

    ``config``: the model's ``config.json``; ``names``: its tensor names (biases and the
    output head are included only where the model has them).
    """
    have = set(names)
    layers = _int(config, "num_hidden_layers")
    heads = _int(config, "num_attention_heads")
    kv = _int(config, "num_key_value_heads", heads)
    if heads % kv:
        raise ValueError(
            f"config.json: num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv}"
        )
    prefix = "model." if any(n.startswith("model.layers.") for n in have) else ""
    groups: dict[str, dict[str, int]] = {}
    units: dict[str, int] = {}

    def present(axes: dict[str, int]) -> dict[str, int]:
        return {n: a for n, a in axes.items() if n in have}

    for i in range(layers):
        b = f"{prefix}layers.{i}"
        mlp = {
            f"{b}.mlp.gate_proj.weight": 0,
            f"{b}.mlp.gate_proj.bias": 0,
            f"{b}.mlp.up_proj.weight": 0,
            f"{b}.mlp.up_proj.bias": 0,
            f"{b}.mlp.down_proj.weight": 1,
        }
        att = {
            f"{b}.self_attn.{p}_proj.{k}": 0 for p in ("q", "k", "v") for k in ("weight", "bias")
        }
        att[f"{b}.self_attn.o_proj.weight"] = 1
        for name, axes in ((f"layers.{i}.mlp", mlp), (f"layers.{i}.heads", att)):
            axes = present(axes)
            if not axes:
                raise ValueError(f"the model has no tensors of block {i} ({b}.*)")
            groups[name] = axes
        units[f"layers.{i}.heads"] = kv
    if residual:
        axes = {f"{prefix}embed_tokens.weight": 1, f"{prefix}norm.weight": 0, "lm_head.weight": 1}
        for i in range(layers):
            b = f"{prefix}layers.{i}"
            for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                axes[f"{b}.{p}.weight"] = 1
            for p in ("mlp.gate_proj", "mlp.up_proj"):
                axes[f"{b}.{p}.weight"] = 1
            for p in ("self_attn.o_proj", "mlp.down_proj"):
                axes[f"{b}.{p}.weight"] = 0
                axes[f"{b}.{p}.bias"] = 0
            axes[f"{b}.input_layernorm.weight"] = 0
            axes[f"{b}.post_attention_layernorm.weight"] = 0
        groups["residual"] = present(axes)
    return PermutationSpec(groups, units)
