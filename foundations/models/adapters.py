"""What a tuned model reads, for each way of tuning on a frozen base: LoRA's folded kernels, a
soft prompt's embedding rows and input ids, prefix tuning's keys and values.

These are pure functions of the base parameters and the adapters, so training (post/), which
forms them inside each step, and reading a run (run.py `load_run`), which forms them once, use
the same ones. A config turns a method on by one setting (`SETTINGS`; `method` names it).

- LoRA (Hu et al. 2021): each targeted kernel W, seen as a matrix over its input and output
  axes, becomes W + scale * A @ B (`apply_lora`).
- Prompt tuning (Lester et al. 2021): the soft prompt is P extra rows of the token embedding
  table (`with_soft_prompt`) whose ids start every input (`prompt_inputs`); a Decoder with
  `soft_prompt=P` prepends them itself.
- Prefix tuning (Li & Liang 2021): free keys and values (layers, P, kv_heads, head_dim) beside
  every attention layer's kernels (`with_prefix`), which every query sees before the sequence.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from foundations.config import ADAPTER_KEYS, adapter_settings

STACKED_AXES = ("layers", "expert")   # one kernel per layer / expert: adapters get one each

# the setting that turns each method on (config.ADAPTER_KEYS, a positive value); none: all train
SETTINGS = dict(zip(("lora", "prompt", "prefix"), ADAPTER_KEYS))


def method(config) -> str:
    """'lora', 'prompt', 'prefix' or 'full' (every parameter trains) for a config (at most one
    is set: config.validate_adapters refuses more)."""
    chosen = adapter_settings(config)
    return next((name for name, dotted in SETTINGS.items() if dotted in chosen[:1]), "full")


# ------------------------------------------------------------------ LoRA

def path_name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def kernel_split(axes: tuple) -> tuple[int, int]:
    """(stacked axes, input axes) of a kernel from its logical axis names: the input is `embed`
    when the kernel reads the residual stream (query, key, value, MLP up/gate), else every
    feature axis but the last (attention out, MLP down)."""
    stacked = 0
    while stacked < len(axes) and axes[stacked] in STACKED_AXES:
        stacked += 1
    features = axes[stacked:]
    inputs = 1 if features[0] == "embed" else len(features) - 1
    return stacked, inputs


def lora_targets(logical_specs, pattern: str) -> dict[str, tuple[int, int]]:
    """{kernel path: (stacked axes, input axes)} of the kernels whose path matches `pattern`."""
    found = {}
    for path, spec in jax.tree_util.tree_flatten_with_path(
            logical_specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]:
        name = path_name(path)
        if name.endswith("/kernel") and re.search(pattern, name):
            found[name] = kernel_split(tuple(spec))
    return found


def lora_delta(adapter: dict, shape: tuple, split: tuple, scale: float, keep=None):
    """scale * A @ B in the kernel's shape; `keep` (stacked..., in): a dropout mask on A's rows."""
    a = adapter["a"] if keep is None else adapter["a"] * keep[..., None]
    return (scale * jnp.einsum("...ir,...ro->...io", a, adapter["b"])).reshape(shape)


def apply_lora(base: dict, adapters: dict, targets: dict, scale: float, dropout: float = 0.0,
               rng=None) -> dict:
    """The base parameters with every adapter's update added (the model LoRA trains); also the
    merge: call it once without dropout and keep the result."""
    flat = {path_name(p): (p, w) for p, w in jax.tree_util.tree_flatten_with_path(base)[0]}
    updated = {}
    for i, (name, adapter) in enumerate(sorted(adapters.items())):
        _, kernel = flat[name]
        keep = None
        if dropout and rng is not None:
            rows = adapter["a"].shape[:-1]
            keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - dropout, rows)
            keep = keep.astype(adapter["a"].dtype) / (1 - dropout)
        delta = lora_delta(adapter, kernel.shape, targets[name], scale, keep)
        updated[name] = kernel + delta.astype(kernel.dtype)
    return jax.tree_util.tree_map_with_path(
        lambda p, w: updated.get(path_name(p), w), base)


# ------------------------------------------------------------------ prompt tuning

def with_soft_prompt(base: dict, prompt: jax.Array) -> dict:
    """The base parameters with the soft prompt as extra rows of the token embedding table (and
    zero columns of an untied output head: those logits are cut off anyway)."""
    table = base["token_embed"]["embedding"]
    out = {**base, "token_embed": {"embedding": jnp.concatenate(
        [table, prompt.astype(table.dtype)], axis=0)}}
    if "lm_head" in base:
        kernel = base["lm_head"]["kernel"]
        pad = jnp.zeros((kernel.shape[0], prompt.shape[0]), kernel.dtype)
        out["lm_head"] = {"kernel": jnp.concatenate([kernel, pad], axis=1)}
    return out


def prompt_inputs(tokens, positions, mask, segments, vocab_size: int, num_prompt: int):
    """(tokens, positions, mask) with the soft prompt's ids (vocab_size, vocab_size + 1, ...)
    first: they sit at positions 0..P-1 and the text's move up by P; every query sees them,
    they see only each other (causally); `mask` or `segments` keep their meaning for the text."""
    if segments is not None:
        from foundations.models.attention import segment_mask
        mask = segment_mask(segments)
    p, (rows, length) = num_prompt, tokens.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
    if mask is None:
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    mask = jnp.broadcast_to(mask, (rows, 1, length, length))
    ids = jnp.broadcast_to(vocab_size + jnp.arange(p), (rows, p)).astype(tokens.dtype)
    tokens = jnp.concatenate([ids, tokens], axis=1)
    positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (rows, p)).astype(
        positions.dtype), positions + p], axis=1)
    prompt_rows = jnp.broadcast_to(jnp.tril(jnp.ones((p, p), bool)), (rows, 1, p, p))
    top = jnp.concatenate([prompt_rows, jnp.zeros((rows, 1, p, length), bool)], axis=3)
    bottom = jnp.concatenate([jnp.ones((rows, 1, length, p), bool), mask], axis=3)
    return tokens, positions, jnp.concatenate([top, bottom], axis=2)


# ------------------------------------------------------------------ prefix tuning

PREFIX_AXES = ("layers", None, "kv_heads", "head_dim")   # of prefix_key and prefix_value


def prefix_specs() -> dict:
    """The logical PartitionSpecs of a prefix tree (with_prefix's `prefix`): laid out on a mesh
    as the layer's keys and values are, by layer and kv head."""
    spec = PartitionSpec(*PREFIX_AXES)
    return {"blocks": {"attention": {"prefix_key": spec, "prefix_value": spec}}}


def with_prefix(base: dict, prefix: dict) -> dict:
    """The base parameters with prefix tuning's {"blocks": {"attention": {"prefix_key",
    "prefix_value"}}} (layers, P, kv_heads, head_dim) beside each attention layer's kernels,
    where models/attention.py reads them."""
    blocks = base["blocks"]
    attention = {**blocks["attention"], **prefix["blocks"]["attention"]}
    return {**base, "blocks": {**blocks, "attention": attention}}
