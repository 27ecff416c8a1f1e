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
