"""Position information: learned absolute embeddings (GPT-2) and rotary embeddings (RoPE, LLaMA).

RoPE rotates each (x_i, x_{i+D/2}) pair of a query/key by an angle proportional to its position,
so the query-key dot product depends only on the offset between the two positions.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from foundations.config import ModelConfig
from foundations.models.layers import Embedding


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
