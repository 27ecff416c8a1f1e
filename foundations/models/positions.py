"""Position information: learned (GPT-2, BERT) and sinusoidal absolute embeddings, rotary
embeddings (RoPE, LLaMA; with linear or NTK-aware scaling for longer contexts), and attention
biases: ALiBi and T5's bucketed relative-position bias.

RoPE rotates each (x_i, x_{i+D/2}) pair of a query/key by an angle proportional to its position,
so the query-key dot product depends only on the offset between the two positions.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.layers import Embedding, normal


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """Angles position * theta^(-2i/D) for i < D/2; positions (..., T) -> (..., T, D/2)."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates x of shape (B, T, heads, D) by its positions (B, T) (half-split layout)."""
    angles = rope_angles(positions, x.shape[-1], theta)[:, :, None, :]  # (B, T, 1, D/2)
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class LearnedPositions(nn.Module):
    """A table of max_seq_len learned vectors added to the token embeddings."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, positions):
        cfg = self.cfg
        return Embedding(cfg, cfg.max_seq_len, ("position", "embed"), name="table")(positions)


def scaled_rope(positions: jax.Array, head_dim: int, theta: float, scaling: str = "none",
                factor: float = 1.0) -> tuple[jax.Array, float]:
    """Positions and theta for a context `factor` times the trained one: 'linear' squeezes the
    positions (position interpolation, Chen et al. 2023); 'ntk' raises theta by
    factor^(D/(D-2)) so low frequencies stretch while high ones stay (NTK-aware scaling)."""
    if scaling == "linear":
        return positions.astype(jnp.float32) / factor, theta
    if scaling == "ntk":
        return positions, theta * factor ** (head_dim / (head_dim - 2))
    return positions, theta


def sinusoidal_table(positions: jax.Array, d_model: int) -> jax.Array:
    """The fixed sin/cos embeddings of "Attention is all you need": (..., T) -> (..., T, d)."""
    inv_freq = 10000.0 ** (-jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # interleave sin, cos
    return table.reshape(*angles.shape[:-1], -1)[..., :d_model]


def alibi_slopes(num_heads: int) -> jax.Array:
    """ALiBi's per-head slopes: a geometric sequence 2^(-8/n), 2^(-16/n), ... (Press et al.);
    for a head count that is not a power of two, the interleaved extra slopes of the paper."""
    def power_of_two(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    slopes += power_of_two(2 * closest)[0::2][:num_heads - closest]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(q_positions: jax.Array, k_positions: jax.Array, num_heads: int) -> jax.Array:
    """-slope_h * |i - j|: a penalty linear in the distance; (Tq,), (Tk,) -> (1, H, Tq, Tk),
    or per row: (B, Tq), (B, Tk) -> (B, H, Tq, Tk)."""
    distance = jnp.abs(q_positions[..., :, None] - k_positions[..., None, :]).astype(jnp.float32)
    bias = -alibi_slopes(num_heads)[:, None, None] * distance[..., None, :, :]
    return bias if bias.ndim == 4 else bias[None]


def relative_position_bucket(relative: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """T5's buckets of (key - query): exact for small distances, logarithmic up to max_distance,
    then one bucket; a bidirectional model spends half the buckets on each direction."""
    bucket = jnp.zeros_like(relative)
    n = -relative  # > 0: the key lies before the query
    if bidirectional:
        num_buckets //= 2
        bucket += (n < 0).astype(relative.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """T5's learned bias per (bucket, head), computed once and shared by every layer of a stack."""
    cfg: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, relative: jax.Array) -> jax.Array:
        """Key minus query positions (Tq, Tk) or (B, Tq, Tk) -> bias (1 or B, H, Tq, Tk)."""
        cfg = self.cfg
        table = self.param("table", normal(cfg.init_std, ("position", "heads")),
                           (cfg.positions.buckets, cfg.num_heads), jnp.float32)
        buckets = relative_position_bucket(relative, self.bidirectional, cfg.positions.buckets,
                                           cfg.positions.max_distance)
        bias = jnp.moveaxis(table[buckets], -1, -3)
        return bias if bias.ndim == 4 else bias[None]


def positions_bias(cfg: ModelConfig, q_positions: jax.Array, k_positions: jax.Array,
                   bidirectional: bool, name: str = "rel_bias"):
    """The additive attention bias a stack's position scheme asks for (alibi, t5_bias), or None,
    for query and key positions (T,) or per row (B, T). Call inside a compact module: t5_bias
    creates its table there."""
    if cfg.positions.kind == "alibi":
        return alibi_bias(q_positions, k_positions, cfg.num_heads)
    if cfg.positions.kind == "t5_bias":
        relative = k_positions[..., None, :] - q_positions[..., :, None]
        return RelativePositionBias(cfg, bidirectional, name=name)(relative)
    return None


def attention_bias(cfg: ModelConfig, length: int, bidirectional: bool, name: str = "rel_bias"):
    """positions_bias over positions 0..length-1 (training, and a prompt without a cache)."""
    positions = jnp.arange(length)
    return positions_bias(cfg, positions, positions, bidirectional, name)


def add_positions(cfg: ModelConfig, x: jax.Array, positions: jax.Array) -> jax.Array:
    """Adds absolute position embeddings (learned or sinusoidal) to x; other schemes act inside
    attention. Call inside a compact module: the learned table is created there."""
    if cfg.positions.kind == "learned":
        return x + LearnedPositions(cfg, name="pos_embed")(positions)
    if cfg.positions.kind == "sinusoidal":
        return x + sinusoidal_table(positions, cfg.d_model).astype(x.dtype)
    return x
