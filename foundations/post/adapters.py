"""Parameter-efficient tuning with the base frozen: LoRA, prompt tuning and prefix tuning.

LoRA (Hu et al. 2021): each targeted kernel W (in, out), seen as a matrix over its input and
output axes, becomes W + (alpha / rank) * A @ B with A (in, rank) random and B (rank, out) zero,
so training starts from the base model exactly. The sum is formed inside the step, so the model
code is untouched and `merge` is that same sum, done once. Dropout drops adapter input features,
one mask per step (shared by the batch's tokens, which is what lets the update fold into W).

Prompt tuning (Lester et al. 2021): `num_tokens` trainable vectors are appended to the embedding
table as extra rows, and every input starts with their ids, so the model reads them before the
text; their logits are cut off again.

Prefix tuning (Li & Liang 2021): free keys and values in every layer's attention, which every
query sees before the sequence; the model reads them beside each attention layer's kernels.

Here: the adapters' initialisation and counting; what the model reads for them (apply_lora,
with_soft_prompt, with_prefix) is in models/adapters.py, shared with run.py; LoRA's export to
PEFT's format is convert/lora.py `export_peft`, beside its import.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.models.adapters import PREFIX_AXES


def _flat_shapes(shape, split):
    stacked, inputs = split
    lead = shape[:stacked]
    fan_in = math.prod(shape[stacked:stacked + inputs])
    fan_out = math.prod(shape[stacked + inputs:])
    return lead, fan_in, fan_out


def init_lora(rng, base_shapes: dict, targets: dict, rank: int) -> dict:
    """{kernel path: {"a", "b"}} boxed with logical names (stacked axes kept): A ~ N(0, 1/in),
    B = 0."""
    adapters = {}
    for i, (name, split) in enumerate(sorted(targets.items())):
        shape = base_shapes[name]
        lead, fan_in, fan_out = _flat_shapes(shape, split)
        names = ("layers",) * len(lead) + (None, None)
        a = jax.random.normal(jax.random.fold_in(rng, i), (*lead, fan_in, rank)) / fan_in ** 0.5
        adapters[name] = {"a": nn.LogicallyPartitioned(a, names),
                          "b": nn.LogicallyPartitioned(jnp.zeros((*lead, rank, fan_out)), names)}
    return adapters


def init_soft_prompt(rng, num_tokens: int, d_model: int, std: float):
    return nn.LogicallyPartitioned(jax.random.normal(rng, (num_tokens, d_model)) * std,
                                   (None, "embed"))


def init_prefix(rng, num_tokens: int, cfg) -> dict:
    """Prefix tuning (Li & Liang 2021): free keys and values (layers, P, kv_heads, head_dim)
    that every layer's attention reads before the sequence (models/adapters.py with_prefix)."""
    shape = (cfg.num_layers, num_tokens, cfg.num_kv_heads, cfg.head_dim)
    names = PREFIX_AXES
    std = cfg.init_std * cfg.d_model ** 0.5   # about the size of the tokens' own keys
    return {"blocks": {"attention": {
        name: nn.LogicallyPartitioned(jax.random.normal(jax.random.fold_in(rng, i), shape) * std,
                                      names)
        for i, name in enumerate(("prefix_key", "prefix_value"))}}}


def count(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
