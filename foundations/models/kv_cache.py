"""The KV cache of autoregressive decoding, in flax's 'cache' collection.

Each self-attention layer keeps the keys and values of the tokens seen so far in S preallocated
slots per row (only the kv heads: a GQA model caches num_kv_heads), and each stack keeps the
position of the token in every slot (-1: empty or padding), from which the mask is made. Token
number i of a row (its left padding counted) lives in slot i % S: S is prompt + new tokens, or for
a sliding-window model just the window, a ring buffer whose slots are reused once a token has left
the window. Cross-attention (T5) keeps the encoder's keys and values, computed once.

Two modes: "prefill" starts the cache over with the prompt (its queries attend to the prompt's
own keys; a prompt longer than a ring keeps its last S tokens), then each "step" writes one token
and attends to every cached slot. The first prefill, on S dummy tokens, makes the cache's shapes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.layers import constrain


def ring_write(cache: jax.Array, new: jax.Array, index, mode: str) -> jax.Array:
    """cache (B, S, ...) with new (B, T, ...) written at slots index, index+1, ... (mod S).
    A prefill starts at slot 0 of an empty cache and keeps only its last S entries."""
    slots, length = cache.shape[1], new.shape[1]
    if mode == "step":
        return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype),
                                                   index % slots, axis=1)
    if length <= slots:
        return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), 0, axis=1)
    return jnp.roll(new[:, length - slots:], (length - slots) % slots, axis=1)  # token t: t % S


def cache_self_attention(module: nn.Module, k: jax.Array, v: jax.Array, mode: str):
    """Writes this call's keys and values (B, T, kv_heads, head_dim) into the layer's cache;
    returns the keys and values to attend to: the prompt's own (prefill), or the cache (step)."""
    if mode not in ("prefill", "step"):
        raise ValueError(f"decode={mode!r}: use 'prefill' or 'step'")
    if mode == "step" and k.shape[1] != 1:
        raise ValueError(f"a decode step takes one token per row, got {k.shape[1]}")
    key = module.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    value = module.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = module.variable("cache", "index", jnp.zeros, (), jnp.int32)
    axes = ("batch", "length", "act_kv_heads", "head_dim")   # rows and kv heads as k and v
    key.value = constrain(ring_write(key.value, k, index.value, mode), axes)
    value.value = constrain(ring_write(value.value, v, index.value, mode), axes)
    index.value = k.shape[1] if mode == "prefill" else index.value + 1
    return (k, v) if mode == "prefill" else (key.value, value.value)


def cache_cross_attention(module: nn.Module, k: jax.Array | None, v: jax.Array | None):
    """Prefill: stores the encoder's keys and values; step (k None): returns the stored ones."""
    if k is None:
        return (module.get_variable("cache", "cached_key"),
                module.get_variable("cache", "cached_value"))
    module.put_variable("cache", "cached_key", k)
    module.put_variable("cache", "cached_value", v)
    return k, v


class CachedPositions(nn.Module):
    """The positions of a stack's cached slots. Given the new tokens' positions (B, T) (-1:
    padding), returns the key positions and validity (B, K) its attention sees: the new tokens'
    own (prefill) or every slot's (step)."""

    @nn.compact
    def __call__(self, positions: jax.Array, mode: str):
        positions = positions.astype(jnp.int32)
        slots = self.variable("cache", "positions", jnp.zeros, positions.shape, jnp.int32)
        index = self.variable("cache", "index", jnp.zeros, (), jnp.int32)
        previous = jnp.full_like(slots.value, -1) if mode == "prefill" else slots.value
        slots.value = ring_write(previous, positions, index.value, mode)
        index.value = positions.shape[1] if mode == "prefill" else index.value + 1
        keys = positions if mode == "prefill" else slots.value
        return keys, keys >= 0


def decode_mask(cfg: ModelConfig, q_positions: jax.Array, k_positions: jax.Array,
                k_valid: jax.Array) -> jax.Array:
    """(B, 1, Tq, Tk): each query sees the valid keys at or before its position (within the
    last local_window_size positions, if set)."""
    q, k = q_positions[:, :, None], k_positions[:, None, :]
    visible = k_valid[:, None, :] & (k <= q)
    if cfg.local_window_size:
        visible &= q - k < cfg.local_window_size
    return visible[:, None]
