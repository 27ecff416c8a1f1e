"""The sampling toolbox: logit processors in Hugging Face's order and with its semantics.

repetition penalty -> temperature -> top-k -> top-p -> min-p; a filtered entry becomes -inf, so a
softmax gives it probability 0 and a categorical draw never picks it. Each one keeps at least
one token (the most likely), as Hugging Face's warpers do with min_tokens_to_keep=1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def repetition_penalty_logits(logits: jax.Array, prev_ids: jax.Array, penalty: float) -> jax.Array:
    """Tokens already in prev_ids (B, N) score lower: a positive logit is divided by the penalty,
    a negative one multiplied (CTRL, Keskar et al. 2019). Negative ids (unfilled) are skipped."""
    vocab = logits.shape[-1]
    rows = jnp.arange(logits.shape[0])[:, None]
    ids = jnp.where(prev_ids < 0, vocab, prev_ids)          # out of range: dropped below
    seen = jnp.zeros(logits.shape, bool).at[rows, ids].set(True, mode="drop")
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits (and any tied with the k-th)."""
    k = min(max(k, 1), logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus: keeps the most likely tokens whose probabilities sum to at least p. As in HF,
    from the least likely up, a token goes while the mass up to and including it is <= 1 - p."""
    order = jnp.argsort(logits, axis=-1)                      # ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = (cumulative <= 1 - p).at[..., -1].set(False)
    remove = jnp.zeros_like(remove_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(remove_sorted)
    return jnp.where(remove, NEG_INF, logits)


def min_p_logits(logits: jax.Array, min_p: float) -> jax.Array:
    """Keeps the tokens at least min_p times as likely as the most likely one (Nguyen et al.)."""
    probs = jax.nn.softmax(logits, axis=-1)
    threshold = min_p * probs.max(axis=-1, keepdims=True)
    return jnp.where(probs < threshold, NEG_INF, logits)


def process_logits(logits, prev_ids, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0, repetition_penalty: float = 1.0) -> jax.Array:
    """logits (B, V) for the next token, prev_ids (B, N) the tokens so far (negative: none) ->
    processed logits, filtered entries -inf. temperature 0 skips the warpers (greedy: only the
    repetition penalty changes the argmax)."""
    logits = jnp.asarray(logits, jnp.float32)
    if repetition_penalty != 1.0:
        logits = repetition_penalty_logits(logits, jnp.asarray(prev_ids), repetition_penalty)
    if temperature <= 0:
        return logits
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        logits = top_k_logits(logits, top_k)
    if top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    if min_p > 0.0:
        logits = min_p_logits(logits, min_p)
    return logits


def choose(logits: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
    """Processed logits (B, V) -> token ids (B,): the argmax at temperature 0, else a draw."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
