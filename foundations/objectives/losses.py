"""Token losses shared by the objectives (float32, means over the weighted tokens)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood in float32 (the causal LM loss, in nats)."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets).mean()


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    weights = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weights) / jnp.maximum(weights.sum(), 1.0)


def weighted_cross_entropy(logits, targets, weights) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy (argmax = target) over the tokens with weight 1."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = jnp.argmax(logits, axis=-1) == targets
    return weighted_mean(losses, weights), weighted_mean(correct, weights)


def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array,
                          chunk: int) -> jax.Array:
    """`cross_entropy(hidden @ head, targets)` scoring `chunk` positions of every row at a time
    (hidden (B, T, D), head (D, V)): a scan whose rematerialised body holds (B, chunk, V) float32
    logits, forward and backward, where the whole loss holds (B, T, V)."""
    rows, length, width = hidden.shape
    pad = -length % chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    valid = jnp.arange(length + pad) < length

    def split(x):  # (B, T + pad, ...) -> (chunks, B, chunk, ...)
        return jnp.swapaxes(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 0, 1)

    @jax.checkpoint
    def chunk_loss(total, piece):
        h, t, keep = piece
        logits = jnp.einsum("bcd,dv->bcv", h.astype(head.dtype), head).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, t)
        return total + jnp.sum(losses * keep), None

    total, _ = jax.lax.scan(chunk_loss, jnp.zeros((), jnp.float32),
                            (split(hidden), split(targets), valid.reshape(-1, chunk)[:, None]))
    return total / (rows * length)
