"""The reference `foundations bench` races: a GPT-2 training step as a user would write it in plain
Flax and Optax (no project code), for any shape. Run alone: `python -m foundations.train.plain_gpt`."""

import time
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class Block(nn.Module):
    heads: int
    d_ff: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        q, k, v = jnp.split(nn.Dense(3 * d, dtype=self.dtype)(h), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d)
        x = x + nn.Dense(d, dtype=self.dtype)(y)
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        return x + nn.Dense(d, dtype=self.dtype)(nn.gelu(nn.Dense(self.d_ff, dtype=self.dtype)(h)))


class GPT(nn.Module):
    layers: int
    d_model: int
    heads: int
    d_ff: int
    vocab: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens):
        wte = nn.Embed(self.vocab, self.d_model, dtype=self.dtype)
        wpe = nn.Embed(tokens.shape[1], self.d_model, dtype=self.dtype)
        x = wte(tokens) + wpe(jnp.arange(tokens.shape[1]))[None]
        for _ in range(self.layers):
            x = Block(self.heads, self.d_ff, self.dtype)(x)
        return wte.attend(nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)).astype(jnp.float32)


def plain_step(layers, d_model, heads, d_ff, vocab, batch, seq_len, dtype=jnp.float32,
               lr=1e-3, weight_decay=0.1, clip_norm=1.0, seed=0):
    """(jitted step(params, opt_state, tokens) -> (params, opt_state, loss), params, opt_state,
    tokens (batch, seq_len + 1)) for a GPT-2 of this shape trained with clipped AdamW."""
    model = GPT(layers, d_model, heads, d_ff, vocab, dtype)
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (batch, seq_len + 1), 0, vocab)
    params = model.init(jax.random.PRNGKey(seed), tokens[:1, :-1])
    opt = optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=weight_decay)
    if clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(clip_norm), opt)

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits = model.apply(p, tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params, opt.init(params), tokens


if __name__ == "__main__":
    step, params, opt_state, tokens = plain_step(4, 128, 4, 512, 256, 32, 128)
    params, opt_state, loss = step(params, opt_state, tokens)
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(20):
        params, opt_state, loss = step(params, opt_state, tokens)
    loss.block_until_ready()
    seconds = (time.perf_counter() - start) / 20
    print(f"smoke shape: {seconds * 1e3:.1f} ms/step, {32 * 128 / seconds:,.0f} tokens/s")
